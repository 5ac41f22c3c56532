import Glibc
import Memory

/// virtio-rng (virtio 1.2 §5.4): one queue; each chain's device-writable buffers are filled
/// with bytes from the host's urandom pool (getrandom(2)'s source; Glibc's module does not
/// export getrandom itself).
public final class VirtioRNG: VirtioDevice {
    weak var transport: VirtioTransport?
    let source: Int32
    /// At most this many bytes per request, so one guest request cannot stall the loop.
    static let maxRequestBytes: UInt64 = 64 << 10

    public init() { source = open("/dev/urandom", O_RDONLY | O_CLOEXEC) }
    deinit { if source >= 0 { close(source) } }

    public var deviceType: UInt16 { 4 }
    public var deviceFeatures: UInt64 { 0 }
    public var queueMaxSizes: [UInt16] { [256] }
    public var pciClassCode: UInt32 { 0x00_FF00 }
    public var inflightRequests: Int { 0 }
    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0) }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}
    public func activate(_ transport: VirtioTransport) { self.transport = transport }
    public func reset() {}

    public func queueNotified(_ index: Int) {
        guard let t = transport else { return }
        t.processQueue(index) { chain in
            var cursor = ChainCursor(memory: t.memory, buffers: chain.writable)
            var filled: UInt64 = 0
            if let segments = cursor.segments(min(chain.writableLength, Self.maxRequestBytes)) {
                for s in segments {
                    var done = 0
                    while done < s.count {
                        let n = read(source, s.baseAddress! + done, s.count - done)
                        if n <= 0 { if errno == EINTR { continue }; break }
                        done += n
                    }
                    filled += UInt64(done)
                    if done < s.count { break }
                }
            }
            t.complete(queue: index, head: chain.head, length: UInt32(clamping: filled))
        }
    }
}
