import Glibc
import Loop
import XCTest

/// Runs `loop` on its own thread until `stop()`.
final class LoopThread {
    let loop: EventLoop
    var thread = pthread_t()
    init(_ loop: EventLoop) {
        self.loop = loop
        let box = Unmanaged.passRetained(loop).toOpaque()
        pthread_create(&thread, nil, { arg in
            Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, box)
    }
    func stopAndJoin() {
        loop.stop()
        pthread_join(thread, nil)
    }
}

final class EventLoopTests: XCTestCase {
    func testBottomHalvesRunOnTheLoopThreadInOrder() throws {
        let loop = try EventLoop()
        let t = LoopThread(loop)
        let done = expectation(description: "posted work ran")
        var seen: [Int] = []
        var loopThread: pthread_t?
        for i in 0..<100 {
            loop.post {
                seen.append(i)
                loopThread = pthread_self()
                if i == 99 { done.fulfill() }
            }
        }
        wait(for: [done], timeout: 5)
        t.stopAndJoin()
        XCTAssertEqual(seen, Array(0..<100))
        XCTAssertNotEqual(loopThread, pthread_self())
    }

    func testFDHandlerAndRemoval() throws {
        let loop = try EventLoop()
        let efd = try EventFD()
        let fired = expectation(description: "fd handler")
        try loop.addReadable(fd: efd.fd) { _ in
            XCTAssertEqual(efd.consume(), 7)
            loop.remove(fd: efd.fd)
            fired.fulfill()
        }
        let t = LoopThread(loop)
        efd.signal(7)
        wait(for: [fired], timeout: 5)
        t.stopAndJoin()
    }

    func testAnFDNumberReusedAfterACloseWithoutRemoveCanBeAddedAgain() throws {
        let loop = try EventLoop()
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        try loop.addReadable(fd: fds[0]) { _ in }
        close(fds[0]); close(fds[1])
        var again: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&again), 0)
        XCTAssertEqual(again[0], fds[0], "the kernel hands out the lowest free number")
        defer { close(again[0]); close(again[1]) }
        let fired = expectation(description: "the new fd's handler")
        try loop.addReadable(fd: again[0]) { _ in
            var b: UInt8 = 0
            _ = read(again[0], &b, 1)
            loop.remove(fd: again[0])
            fired.fulfill()
        }
        let t = LoopThread(loop)
        XCTAssertEqual(write(again[1], "x", 1), 1)
        wait(for: [fired], timeout: 5)
        t.stopAndJoin()
    }

    func testTimerFiresAfterItsDelay() throws {
        let loop = try EventLoop()
        let fired = expectation(description: "timer")
        var start = timespec(), end = timespec()
        let timer = try loop.makeTimer {
            clock_gettime(CLOCK_MONOTONIC, &end)
            fired.fulfill()
        }
        let t = LoopThread(loop)
        clock_gettime(CLOCK_MONOTONIC, &start)
        timer.arm(afterNanoseconds: 50_000_000)
        wait(for: [fired], timeout: 5)
        t.stopAndJoin()
        let elapsed = Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
        XCTAssertGreaterThanOrEqual(elapsed, 0.049)
    }

    func testCallbacksHoldTheBigLock() throws {
        let lock = BigLock()
        let loop = try EventLoop(lock: lock)
        let ran = expectation(description: "callback")
        var heldInside = false
        loop.post {
            heldInside = !lock.tryLock()
            ran.fulfill()
        }
        let t = LoopThread(loop)
        wait(for: [ran], timeout: 5)
        t.stopAndJoin()
        XCTAssertTrue(heldInside)
        XCTAssertTrue(lock.tryLock(), "released when the loop is idle")
        lock.unlock()
    }

    func testWorkerPoolCompletesOnTheLoop() throws {
        let loop = try EventLoop()
        let pool = WorkerPool(threads: 2)
        let t = LoopThread(loop)
        let done = expectation(description: "completions")
        done.expectedFulfillmentCount = 20
        var results = Set<Int>()
        let submitter = pthread_self()
        for i in 0..<20 {
            pool.submit(on: loop, { () -> Int in
                XCTAssertNotEqual(pthread_self(), submitter)
                return i * i
            }, completion: { r in
                results.insert(r)
                done.fulfill()
            })
        }
        wait(for: [done], timeout: 10)
        t.stopAndJoin()
        pool.shutdown()
        XCTAssertEqual(results, Set((0..<20).map { $0 * $0 }))
    }
}
