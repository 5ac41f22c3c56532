import Glibc

/// `-object iothread`'s polling properties, as QEMU has them: before sleeping in epoll_wait the
/// loop polls its pollers for up to the current window, which starts at 0, grows (first to
/// 4 us, then times `grow`, 2 when 0) while waits end within `maxNanoseconds`, and shrinks
/// (divided by `shrink`; to 0 when 0) when a wait took longer. `maxNanoseconds` 0 disables it.
public struct PollParameters: Sendable, Equatable {
    public var maxNanoseconds: UInt64
    public var grow: UInt64
    public var shrink: UInt64
    /// QEMU's default poll-max-ns for an iothread.
    public static let defaultMaxNanoseconds: UInt64 = 32768
    public init(maxNanoseconds: UInt64 = PollParameters.defaultMaxNanoseconds, grow: UInt64 = 0, shrink: UInt64 = 0) {
        self.maxNanoseconds = maxNanoseconds; self.grow = grow; self.shrink = shrink
    }
}

/// What a loop's polling did (tests, KEEL_DEBUG_VIRTIO).
public struct PollStatistics: Sendable, Equatable {
    /// Poll phases that found work without any fd becoming readable.
    public var successes: UInt64 = 0
    /// Poll phases whose window ran out: the loop re-armed notifications and slept.
    public var timeouts: UInt64 = 0
    /// Work found by the re-check after notifications were re-armed (virtio 1.2 §2.7.10's race).
    public var foundWhenEnding: UInt64 = 0
    public init() {}
}

/// A source of work the loop can look at without a syscall (a virtqueue's avail index, an
/// io_uring completion queue). `poll` handles what it finds and says whether there was any;
/// `begin` suppresses the source's notifications while the loop polls; `end` re-enables them
/// before the loop sleeps and says whether work arrived meanwhile (then the loop polls again
/// instead of sleeping on a notification that will not come).
public final class Poller {
    let poll: () -> Bool
    let begin: () -> Void
    let end: () -> Bool
    public init(poll: @escaping () -> Bool, begin: @escaping () -> Void = {}, end: @escaping () -> Bool = { false }) {
        self.poll = poll; self.begin = begin; self.end = end
    }
}

@inline(__always) public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension EventLoop {
    /// Adds a poller; on the loop's thread. Returns the id `removePoller` takes.
    @discardableResult
    public func addPoller(_ p: Poller) -> Int {
        let id = nextPollerID
        nextPollerID += 1
        if pollingStarted { p.begin() }
        pollers[id] = p
        return id
    }

    /// On the loop's thread. A poller in polling mode gets its notifications back first.
    public func removePoller(_ id: Int) {
        guard let p = pollers.removeValue(forKey: id) else { return }
        if pollingStarted { _ = p.end() }
    }

    /// Polls for up to the current window; true when work was found (the loop then looks at
    /// its fds without blocking and polls again). False: notifications are back on and nothing
    /// arrived, so the loop may sleep.
    func pollBeforeBlocking(_ params: PollParameters) -> Bool {
        let window = min(pollNanoseconds, params.maxNanoseconds)
        if window > 0 {
            if !pollingStarted {
                pollingStarted = true
                for p in pollers.values { p.begin() }
            }
            let start = monotonicNanoseconds()
            repeat {
                var progress = false
                for p in pollers.values where p.poll() { progress = true }
                if progress { pollStatistics.successes &+= 1; return true }
                // Posted work (a vCPU waiting in runSync) is not left for the window's end.
                if postedPending.load(ordering: .relaxed) { return true }
            } while monotonicNanoseconds() &- start < window
            pollStatistics.timeouts &+= 1
        }
        return endPolling()
    }

    /// Re-enables every poller's notifications; if work slipped in before that, handles it and
    /// returns true.
    func endPolling() -> Bool {
        guard pollingStarted else { return false }
        pollingStarted = false
        var arrived = false
        for p in pollers.values where p.end() { arrived = true }
        // One more look after re-arming: work that came while notifications were off is
        // handled now rather than never.
        for p in pollers.values where p.poll() { arrived = true }
        if arrived { pollStatistics.foundWhenEnding &+= 1 }
        return arrived
    }

    /// QEMU's adjust_polling_time: `blocked` is the time from the start of polling to the end
    /// of the wait.
    func adjustPolling(_ params: PollParameters, blocked: UInt64) {
        let maxNs = params.maxNanoseconds
        if maxNs == 0 { pollNanoseconds = 0; return }
        if blocked <= pollNanoseconds {
            // Polling found the work: the window is right.
        } else if blocked > maxNs {
            pollNanoseconds = params.shrink == 0 ? 0 : pollNanoseconds / params.shrink
        } else if pollNanoseconds < maxNs {
            let grow = params.grow == 0 ? 2 : params.grow
            let (g, o) = pollNanoseconds.multipliedReportingOverflow(by: grow)
            pollNanoseconds = pollNanoseconds == 0 ? 4000 : (o ? maxNs : g)
            if pollNanoseconds > maxNs { pollNanoseconds = maxNs }
        }
    }
}
