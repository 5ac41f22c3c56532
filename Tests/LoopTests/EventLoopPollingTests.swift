import Dispatch
import Glibc
import Loop
import Synchronization
import XCTest

/// Adaptive polling: a loop polls its pollers before sleeping, for a window that grows while
/// waits are short and shrinks when they are long; notifications are off while it polls.
final class EventLoopPollingTests: XCTestCase {
    /// Work a test thread hands over by setting a flag only (no fd written), as a guest adds
    /// chains to an avail ring with notifications suppressed.
    final class Source: @unchecked Sendable {
        let pending = Atomic<Int>(0)
        let served = Atomic<Int>(0)
        let polls = Atomic<Int>(0)
        let begins = Atomic<Int>(0)
        let ends = Atomic<Int>(0)
        /// True between begin and end (notifications suppressed).
        let suppressed = Atomic<Bool>(false)
        lazy var poller = Poller(poll: { [unowned self] in
            polls.add(1, ordering: .relaxed)
            let n = pending.exchange(0, ordering: .acquiring)
            if n > 0 { served.add(n, ordering: .relaxed) }
            return n > 0
        }, begin: { [unowned self] in
            begins.add(1, ordering: .relaxed); suppressed.store(true, ordering: .relaxed)
        }, end: { [unowned self] in
            ends.add(1, ordering: .relaxed); suppressed.store(false, ordering: .relaxed)
            return false
        })
    }

    func waitUntil(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if condition() { return true }; usleep(1000) }
        return condition()
    }

    /// Short waits grow the window (4 us, then x100000 here, capped at 300 ms); work that arrives
    /// with no fd written is then served by polling; after the window the loop re-arms
    /// notifications and sleeps (the poll count stops moving), and the long sleep shrinks it.
    func testPollingServesWorkWithoutAWakeupThenSleeps() throws {
        let loop = try EventLoop()
        loop.pollParameters = PollParameters(maxNanoseconds: 300_000_000, grow: 100_000, shrink: 0)
        let source = Source()
        let registered = expectation(description: "poller added")
        loop.post { loop.addPoller(source.poller); registered.fulfill() }
        let t = LoopThread(loop)
        wait(for: [registered], timeout: 5)
        // Short waits: each wake-up by a bottom half grows the window.
        for _ in 0..<4 { loop.post {}; usleep(2000) }
        XCTAssertTrue(waitUntil { source.suppressed.load(ordering: .relaxed) }, "the loop is polling with notifications off")
        source.pending.store(1, ordering: .releasing)
        XCTAssertTrue(waitUntil(1) { source.served.load(ordering: .relaxed) == 1 }, "polling found the work without any fd signal")
        // The window (300 ms) runs out with nothing to do: notifications back on, the loop sleeps.
        XCTAssertTrue(waitUntil(3) { source.ends.load(ordering: .relaxed) >= 1 && !source.suppressed.load(ordering: .relaxed) })
        let polls = source.polls.load(ordering: .relaxed)
        usleep(200_000)
        XCTAssertEqual(source.polls.load(ordering: .relaxed), polls, "a sleeping loop does not poll")
        // Work that arrives while it sleeps (and, in this test, sends no notification) stays.
        source.pending.store(1, ordering: .releasing)
        usleep(50_000)
        XCTAssertEqual(source.served.load(ordering: .relaxed), 1)
        t.stopAndJoin()
        XCTAssertGreaterThanOrEqual(loop.pollStatistics.successes, 1)
        XCTAssertGreaterThanOrEqual(loop.pollStatistics.timeouts, 1)
        XCTAssertEqual(source.begins.load(ordering: .relaxed), source.ends.load(ordering: .relaxed) + (source.suppressed.load(ordering: .relaxed) ? 1 : 0),
                       "every begin is paired with an end")
    }

    /// poll-max-ns=0: the pollers are never called and never suppress notifications; work
    /// without a wake-up is not seen.
    func testZeroMaxDisablesPolling() throws {
        let loop = try EventLoop()
        loop.pollParameters = PollParameters(maxNanoseconds: 0)
        let source = Source()
        let registered = expectation(description: "poller added")
        loop.post { loop.addPoller(source.poller); registered.fulfill() }
        let t = LoopThread(loop)
        wait(for: [registered], timeout: 5)
        for _ in 0..<10 { loop.post {}; usleep(1000) }
        source.pending.store(1, ordering: .releasing)
        usleep(100_000)
        t.stopAndJoin()
        XCTAssertEqual(source.polls.load(ordering: .relaxed), 0)
        XCTAssertEqual(source.begins.load(ordering: .relaxed), 0)
        XCTAssertEqual(source.served.load(ordering: .relaxed), 0)
        XCTAssertEqual(loop.pollNanoseconds, 0)
    }

    /// QEMU's window arithmetic: 0 -> 4 us -> x grow, capped; a long wait divides by shrink (or
    /// zeroes it); an iothread starts with QEMU's defaults.
    func testWindowGrowsAndShrinks() throws {
        let loop = try EventLoop()
        let source = Source()
        // A 100 ms maximum: the wake-ups below come within microseconds, but a host that stalls
        // a thread for a few tens of milliseconds must not turn one into a "long wait".
        loop.pollParameters = PollParameters(maxNanoseconds: 100_000_000, grow: 4, shrink: 2)
        let registered = expectation(description: "poller added")
        loop.post { loop.addPoller(source.poller); registered.fulfill() }
        let t = LoopThread(loop)
        wait(for: [registered], timeout: 5)
        var windows: [UInt64] = []
        for _ in 0..<4 {
            // Past the window (at most 256 us here): a post that lands while the loop still polls
            // is found by the poll, which leaves the window as it is (the test saw 4000 x 4).
            usleep(2000)
            // A semaphore, not an XCTest expectation: its wait returns without run-loop latency.
            let got = DispatchSemaphore(value: 0)
            loop.post { windows.append(loop.pollNanoseconds); got.signal() }
            got.wait()
        }
        // Each wake-up came well inside the maximum after the previous poll ran out... or found
        // the bottom half: the window only grows here.
        XCTAssertEqual(windows.first, 4000)
        XCTAssertTrue(windows.contains(16_000), "\(windows)")
        XCTAssertEqual(windows, windows.sorted())
        usleep(300_000)   // a long sleep: shrinks
        let after = expectation(description: "after")
        var shrunk: UInt64 = 0
        loop.post { shrunk = loop.pollNanoseconds; after.fulfill() }
        wait(for: [after], timeout: 5)
        t.stopAndJoin()
        XCTAssertLessThan(shrunk, windows.last ?? 0)
        XCTAssertEqual(try IOThread(id: "p").loop.pollParameters, PollParameters(maxNanoseconds: 32768, grow: 0, shrink: 0))
    }
}
