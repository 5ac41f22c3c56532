@testable import Devices
import Block
import Foundation
import Glibc
import Loop
import XCTest

/// aio=threads: a read whose data is at hand completes on the submitting thread; everything
/// else runs on a worker and completes on the device's loop.
final class WorkerPoolExecutorTests: XCTestCase {
    func testACachedReadCompletesAtOnceAndTheRestThroughThePool() throws {
        let path = "/dev/shm/keel-executor-\(UUID().uuidString).raw"
        FileManager.default.createFile(atPath: path, contents: Data(repeating: 0x5A, count: 4 << 20))
        defer { unlink(path) }
        let file = try RawFileDevice(path: path, readOnly: false)
        defer { file.close() }
        let loop = try EventLoop()
        let pool = WorkerPool(threads: 1)
        defer { pool.shutdown() }
        let exec = WorkerPoolExecutor(pool: pool, loop: loop)
        let small = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
        let large = UnsafeMutableRawBufferPointer.allocate(byteCount: BlockRequest.maxInlineRead + 4096, alignment: 4096)
        defer { small.deallocate(); large.deallocate() }
        small.initializeMemory(as: UInt8.self, repeating: 0)

        var status: UInt8?
        exec.execute(.read(segments: [small], offset: 4096), on: file, work: { XCTFail("a worker ran a cached read"); return 1 }) {
            status = $0
        }
        XCTAssertEqual(status, VirtioBlock.statusOK, "completed before execute returned")
        XCTAssertEqual(exec.readsCompletedInline, 1)
        XCTAssertTrue(small.allSatisfy { $0 == 0x5A })

        // Past the size a loop copies itself, and a write: the workers', completed on the loop.
        var completed: [String] = []
        let onWorker = { () -> UInt8 in XCTAssertFalse(Thread.isMainThread); return VirtioBlock.statusOK }
        exec.execute(.read(segments: [large], offset: 0), on: file, work: onWorker) { _ in completed.append("large read") }
        exec.execute(.write(segments: [small], offset: 0), on: file, work: onWorker) { _ in completed.append("write") }
        XCTAssertEqual(completed, [], "nothing completes before the loop runs")
        let timeout = try loop.makeTimer { loop.stop() }
        timeout.arm(afterNanoseconds: 10_000_000_000)
        let poll = try loop.makeTimer { if completed.count == 2 { loop.stop() } }
        poll.arm(afterNanoseconds: 1_000_000, intervalNanoseconds: 1_000_000)
        loop.run()
        XCTAssertEqual(Set(completed), ["large read", "write"])
        XCTAssertEqual(exec.readsCompletedInline, 1)
    }
}
