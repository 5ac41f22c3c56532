import Block
import Memory

/// virtio-blk (virtio 1.2 §5.2): read, write, flush, get-id, discard and write-zeroes on a
/// `BlockDevice`, with one or more request queues. Requests are parsed on the device's loop;
/// the backend's blocking calls run on the executor, straight into or out of guest memory.
public final class VirtioBlock: VirtioDevice {
    public struct Configuration: Sendable {
        public var queueCount = 1
        public var queueSize: UInt16 = 256
        /// GET_ID's answer: at most 20 bytes, NUL-padded.
        public var serial = ""
        public var readOnly = false
        public init() {}
    }

    // Feature bits (§5.2.3).
    static let featureSegMax: UInt64 = 1 << 2
    static let featureRO: UInt64 = 1 << 5
    static let featureBlockSize: UInt64 = 1 << 6
    static let featureFlush: UInt64 = 1 << 9
    static let featureMQ: UInt64 = 1 << 12
    static let featureDiscard: UInt64 = 1 << 13
    static let featureWriteZeroes: UInt64 = 1 << 14

    // Request types and status (§5.2.6).
    static let typeIn: UInt32 = 0, typeOut: UInt32 = 1, typeFlush: UInt32 = 4, typeGetID: UInt32 = 8
    static let typeDiscard: UInt32 = 11, typeWriteZeroes: UInt32 = 13
    public static let statusOK: UInt8 = 0, statusIOError: UInt8 = 1, statusUnsupported: UInt8 = 2

    public static let sectorSize: UInt64 = 512
    static let serialLength = 20
    static let maxDiscardSectors: UInt32 = 0x3F_FFFF
    static let maxWriteZeroesSectors: UInt32 = 0x3F_FFFF

    public let backend: BlockDevice
    public let configuration: Configuration
    let executor: VirtioRequestExecutor
    weak var transport: VirtioTransport?
    public private(set) var inflightRequests = 0
    /// Bumped by a reset: completions of requests from before it must not touch the new rings.
    private var epoch: UInt64 = 0
    private var configBytes: [UInt8]
    /// Sequential reads or writes of the batch being taken from a queue, not submitted yet.
    private var merging: MergedTransfer?
    /// Requests that joined the transfer of the request before them (tests, KEEL_DEBUG_VIRTIO).
    public private(set) var mergedRequests: UInt64 = 0
    /// Whether sequential requests are merged: where the executor asks for it, and where each
    /// request is a disk operation (O_DIRECT). Linux splits a 1 MiB O_DIRECT read at seg_max
    /// into 1016 KiB + 8 KiB; unmerged, the 8 KiB one costs a whole disk round trip.
    private let mergesTransfers: Bool

