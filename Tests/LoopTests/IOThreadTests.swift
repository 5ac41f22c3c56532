import Foundation
import Glibc
@testable import Loop
import XCTest

final class IOThreadTests: XCTestCase {
    /// runSync runs the work on the iothread and waits for it; posted work runs there too; the
    /// thread carries its name (as /proc shows it); after stop, runSync runs inline.
    func testRunSyncPostAndThreadName() throws {
        let t = try IOThread(id: "io7")
        try t.start()
        XCTAssertFalse(t.isCurrent)
        var onThread = false
        var worker = pthread_self()
        t.runSync {
            onThread = t.isCurrent
            worker = pthread_self()
            // Re-entrant: runs inline instead of deadlocking.
            t.runSync { XCTAssertTrue(t.isCurrent) }
        }
        XCTAssertTrue(onThread)
        XCTAssertEqual(pthread_equal(worker, pthread_self()), 0, "the work ran on the caller's thread")

        let names = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap {
            try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        XCTAssertTrue(names.contains("iothread io7"), "threads: \(names)")

        let posted = DispatchSemaphore(value: 0)
        var postedOnThread = false
        t.post { postedOnThread = t.isCurrent; posted.signal() }
        XCTAssertEqual(posted.wait(timeout: .now() + 5), .success)
        XCTAssertTrue(postedOnThread)

        t.stop()
        var ran = false
        t.runSync { ran = true }
        XCTAssertTrue(ran, "after stop the work runs on the caller")
    }

    /// Many callers at once: each runSync returns after its own work, and the works never overlap.
    func testConcurrentRunSyncIsSerialized() throws {
        let t = try IOThread(id: "io8")
        try t.start()
        defer { t.stop() }
        var counter = 0, inside = 0, overlaps = 0
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<200 {
                t.runSync {
                    inside += 1
                    if inside > 1 { overlaps += 1 }
                    counter += 1
                    inside -= 1
                }
            }
        }
        XCTAssertEqual(counter, 1600)
        XCTAssertEqual(overlaps, 0)
    }
}
