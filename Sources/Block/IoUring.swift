import CURing
import Glibc

/// One io_uring (Linux's asynchronous I/O rings, through Debian's liburing): positional vectored
/// reads and writes, fdatasync and fallocate, each tagged with a token the completion returns.
/// Owned by one thread (the loop that submits and reaps); only `pending` may be read elsewhere.
public final class IoUring: @unchecked Sendable {
    public enum Operation {
        case readv(fd: Int32, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64)
        case writev(fd: Int32, iovecs: UnsafePointer<iovec>, count: Int, offset: UInt64)
        case fdatasync(fd: Int32)
        case fallocate(fd: Int32, mode: Int32, offset: UInt64, length: UInt64)
    }

    private let ring: OpaquePointer
    public let entries: UInt32

    /// Errors name io_uring_queue_init and the errno (seccomp and some containers refuse it).
    public init(entries: UInt32) throws(BlockError) {
        var error: Int32 = 0
        guard let r = curing_create(entries, &error) else {
            throw BlockError(.unsupported, "io_uring_queue_init: \(String(cString: strerror(error))) (errno \(error))")
        }
        ring = r
        self.entries = entries
    }

    deinit { curing_destroy(ring) }

    /// Completions signal `fd` (an eventfd the owning loop watches).
    public func registerEventFD(_ fd: Int32) throws(BlockError) {
        let r = curing_register_eventfd(ring, fd)
        guard r == 0 else { throw BlockError(.io, "io_uring_register_eventfd: \(String(cString: strerror(-r))) (errno \(-r))") }
    }

    /// Queues `op`; false when the submission queue is full (submit, then try again or give up).
    public func prepare(_ op: Operation, token: UInt64) -> Bool {
        let r: Int32
        switch op {
        case .readv(let fd, let iovecs, let count, let offset):
            r = curing_prep_readv(ring, fd, iovecs, UInt32(count), offset, token)
        case .writev(let fd, let iovecs, let count, let offset):
            r = curing_prep_writev(ring, fd, iovecs, UInt32(count), offset, token)
        case .fdatasync(let fd):
            r = curing_prep_fdatasync(ring, fd, token)
        case .fallocate(let fd, let mode, let offset, let length):
            r = curing_prep_fallocate(ring, fd, mode, offset, length, token)
        }
        return r == 0
    }

    /// Hands the queued operations to the kernel; the count submitted or -errno.
    @discardableResult
    public func submit() -> Int32 { curing_submit(ring) }

    /// Calls `body(token, result)` for each completion ready (result: bytes, or -errno).
    @discardableResult
    public func reap(_ body: (UInt64, Int32) -> Void) -> Int {
        var n = 0
        var token: UInt64 = 0, result: Int32 = 0
        while curing_next_completion(ring, &token, &result) == 1 {
            body(token, result)
            n += 1
        }
        return n
    }

    /// Completions the kernel posted that nobody reaped yet.
    public var readyCompletions: UInt32 { curing_ready(ring) }
}