    public init(backend: BlockDevice, configuration: Configuration, executor: VirtioRequestExecutor) {
        precondition(configuration.queueCount >= 1 && configuration.queueSize >= 4)
        self.backend = backend
        self.configuration = configuration
        self.executor = executor
        mergesTransfers = executor.mergesSequentialRequests || backend.bypassesPageCache
        var w = [UInt8](repeating: 0, count: 64)
        func put(_ offset: Int, _ bytes: Int, _ v: UInt64) { for i in 0..<bytes { w[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0, 8, backend.size / Self.sectorSize)                 // capacity
        put(12, 4, UInt64(configuration.queueSize - 2))           // seg_max: two descriptors carry header and status
        put(20, 4, Self.sectorSize)                               // blk_size
        put(34, 2, UInt64(configuration.queueCount))              // num_queues
        put(36, 4, UInt64(Self.maxDiscardSectors)); put(40, 4, 1); put(44, 4, 1)
        put(48, 4, UInt64(Self.maxWriteZeroesSectors)); put(52, 4, 1); put(56, 1, 1)
        configBytes = w
    }

    public var isReadOnly: Bool { configuration.readOnly || backend.isReadOnly }
    public var deviceType: UInt16 { 2 }
    public var pollsQueues: Bool { true }
    public var pciClassCode: UInt32 { 0x01_8000 }   // mass storage, other
    public var queueMaxSizes: [UInt16] { Array(repeating: configuration.queueSize, count: configuration.queueCount) }
    public var deviceFeatures: UInt64 {
        var f = Self.featureSegMax | Self.featureBlockSize | Self.featureFlush | Self.featureDiscard | Self.featureWriteZeroes
        if configuration.queueCount > 1 { f |= Self.featureMQ }
        if isReadOnly { f |= Self.featureRO }
        return f
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < configBytes.count ? configBytes[o] : 0
        }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ transport: VirtioTransport) { self.transport = transport }

    public func reset() { epoch &+= 1 }

    public func queueNotified(_ index: Int) {
        guard let t = transport else { return }
        t.processQueue(index) { chain in handle(chain, queue: index, transport: t) }
        submitMerged(t)
        executor.submitQueued()
    }

    private func handle(_ chain: DescriptorChain, queue: Int, transport t: VirtioTransport) {
        let memory = t.memory
        var reader = ChainCursor(memory: memory, buffers: chain.readable)
        let writableLength = chain.writableLength
        guard let header = reader.read(16), writableLength >= 1 else {
            t.deviceNeedsReset(.bufferNotInRAM(address: chain.buffers.first?.address ?? 0, length: 0))
            return
        }
        let type = le32(header, 0), sector = le64(header, 8)
        // Requests keep their order across types: a flush goes after the writes before it.
        if type != Self.typeIn && type != Self.typeOut { submitMerged(t) }
        let dataLength = writableLength - 1
        var writer = ChainCursor(memory: memory, buffers: chain.writable)
        let statusAddress = statusByteAddress(chain)
        func finish(_ status: UInt8, written: UInt64) {
            // After a reset (or NEEDS_RESET) the buffers are no longer the device's to write.
            guard t.isProcessing else { return }
            _ = try? memory.store(status, at: statusAddress)
            t.complete(queue: queue, head: chain.head, length: UInt32(clamping: written + 1))
        }
        switch type {
        case Self.typeIn, Self.typeOut:
            let isRead = type == Self.typeIn
            let length = isRead ? dataLength : reader.remaining
            guard let offset = byteRange(sector: sector, length: length) else { finish(Self.statusIOError, written: 0); return }
            if !isRead && isReadOnly { finish(Self.statusIOError, written: 0); return }
            guard let segments = isRead ? writer.segments(length) : reader.segments(length) else {
                finish(Self.statusIOError, written: 0); return
            }
            enqueueTransfer(t, isRead: isRead, offset: offset, length: length, segments: segments) { status in
                finish(status, written: isRead && status == Self.statusOK ? length : 0)
            }
        case Self.typeFlush:
            let backend = self.backend
            submit(t, .flush) {
                do { try backend.flush(); return Self.statusOK } catch { return Self.statusIOError }
            } done: { finish($0, written: 0) }
        case Self.typeGetID:
            var id = Array(configuration.serial.utf8.prefix(Self.serialLength))
            id += [UInt8](repeating: 0, count: Self.serialLength - id.count)
            let n = writer.write(Array(id.prefix(Int(clamping: dataLength))))
            finish(Self.statusOK, written: UInt64(n))
        case Self.typeDiscard, Self.typeWriteZeroes:
            let discard = type == Self.typeDiscard
            guard !isReadOnly else { finish(Self.statusIOError, written: 0); return }
            // One segment per request (max_*_seg = 1): sector, num_sectors, flags (bit 0: unmap).
            guard reader.remaining == 16, let seg = reader.read(16) else { finish(Self.statusUnsupported, written: 0); return }
            let count = le32(seg, 8), flags = le32(seg, 12)
            let limit = discard ? Self.maxDiscardSectors : Self.maxWriteZeroesSectors
            guard flags & ~1 == 0, !(discard && flags & 1 != 0), count <= limit else {
                finish(Self.statusUnsupported, written: 0); return
            }
            guard let offset = byteRange(sector: le64(seg, 0), length: UInt64(count) * Self.sectorSize) else {
                finish(Self.statusIOError, written: 0); return
            }
            let backend = self.backend, length = UInt64(count) * Self.sectorSize, unmap = flags & 1 != 0
            let request: BlockRequest = discard ? .discard(offset: offset, length: length)
                : .writeZeroes(offset: offset, length: length, mayUnmap: unmap)
            submit(t, request) {
                do {
                    if discard { try backend.discard(offset: offset, length: length) }
                    else { try backend.writeZeroes(offset: offset, length: length, mayUnmap: unmap) }
                    return Self.statusOK
                } catch let e as BlockError where e.kind == .unsupported {
                    return discard ? Self.statusOK : Self.statusIOError   // discard is advisory
                } catch { return Self.statusIOError }
            } done: { finish($0, written: 0) }
        default:
            finish(Self.statusUnsupported, written: 0)
        }
    }

    /// The byte offset of a sector-addressed transfer, if it is whole sectors inside the disk.
    private func byteRange(sector: UInt64, length: UInt64) -> UInt64? {
        let (offset, o) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !o, length % Self.sectorSize == 0 else { return nil }
        let (end, o2) = offset.addingReportingOverflow(length)
        guard !o2, end <= backend.size else { return nil }
        return offset
    }

    private func statusByteAddress(_ chain: DescriptorChain) -> UInt64 {
        guard let last = chain.buffers.last(where: { $0.isDeviceWritable && $0.length > 0 }) else { return 0 }
        return last.address + UInt64(last.length - 1)
    }

    /// Queues a checked read or write, merged with the one before it when it continues it on
    /// the disk (QEMU's virtio_blk_submit_multireq) when `mergesTransfers`: one io_uring
    /// operation, or one preadv/pwritev, for a run of sequential requests.
    private func enqueueTransfer(_ t: VirtioTransport, isRead: Bool, offset: UInt64, length: UInt64,
                                 segments: [UnsafeMutableRawBufferPointer], finish: @escaping (UInt8) -> Void) {
        if !mergesTransfers {
            return submitTransfer(t, MergedTransfer(isRead: isRead, offset: offset, length: length, segments: segments, finish: finish))
        }
        if var m = merging {
            merging = nil
            if m.accepts(isRead: isRead, offset: offset, length: length, segmentCount: segments.count) {
                m.append(length: length, segments: segments, finish: finish)
                merging = m
                mergedRequests &+= 1
                return
            }
            submitTransfer(t, m)
        }
        merging = MergedTransfer(isRead: isRead, offset: offset, length: length, segments: segments, finish: finish)
    }

    /// Hands the transfer being merged to the executor.
    private func submitMerged(_ t: VirtioTransport) {
        guard let m = merging else { return }
        merging = nil
        submitTransfer(t, m)
    }

    private func submitTransfer(_ t: VirtioTransport, _ m: MergedTransfer) {
        let backend = self.backend, segments = m.segments, offset = m.offset, isRead = m.isRead
        let request: BlockRequest = isRead ? .read(segments: segments, offset: offset) : .write(segments: segments, offset: offset)
        let parts = m.parts
        submit(t, request) {
            do {
                if isRead { try backend.readVectored(into: segments, at: offset) } else { try backend.writeVectored(segments, at: offset) }
                return Self.statusOK
            } catch { return Self.statusIOError }
        } done: { status in
            // A merged transfer that fails fails every request in it (as QEMU reports it).
            for finish in parts { finish(status) }
        }
    }

    private func submit(_ t: VirtioTransport, _ request: BlockRequest, _ work: @escaping () -> UInt8, done: @escaping (UInt8) -> Void) {
        inflightRequests += 1
        let submitted = epoch
        executor.execute(request, on: backend, work: work) { [weak self, weak t] status in
            guard let self else { return }
            self.inflightRequests -= 1
            if submitted == self.epoch { done(status) }
            if self.inflightRequests == 0 { t?.requestsDrained() }
        }
    }
}

/// A run of reads (or writes) that follow each other on the disk, submitted as one transfer.
struct MergedTransfer {
    /// QEMU's limits: VIRTIO_BLK_MAX_MERGE_REQS requests and IOV_MAX segments per merge; the
    /// byte cap keeps one io_uring result (an Int32) far from overflowing.
    static let maxRequests = 32
    static let maxSegments = 1024
    static let maxBytes: UInt64 = 64 << 20

