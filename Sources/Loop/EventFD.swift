import CKeel
import Glibc

/// A Linux eventfd: the doorbell between threads and, later, between KVM and Keel
/// (ioeventfd, irqfd) and between Keel and vhost backends.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    public init(nonBlocking: Bool = true) throws {
        let f = eventfd(0, Int32(EFD_CLOEXEC) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0))
        guard f >= 0 else { throw SystemError(errno: errno, "eventfd") }
        fd = f
    }

    deinit { close(fd) }

    public func signal(_ n: UInt64 = 1) {
        var v = n
        _ = Glibc.write(fd, &v, 8)
    }

    /// Reads and clears the counter; 0 if nothing was signalled (non-blocking mode).
    @discardableResult
    public func consume() -> UInt64 {
        var v: UInt64 = 0
        return Glibc.read(fd, &v, 8) == 8 ? v : 0
    }
}

/// An errno turned into a message that names the call that failed.
public struct SystemError: Error, CustomStringConvertible {
    public let errno: Int32
    public let call: String
    public init(errno: Int32, _ call: String) { self.errno = errno; self.call = call }
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}
