import Block
@testable import Devices
import Foundation
import Loop
import Memory
import XCTest

extension VirtioIOThreadTests {
    /// A virtio-blk queue on a polling iothread: once the window has grown, the driver's
    /// notifications are suppressed and requests it adds are taken by polling, without kicks;
    /// after an idle window the iothread re-arms notifications before sleeping and the next
    /// request kicks again (virtio 1.2 §2.7.10).
    func testPolledQueueTakesRequestsWithoutNotifies() throws {
        let t = try IOThread(id: "iop", polling: PollParameters(maxNanoseconds: 300_000_000, grow: 100_000, shrink: 0))
        try t.start()
        defer { t.stop() }
        let disk = MemoryBlockDevice(size: 1 << 20)
        let (dev, drv) = try makeDevice(disk, iothread: t)
        let accelerator = RecordingIOEventAccelerator()
        lock.withLock { dev.ioEvents = VirtioNotifyAcceleration(accelerator: accelerator, loop: t.loop) }
        XCTAssertEqual(accelerator.ioEvents.count, 1, "the queue's notify has an ioeventfd")
        func kicks() -> UInt64 { lock.withLock { dev.statistics.trappedNotifies } }
        // Short waits grow the window.
        for k in 0..<3 {
            try queueWrite(drv, sector: UInt64(k), byte: UInt8(k + 1), status: 0x2F0000 + UInt64(k))
            XCTAssertEqual(waitForStatus(0x2F0000 + UInt64(k)), 0)
        }
        let before = kicks()
        for k in 3..<9 {
            try queueWrite(drv, sector: UInt64(k), byte: UInt8(k + 1), status: 0x2F0000 + UInt64(k))
            XCTAssertEqual(waitForStatus(0x2F0000 + UInt64(k)), 0, "request \(k)")
        }
        XCTAssertLessThanOrEqual(kicks() - before, 1, "requests added while the iothread polls need no notify")
        // Idle past the window: notifications come back, and the next request's kick is needed.
        usleep(600_000)
        let idle = kicks()
        try queueWrite(drv, sector: 9, byte: 10, status: 0x2F0009)
        XCTAssertEqual(waitForStatus(0x2F0009), 0)
        XCTAssertEqual(kicks() - idle, 1, "a sleeping iothread is woken by the driver's notify")
        t.runSync {
            for k in 0..<10 { XCTAssertEqual(disk.bytes[512 * k], UInt8(k + 1), "sector \(k)") }
            XCTAssertGreaterThanOrEqual(t.loop.pollStatistics.successes, 3)
            XCTAssertGreaterThanOrEqual(t.loop.pollStatistics.timeouts, 1)
        }
    }
}
