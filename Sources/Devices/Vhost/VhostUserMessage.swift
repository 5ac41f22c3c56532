import Glibc

/// The vhost-user protocol's vocabulary (QEMU docs/interop/vhost-user.rst): front-end requests,
/// header flags, protocol feature bits and the payload layouts Keel speaks.
public enum VhostUser {
    /// Front-end to back-end request codes ("Front-end message types").
    public enum Request: UInt32, Sendable, CaseIterable {
        case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5
        case setLogBase = 6, setLogFD = 7
        case setVringNum = 8, setVringAddr = 9, setVringBase = 10, getVringBase = 11
        case setVringKick = 12, setVringCall = 13, setVringErr = 14
        case getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17, setVringEnable = 18
        case getConfig = 24, setConfig = 25
        case getInflightFD = 31, setInflightFD = 32, resetDevice = 34
        case getMaxMemSlots = 36
    }

    public static let version: UInt32 = 1
    public static let flagVersionMask: UInt32 = 0x3
    public static let flagReply: UInt32 = 1 << 2
    public static let flagNeedReply: UInt32 = 1 << 3
    public static let headerSize = 12
    /// The largest payload either side accepts: a config space (12 + 256) is the biggest Keel uses.
    public static let maxPayload = 0x1000
    /// VHOST_MEMORY_BASELINE_NREGIONS: regions (and so fds) in one SET_MEM_TABLE.
    public static let maxMemoryRegions = 8
    public static let maxConfigSize: UInt32 = 256

    /// VHOST_USER_F_PROTOCOL_FEATURES in GET_FEATURES; never shown to the guest.
    public static let featureProtocolFeatures: UInt64 = 1 << 30

    // Protocol feature bits.
    public static let protocolMQ: UInt64 = 1 << 0
    public static let protocolReplyAck: UInt64 = 1 << 3
    public static let protocolConfig: UInt64 = 1 << 9
    public static let protocolInflightSHMFD: UInt64 = 1 << 12

    /// SET_VRING_KICK/CALL/ERR: bits 0-7 the queue, bit 8 "no fd" (polling).
    public static let vringIndexMask: UInt64 = 0xFF
    public static let vringNoFD: UInt64 = 1 << 8
}

/// A malformed or failed exchange; the connection it happened on is ended with this one line.
public struct VhostUserError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// A file descriptor received over the socket, closed unless taken.
public final class ReceivedFD {
    private var fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { if fd >= 0 { close(fd) } }
    /// Hands the descriptor over; the caller closes it.
    public func take() -> Int32 { let f = fd; fd = -1; return f }
    public var value: Int32 { fd }
}

/// One message: header fields, payload bytes and the descriptors that came with it.
public struct VhostUserMessage {
    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: [ReceivedFD] = []

    public init(request: UInt32, flags: UInt32 = VhostUser.version, payload: [UInt8] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
    }

    public init(_ r: VhostUser.Request, payload: [UInt8] = [], needReply: Bool = false) {
        self.init(request: r.rawValue, flags: VhostUser.version | (needReply ? VhostUser.flagNeedReply : 0), payload: payload)
    }

    public var isReply: Bool { flags & VhostUser.flagReply != 0 }
    public var needsReply: Bool { flags & VhostUser.flagNeedReply != 0 }

    /// The payload as one u64 (features, queue number, vring index + flags), or an error.
    public func u64() throws(VhostUserError) -> UInt64 {
        guard payload.count == 8 else { throw VhostUserError("request \(request): payload of \(payload.count) bytes, expected 8") }
        return payload.le64(0)
    }

    /// A vhost_vring_state (index, num).
    public func vringState() throws(VhostUserError) -> (index: UInt32, num: UInt32) {
        guard payload.count == 8 else { throw VhostUserError("request \(request): payload of \(payload.count) bytes, expected 8") }
        return (payload.le32(0), payload.le32(4))
    }
}

/// vhost_vring_addr on the wire (SET_VRING_ADDR's 40-byte payload).
public typealias VhostUserVringAddress = VhostVringAddress

extension VhostVringAddress {
    public static let size = 40

    public init(_ b: [UInt8]) throws(VhostUserError) {
        guard b.count == Self.size else { throw VhostUserError("SET_VRING_ADDR: payload of \(b.count) bytes, expected 40") }
        self.init(index: b.le32(0), flags: b.le32(4), descriptor: b.le64(8), used: b.le64(16), available: b.le64(24), log: b.le64(32))
    }

    public var bytes: [UInt8] {
        var w = [UInt8](); w.putLE32(index); w.putLE32(flags)
        for v in [descriptor, used, available, log] { w.putLE64(v) }
        return w
    }
}

/// One entry of SET_MEM_TABLE, with the offset into the fd that goes with it.
public typealias VhostUserMemoryRegion = VhostMemoryRegion