    let isRead: Bool
    let offset: UInt64
    private(set) var length: UInt64
    private(set) var segments: [UnsafeMutableRawBufferPointer]
    private(set) var parts: [(UInt8) -> Void]

    init(isRead: Bool, offset: UInt64, length: UInt64, segments: [UnsafeMutableRawBufferPointer], finish: @escaping (UInt8) -> Void) {
        self.isRead = isRead
        self.offset = offset
        self.length = length
        self.segments = segments
        parts = [finish]
    }

    func accepts(isRead: Bool, offset: UInt64, length: UInt64, segmentCount: Int) -> Bool {
        guard isRead == self.isRead, parts.count < Self.maxRequests, length > 0,
              segments.count + segmentCount <= Self.maxSegments else { return false }
        let (end, o) = self.offset.addingReportingOverflow(self.length)
        guard !o, end == offset else { return false }
        let (total, o2) = self.length.addingReportingOverflow(length)
        return !o2 && total <= Self.maxBytes
    }

    mutating func append(length: UInt64, segments more: [UnsafeMutableRawBufferPointer], finish: @escaping (UInt8) -> Void) {
        self.length += length
        segments += more
        parts.append(finish)
    }
}

@inline(__always) func le32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
}
@inline(__always) func le64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(le32(b, o)) | UInt64(le32(b, o + 4)) << 32 }
