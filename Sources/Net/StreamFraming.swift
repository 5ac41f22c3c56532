import Glibc

/// QEMU's framing of Ethernet frames on a byte stream (`-netdev socket` over TCP and `-netdev
/// stream`): each frame is preceded by its length as a 4-byte big-endian integer.
enum StreamFraming {
    static let prefixLength = 4
    /// QEMU's NET_BUFSIZE (4096 + 65536): a peer announcing more is broken or hostile.
    static let maximumFrameLength = 4096 + 65_536
}

/// Reassembles frames from reads of any size. The peer is untrusted: a length prefix above
/// `maximumFrameLength` is an error, never an allocation of that size.
struct FrameReader {
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0

    enum Next {
        case frame(Range<Int>)
        case needMore
        case oversized(UInt32)
    }

    init(capacity: Int = 256 << 10) {
        buffer = [UInt8](repeating: 0, count: max(capacity, StreamFraming.prefixLength + StreamFraming.maximumFrameLength))
    }

    var isEmpty: Bool { start == end }

    /// Reads once from `fd` into the free space (compacting first so a whole frame always fits).
    /// Returns recv's result (0 at end of stream, -1 with errno).
    mutating func read(from fd: Int32, using recv: (Int32, UnsafeMutableRawPointer, Int) -> Int) -> Int {
        if start > 0, buffer.count - end < StreamFraming.prefixLength + StreamFraming.maximumFrameLength {
            let live = end - start
            buffer.withUnsafeMutableBytes { b in
                guard let base = b.baseAddress else { return }
                memmove(base, base + start, live)
            }
            start = 0; end = live
        }
        let room = buffer.count - end
        guard room > 0 else { return -1 }
        let n = buffer.withUnsafeMutableBytes { b -> Int in
            guard let base = b.baseAddress else { return -1 }
            return recv(fd, base + end, room)
        }
        if n > 0 { end += min(n, room) }
        return n
    }

    /// The next complete frame (not yet consumed), or why there is none. Zero-length frames
    /// carry nothing and are skipped.
    mutating func next() -> Next {
        while true {
            let at = start
            guard end - at >= StreamFraming.prefixLength else { return .needMore }
            let length = UInt32(buffer[at]) << 24 | UInt32(buffer[at + 1]) << 16 | UInt32(buffer[at + 2]) << 8 | UInt32(buffer[at + 3])
            guard length <= UInt32(StreamFraming.maximumFrameLength) else { return .oversized(length) }
            guard length > 0 else { consume(through: at..<(at + StreamFraming.prefixLength)); continue }
            let body = at + StreamFraming.prefixLength
            guard end - body >= Int(length) else { return .needMore }
            return .frame(body..<(body + Int(length)))
        }
    }

    /// Drops everything up to the end of `frame` (and any empty frames before it).
    mutating func consume(through frame: Range<Int>) {
        start = frame.upperBound
        if start == end { start = 0; end = 0 }
    }

    func withFrame<T>(_ frame: Range<Int>, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        buffer.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[frame])) }
    }

    mutating func reset() { start = 0; end = 0 }
}
