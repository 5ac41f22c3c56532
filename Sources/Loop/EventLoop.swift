import CKeel
import Glibc
import Synchronization

/// Keel's event loop (the main loop, and later each iothread's): epoll over registered fds,
/// timers (timerfd) and bottom halves (work posted from any thread, run on this loop).
/// Callbacks run on the loop's thread; the main loop runs them with the big lock held.
public final class EventLoop: @unchecked Sendable {
    public typealias Handler = (_ events: UInt32) -> Void

    private let epfd: Int32
    private var handlers: [Int32: Handler] = [:]
    private let bottomHalfDoorbell: EventFD
    private let posted = Mutex<[() -> Void]>([])
    /// Set by `post`, so a polling loop notices bottom halves without looking at its fds.
    let postedPending = Atomic<Bool>(false)
    private var stopping = false
    /// Held around every callback when set (the main loop holds the big lock while dispatching).
    public let lock: BigLock?
    /// Adaptive polling (QEMU's AioContext polling; EventLoopPolling.swift), loop thread only.
    var pollers: [Int: Poller] = [:]
    var nextPollerID = 0
    /// Pollers currently in polling mode (their notifications suppressed).
    var pollingStarted = false
    public internal(set) var pollStatistics = PollStatistics()
    private let pollConfiguration = Mutex<PollParameters>(PollParameters(maxNanoseconds: 0))
    /// The current polling window (grows and shrinks between 0 and maxNanoseconds).
    public internal(set) var pollNanoseconds: UInt64 = 0

    public init(lock: BigLock? = nil) throws {
        let e = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard e >= 0 else { throw SystemError(errno: errno, "epoll_create1") }
        epfd = e
        self.lock = lock
        bottomHalfDoorbell = try EventFD()
        try addReadable(fd: bottomHalfDoorbell.fd) { [unowned self] _ in self.runBottomHalves() }
    }

    deinit { close(epfd) }

    /// Calls `handler` whenever `fd` is readable (or hung up / in error; the handler reads to find out).
    public func addReadable(fd: Int32, _ handler: @escaping Handler) throws {
        try add(fd: fd, events: UInt32(EPOLLIN.rawValue), handler)
    }

    public func add(fd: Int32, events: UInt32, _ handler: @escaping Handler) throws {
        var ev = epoll_event()
        ev.events = events
        ev.data.fd = fd
        let op = handlers[fd] == nil ? EPOLL_CTL_ADD : EPOLL_CTL_MOD
        if epoll_ctl(epfd, op, fd, &ev) != 0 {
            // A handler left behind by an fd closed without `remove` (epoll dropped it on close):
            // the number was reused, so this is a new registration.
            guard op == EPOLL_CTL_MOD && errno == ENOENT && epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 else {
                throw SystemError(errno: errno, "epoll_ctl(\(fd))")
            }
        }
        handlers[fd] = handler
    }

    public func remove(fd: Int32) {
        guard handlers.removeValue(forKey: fd) != nil else { return }
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
    }

    /// Runs `work` on this loop's thread soon. Safe to call from any thread (a bottom half).
    public func post(_ work: @escaping () -> Void) {
        posted.withLock { $0.append(work) }
        postedPending.store(true, ordering: .releasing)
        bottomHalfDoorbell.signal()
    }

    private func runBottomHalves() {
        bottomHalfDoorbell.consume()
        postedPending.store(false, ordering: .relaxed)
        let work = posted.withLock { q -> [() -> Void] in let w = q; q.removeAll(); return w }
        for w in work { w() }
    }

    /// A timer on this loop. The callback runs on the loop; re-arm with `Timer.arm`.
    public func makeTimer(_ callback: @escaping () -> Void) throws -> Timer {
        let t = try Timer(callback: callback)
        try addReadable(fd: t.fd) { [unowned t] _ in
            var expirations: UInt64 = 0
            if Glibc.read(t.fd, &expirations, 8) == 8 { t.callback() }
        }
        return t
    }

    /// The polling parameters (`-object iothread,poll-max-ns=,poll-grow=,poll-shrink=`); safe
    /// from any thread, taken at the next iteration.
    public var pollParameters: PollParameters {
        get { pollConfiguration.withLock { $0 } }
        set { pollConfiguration.withLock { $0 = newValue } }
    }

    /// Asks `run()` to return after the current iteration. Safe from any thread.
    public func stop() {
        post { [unowned self] in self.stopping = true }
    }

    /// The thread inside `run()`, if any.
    private let runningThread = Mutex<pthread_t?>(nil)

    /// Whether another thread is inside this loop's `run()` (so work posted from here runs there).
    public var isRunningElsewhere: Bool {
        guard let t = runningThread.withLock({ $0 }) else { return false }
        return pthread_equal(t, pthread_self()) == 0
    }

    /// Dispatches events until `stop()`. Runs on the calling thread.
    public func run() {
        runningThread.withLock { $0 = pthread_self() }
        defer { runningThread.withLock { $0 = nil } }
        stopping = false
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while !stopping {
            var params = pollers.isEmpty ? nil : pollConfiguration.withLock { $0 }
            if params?.maxNanoseconds == 0 { params = nil; pollNanoseconds = 0 }
            let start = params == nil ? 0 : monotonicNanoseconds()
            var timeout: Int32 = -1
            if let params {
                lock?.lock()
                if pollBeforeBlocking(params) { timeout = 0 }
                lock?.unlock()
            } else if pollingStarted {
                lock?.lock(); if endPolling() { timeout = 0 }; lock?.unlock()
            }
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, 32, timeout) }
            if let params { adjustPolling(params, blocked: monotonicNanoseconds() &- start) }
            if n < 0 {
                if errno == EINTR { continue }
                fatalError("epoll_wait: \(String(cString: strerror(errno)))")
            }
            lock?.lock()
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                // A handler may remove another fd in the same batch: look it up each time.
                if let h = handlers[fd] { h(events[i].events) }
            }
            lock?.unlock()
        }
    }
}

/// A one-shot or periodic timer backed by a timerfd (CLOCK_MONOTONIC).
public final class Timer: @unchecked Sendable {
    public let fd: Int32
    let callback: () -> Void

    init(callback: @escaping () -> Void) throws {
        let f = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard f >= 0 else { throw SystemError(errno: errno, "timerfd_create") }
        fd = f
        self.callback = callback
    }

    deinit { close(fd) }

    /// Fires after `nanoseconds`, then every `interval` nanoseconds if non-zero. 0 disarms.
    public func arm(afterNanoseconds ns: UInt64, intervalNanoseconds interval: UInt64 = 0) {
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(ns / 1_000_000_000)
        spec.it_value.tv_nsec = Int(ns % 1_000_000_000)
        spec.it_interval.tv_sec = Int(interval / 1_000_000_000)
        spec.it_interval.tv_nsec = Int(interval % 1_000_000_000)
        _ = timerfd_settime(fd, 0, &spec, nil)
    }

    public func disarm() { arm(afterNanoseconds: 0) }
}