extension VhostMemoryRegion {
    /// Parses the memory table (u32 count, u32 padding, 32-byte regions); the count must match
    /// the payload and the fds that came with it.
    public static func table(_ b: [UInt8], fdCount: Int) throws(VhostUserError) -> [VhostUserMemoryRegion] {
        guard b.count >= 8 else { throw VhostUserError("SET_MEM_TABLE: payload of \(b.count) bytes") }
        let n = b.le32(0)
        guard n >= 1, n <= UInt32(VhostUser.maxMemoryRegions) else { throw VhostUserError("SET_MEM_TABLE: \(n) regions (1 to 8)") }
        guard b.count == 8 + 32 * Int(n) else { throw VhostUserError("SET_MEM_TABLE: \(b.count) bytes for \(n) regions") }
        guard fdCount == Int(n) else { throw VhostUserError("SET_MEM_TABLE: \(fdCount) fds for \(n) regions") }
        return (0..<Int(n)).map { i in
            let o = 8 + 32 * i
            return VhostUserMemoryRegion(guestAddress: b.le64(o), size: b.le64(o + 8), userAddress: b.le64(o + 16), mmapOffset: b.le64(o + 24))
        }
    }

    public static func tableBytes(_ regions: [VhostUserMemoryRegion]) -> [UInt8] {
        var w = [UInt8](); w.putLE32(UInt32(regions.count)); w.putLE32(0)
        for r in regions { for v in [r.guestAddress, r.size, r.userAddress, r.mmapOffset] { w.putLE64(v) } }
        return w
    }
}

/// VhostUserInflight: the shared inflight region's size and offset in its fd, for how many
/// queues of what size (24 bytes with the struct's tail padding).
public struct VhostUserInflight: Equatable, Sendable {
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public var queueCount: UInt16
    public var queueSize: UInt16
    public static let size = 24
    public init(mmapSize: UInt64, mmapOffset: UInt64, queueCount: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize; self.mmapOffset = mmapOffset; self.queueCount = queueCount; self.queueSize = queueSize
    }
    public init(_ b: [UInt8]) throws(VhostUserError) {
        // 20 bytes of fields; senders include the 4 bytes of padding (QEMU does), or not.
        guard b.count == 24 || b.count == 20 else { throw VhostUserError("inflight payload of \(b.count) bytes, expected 24") }
        self.init(mmapSize: b.le64(0), mmapOffset: b.le64(8), queueCount: UInt16(b[16]) | UInt16(b[17]) << 8,
                  queueSize: UInt16(b[18]) | UInt16(b[19]) << 8)
    }
    public var bytes: [UInt8] {
        var w = [UInt8](); w.putLE64(mmapSize); w.putLE64(mmapOffset)
        w += [UInt8(truncatingIfNeeded: queueCount), UInt8(truncatingIfNeeded: queueCount >> 8),
              UInt8(truncatingIfNeeded: queueSize), UInt8(truncatingIfNeeded: queueSize >> 8), 0, 0, 0, 0]
        return w
    }
}

/// vhost_user_config: offset, size, flags and up to 256 bytes of device config space.
public struct VhostUserConfig: Equatable, Sendable {
    public var offset: UInt32
    public var flags: UInt32
    public var bytes: [UInt8]
    public init(offset: UInt32, flags: UInt32 = 0, bytes: [UInt8]) { self.offset = offset; self.flags = flags; self.bytes = bytes }

    public init(_ b: [UInt8]) throws(VhostUserError) {
        guard b.count >= 12 else { throw VhostUserError("config payload of \(b.count) bytes") }
        let size = b.le32(4)
        guard size <= VhostUser.maxConfigSize, b.count == 12 + Int(size) else {
            throw VhostUserError("config payload of \(b.count) bytes says size \(size)")
        }
        let offset = b.le32(0)
        guard offset <= VhostUser.maxConfigSize, size <= VhostUser.maxConfigSize - offset else {
            throw VhostUserError("config range offset \(offset) size \(size) is past 256 bytes")
        }
        self.init(offset: offset, flags: b.le32(8), bytes: Array(b[12...]))
    }

    public var payload: [UInt8] {
        var w = [UInt8](); w.putLE32(offset); w.putLE32(UInt32(bytes.count)); w.putLE32(flags)
        return w + bytes
    }
}

extension Array where Element == UInt8 {
    @inline(__always) func le32(_ o: Int) -> UInt32 {
        UInt32(self[o]) | UInt32(self[o + 1]) << 8 | UInt32(self[o + 2]) << 16 | UInt32(self[o + 3]) << 24
    }
    @inline(__always) func le64(_ o: Int) -> UInt64 { UInt64(le32(o)) | UInt64(le32(o + 4)) << 32 }
    mutating func putLE32(_ v: UInt32) { for i in 0..<4 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    mutating func putLE64(_ v: UInt64) { for i in 0..<8 { append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    static func le64Bytes(_ v: UInt64) -> [UInt8] { var w = [UInt8](); w.putLE64(v); return w }
    static func vringState(_ index: UInt32, _ num: UInt32) -> [UInt8] { var w = [UInt8](); w.putLE32(index); w.putLE32(num); return w }
}
