import Block

/// A logical unit of peripheral device type 00h (direct access block device, SBC-3) backed by a
/// `BlockDevice`: the commands Linux's scsi core and sd driver send. Commands are synchronous
/// and touch only the backend (thread-safe) and immutable state, so a transport may run
/// several at once on worker threads.
public final class SCSILogicalUnit: @unchecked Sendable {
    public struct Configuration: Sendable, Equatable {
        /// INQUIRY's T10 vendor identification (8 ASCII bytes, space-padded).
        public var vendor = "KEEL"
        /// INQUIRY's product identification (16 bytes).
        public var product = "KEEL HARDDISK"
        /// INQUIRY's product revision level (4 bytes).
        public var revision = "1.0"
        /// VPD page 80h; empty leaves the page out (as QEMU does without serial=).
        public var serial = ""
        public var readOnly = false
        public init() {}
    }

    public static let blockSize: UInt64 = 512
    /// Block limits VPD: the largest READ/WRITE, UNMAP and WRITE SAME a command may ask for.
    public static let maxTransferBlocks: UInt32 = 65536          // 32 MiB
    public static let maxUnmapBlocks: UInt32 = 0x3F_FFFF
    public static let maxUnmapDescriptors: UInt32 = 255
    public static let maxWriteSameBlocks: UInt64 = 0x3F_FFFF

    public let backend: BlockDevice
    public let configuration: Configuration

    public init(backend: BlockDevice, configuration: Configuration = Configuration()) {
        self.backend = backend
        self.configuration = configuration
    }

    public var isReadOnly: Bool { configuration.readOnly || backend.isReadOnly }
    /// The number of whole logical blocks (a trailing partial block is not addressable).
    public var blockCount: UInt64 { backend.size / Self.blockSize }

    /// Executes one CDB (`cdb` may be longer than the command's own length, as a transport's
    /// fixed-size CDB field is).
    public func execute(cdb: [UInt8], buffers: SCSIBuffers) -> SCSIResult {
        guard let opcode = cdb.first, let length = SCSIOperation.cdbLength(opcode), cdb.count >= length else {
            return .check(.invalidOpcode)
        }
        let c = BigEndianBytes(Array(cdb.prefix(length)))
        // NACA (SAM-5 §5.2, CONTROL byte bit 2) asks for ACA, which Keel does not implement.
        if c[length - 1] & 0x04 != 0 { return .check(.invalidField(cdbByte: UInt16(length - 1))) }
        switch opcode {
        case SCSIOperation.testUnitReady, SCSIOperation.startStopUnit:
            return .good()
        case SCSIOperation.requestSense:
            return requestSense(c, buffers)
        case SCSIOperation.inquiry:
            return inquiry(c, buffers)
        case SCSIOperation.modeSense6, SCSIOperation.modeSense10:
            return modeSense(c, ten: opcode == SCSIOperation.modeSense10, buffers)
        case SCSIOperation.readCapacity10:
            return readCapacity10(c, buffers)
        case SCSIOperation.serviceActionIn16:
            guard c[1] & 0x1F == SCSIOperation.readCapacity16Action else { return .check(.invalidField(cdbByte: 1)) }
            return readCapacity16(c, buffers)
        case SCSIOperation.read6, SCSIOperation.read10, SCSIOperation.read16,
             SCSIOperation.write6, SCSIOperation.write10, SCSIOperation.write16:
            return readWrite(c, opcode: opcode, buffers)
        case SCSIOperation.synchronizeCache10, SCSIOperation.synchronizeCache16:
            return synchronizeCache(c, sixteen: opcode == SCSIOperation.synchronizeCache16)
        case SCSIOperation.unmap:
            return unmap(c, buffers)
        case SCSIOperation.writeSame10, SCSIOperation.writeSame16:
            return writeSame(c, sixteen: opcode == SCSIOperation.writeSame16, buffers)
        default:
            return .check(.invalidOpcode)
        }
    }

    /// REQUEST SENSE (SPC-4 §6.39): sense goes back with each CHECK CONDITION (autosense), so
    /// nothing is pending and the answer is NO SENSE.
    private func requestSense(_ c: BigEndianBytes, _ b: SCSIBuffers) -> SCSIResult {
        guard c[1] & 0x01 == 0 else { return .check(.invalidField(cdbByte: 1)) }   // DESC: fixed format only
        return .good(b.putDataIn(SCSISense.noSense.fixedFormat, limit: Int(c[4])))
    }

    private func readCapacity10(_ c: BigEndianBytes, _ b: SCSIBuffers) -> SCSIResult {
        // SBC-3 §5.16: without PMI the LOGICAL BLOCK ADDRESS field must be zero.
        guard c[8] & 0x01 != 0 || c.u32(2) == 0 else { return .check(.invalidField(cdbByte: 2)) }
        var d = [UInt8](repeating: 0, count: 8)
        let last = blockCount == 0 ? 0 : blockCount - 1
        d.putBE(min(last, 0xFFFF_FFFF), at: 0, bytes: 4)   // FFFFFFFFh: use READ CAPACITY(16)
        d.putBE(Self.blockSize, at: 4, bytes: 4)
        return .good(b.putDataIn(d, limit: d.count))
    }

    private func readCapacity16(_ c: BigEndianBytes, _ b: SCSIBuffers) -> SCSIResult {
        var d = [UInt8](repeating: 0, count: 32)
        d.putBE(blockCount == 0 ? 0 : blockCount - 1, at: 0, bytes: 8)
        d.putBE(Self.blockSize, at: 8, bytes: 4)
        d[14] = 0x80                                        // LBPME: UNMAP and WRITE SAME unmap
        return .good(b.putDataIn(d, limit: Int(c.u32(10))))
    }

    /// The byte range of `count` blocks at `lba`, or the sense to fail with.
    func byteRange(lba: UInt64, count: UInt64) -> Result<(offset: UInt64, length: UInt64), SCSIError> {
        let (end, o) = lba.addingReportingOverflow(count)
        guard !o, end <= blockCount else { return .failure(SCSIError(.lbaOutOfRange)) }
        return .success((lba * Self.blockSize, count * Self.blockSize))
    }

    /// READ and WRITE 6/10/16 (SBC-3 §5.8-5.11, §5.32-5.35).
    private func readWrite(_ c: BigEndianBytes, opcode: UInt8, _ b: SCSIBuffers) -> SCSIResult {
        let isWrite = opcode == SCSIOperation.write6 || opcode == SCSIOperation.write10 || opcode == SCSIOperation.write16
        let lba: UInt64, count: UInt64
        var fua = false
        switch opcode {
        case SCSIOperation.read6, SCSIOperation.write6:
            lba = UInt64(c.u24(1) & 0x1F_FFFF)
            count = c[4] == 0 ? 256 : UInt64(c[4])          // SBC-3 §5.9: zero means 256 blocks
        default:
            // RDPROTECT/WRPROTECT need protection information, which Keel's LUNs do not have.
            guard c[1] & 0xE0 == 0 else { return .check(.invalidField(cdbByte: 1)) }
            fua = c[1] & 0x08 != 0
            if opcode == SCSIOperation.read10 || opcode == SCSIOperation.write10 {
                lba = UInt64(c.u32(2)); count = UInt64(c.u16(7))
            } else {
                lba = c.u64(2); count = UInt64(c.u32(10))
            }
        }
        if isWrite && isReadOnly { return .check(.writeProtected) }
        let range: (offset: UInt64, length: UInt64)
        switch byteRange(lba: lba, count: count) {
        case .success(let r): range = r
        case .failure(let e): return .check(e.sense)
        }
        guard count <= UInt64(Self.maxTransferBlocks) else { return .check(.invalidField(cdbByte: opcode == SCSIOperation.read6 || opcode == SCSIOperation.write6 ? 4 : 7)) }
        if count == 0 { return .good() }
        do throws(BlockError) {
            var at = range.offset
            if isWrite {
                guard let segs = b.dataOutPrefix(range.length) else { return .overrunResult }
                for s in segs { try backend.write(s, at: at); at += UInt64(s.count) }
                if fua { try backend.flush() }
                return .good()
            } else {
                guard let segs = b.dataInPrefix(range.length) else { return .overrunResult }
                for s in segs { try backend.read(into: s, at: at); at += UInt64(s.count) }
                return .good(Int(range.length))
            }
        } catch {
            return .check(Self.sense(for: error, writing: isWrite))
        }
    }

    /// SYNCHRONIZE CACHE 10/16 (SBC-3 §5.22-5.23): GOOD only once the data is on stable storage.
    private func synchronizeCache(_ c: BigEndianBytes, sixteen: Bool) -> SCSIResult {
        let lba = sixteen ? c.u64(2) : UInt64(c.u32(2))
        let count = sixteen ? UInt64(c.u32(10)) : UInt64(c.u16(7))
        // A zero count means "to the last block"; the range must still start on the medium.
        if case .failure(let e) = byteRange(lba: lba, count: count == 0 ? (lba < blockCount ? 0 : 1) : count) {
            return .check(e.sense)
        }
        do throws(BlockError) { try backend.flush() } catch { return .check(Self.sense(for: error, writing: true)) }
        return .good()
    }

    static func sense(for error: BlockError, writing: Bool) -> SCSISense {
        switch error.kind {
        case .readOnly: return .writeProtected
        case .noSpace: return .spaceAllocationFailed
        case .outOfRange: return .lbaOutOfRange
        case .unsupported: return .invalidOpcode
        case .io, .corrupt: return writing ? .writeError : .unrecoveredReadError
        }
    }
}

/// A command failed with this sense (internal: lets helpers return early).
struct SCSIError: Error {
    let sense: SCSISense
    init(_ sense: SCSISense) { self.sense = sense }
}
