@testable import Devices
import Block
import Memory
import XCTest

/// Counts the transfers a device hands over; runs them, or fails them all when `status` is set.
final class RecordingBlockExecutor: VirtioRequestExecutor {
    var requests: [BlockRequest] = []
    var failWith: UInt8?
    var merges = true
    var mergesSequentialRequests: Bool { merges }
    func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) { completion(failWith ?? work()) }
    func execute(_ request: BlockRequest, on backend: BlockDevice, work: @escaping () -> UInt8,
                 completion: @escaping (UInt8) -> Void) {
        requests.append(request)
        execute(work, completion: completion)
    }
}

/// Adjacent requests of one batch merged into one transfer (QEMU's virtio_blk_submit_multireq).
final class VirtioBlockMergeTests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    var msi = RecordingMSIController()

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
    }

    func makeDisk(_ disk: MemoryBlockDevice, executor: VirtioRequestExecutor) throws -> (VirtioPCIDevice, TestVirtioPCIDriver) {
        let dev = VirtioPCIDevice(device: VirtioBlock(backend: disk, configuration: .init(), executor: executor), memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        return (dev, drv)
    }

    func probe(_ drv: TestVirtioPCIDriver) throws {
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: 2)
        try drv.setUpQueues(memory: memory, count: 1, msix: true)
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
    }

    /// Queues one request per element without kicking; header i at 0x200000 + 32 i, status i at
    /// 0x210000 + i, data at `address`. Returns the heads in order.
    func queueRequests(_ drv: TestVirtioPCIDriver, _ reqs: [(type: UInt32, sector: UInt64, address: UInt64, length: UInt32)]) throws -> [UInt16] {
        var heads: [UInt16] = []
        for (i, r) in reqs.enumerated() {
            let h = 0x200000 + 32 * UInt64(i)
            try memory.store(r.type, at: h); try memory.store(UInt32(0), at: h + 4); try memory.store(r.sector, at: h + 8)
            try memory.store(UInt8(0xEE), at: 0x210000 + UInt64(i))
            let bufs: [TestVirtqueueDriver.Buf] = [.init(address: h, length: 16, writable: false),
                                                   .init(address: r.address, length: r.length, writable: r.type == 0),
                                                   .init(address: 0x210000 + UInt64(i), length: 1, writable: true)]
            heads.append(try drv.queues[0].add(bufs, indirect: true))
        }
        return heads
    }

    func testAdjacentRequestsMergeAndCompleteEachWithItsLength() throws {
        let exec = RecordingBlockExecutor()
        let disk = MemoryBlockDevice(size: 1 << 20)
        for i in 0..<disk.bytes.count { disk.bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 9) }
        let (dev, drv) = try makeDisk(disk, executor: exec)
        try probe(drv)
        for i in 0..<3 { try memory.write([UInt8](repeating: UInt8(0x10 + i), count: 4096), at: 0x300000 + 0x1000 * UInt64(i)) }
        let original = disk.bytes
        // Three adjacent writes, a read elsewhere, two adjacent reads, a flush, one more read.
        let heads = try queueRequests(drv, [(1, 0, 0x300000, 4096), (1, 8, 0x301000, 4096), (1, 16, 0x302000, 4096),
                                            (0, 100, 0x400000, 512), (0, 8, 0x401000, 4096), (0, 16, 0x402000, 1024),
                                            (4, 0, 0x403000, 0), (0, 18, 0x404000, 512)])
        drv.kick(0)
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(exec.requests.count, 5, "writes 0-23, read 100, reads 8-17, flush, read 18")
        if case .write(let s, let o) = exec.requests[0] { XCTAssertEqual(s.count, 3); XCTAssertEqual(o, 0) } else { XCTFail("merged write") }
        if case .read(let s, let o) = exec.requests[2] { XCTAssertEqual(s.count, 2); XCTAssertEqual(o, 4096) } else { XCTFail("merged read") }
        if case .flush = exec.requests[3] {} else { XCTFail("the flush keeps its place") }
        XCTAssertEqual((dev.device as? VirtioBlock)?.mergedRequests, 3)
        for i in 0..<8 { XCTAssertEqual(try memory.load(UInt8.self, at: 0x210000 + UInt64(i)), 0, "request \(i) status") }
        XCTAssertEqual(used.map { $0.0 }, heads)
        XCTAssertEqual(used.map { $0.1 }, [1, 1, 1, 513, 4097, 1025, 1, 513], "each read reports its own bytes")
        for i in 0..<3 {
            XCTAssertEqual(Array(disk.bytes[4096 * i..<4096 * (i + 1)]), [UInt8](repeating: UInt8(0x10 + i), count: 4096))
        }
        XCTAssertEqual(Array(disk.bytes[12288...]), Array(original[12288...]))
        XCTAssertEqual(try memory.readBytes(at: 0x400000, count: 512), Array(disk.bytes[51200..<51712]))
        XCTAssertEqual(try memory.readBytes(at: 0x401000, count: 4096), Array(disk.bytes[4096..<8192]))
        XCTAssertEqual(try memory.readBytes(at: 0x402000, count: 1024), Array(disk.bytes[8192..<9216]))
        XCTAssertEqual(try memory.readBytes(at: 0x404000, count: 512), Array(disk.bytes[9216..<9728]))
    }

    func testFailedMergedTransferFailsEachRequest() throws {
        let exec = RecordingBlockExecutor()
        exec.failWith = VirtioBlock.statusIOError
        let (_, drv) = try makeDisk(MemoryBlockDevice(size: 1 << 20), executor: exec)
        try probe(drv)
        let heads = try queueRequests(drv, [(0, 0, 0x300000, 4096), (0, 8, 0x301000, 4096), (0, 16, 0x302000, 4096)])
        drv.kick(0)
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(exec.requests.count, 1)
        XCTAssertEqual(used.map { $0.0 }, heads)
        XCTAssertEqual(used.map { $0.1 }, [1, 1, 1], "a failed read reports only its status byte")
        for i in 0..<3 { XCTAssertEqual(try memory.load(UInt8.self, at: 0x210000 + UInt64(i)), VirtioBlock.statusIOError) }
    }

    func testMergeStopsAtDirectionGapsBadRequestsAndLimits() throws {
        let exec = RecordingBlockExecutor()
        let (_, drv) = try makeDisk(MemoryBlockDevice(size: 1 << 20), executor: exec)
        try probe(drv)
        // A write between reads, a gap, and a read past the disk's end (fails alone, unmerged).
        _ = try queueRequests(drv, [(0, 0, 0x300000, 512), (1, 1, 0x301000, 512), (0, 2, 0x302000, 512),
                                    (0, 4, 0x303000, 512), (0, 2048, 0x304000, 512), (0, 5, 0x305000, 512)])
        drv.kick(0)
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(exec.requests.count, 4, "read 0, write 1, read 2, reads 4-5 (the bad one in between is not issued)")
        XCTAssertEqual(used.count, 6)
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x210004), VirtioBlock.statusIOError)
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x210005), 0)
        // At most 32 requests per transfer.
        exec.requests.removeAll()
        _ = try queueRequests(drv, (0..<40).map { (0, UInt64($0), 0x300000 + 0x1000 * UInt64($0), 512) })
        drv.kick(0)
        XCTAssertEqual(try drv.queues[0].harvest().count, 40)
        XCTAssertEqual(exec.requests.count, 2)
        if case .read(let s, _) = exec.requests[0] { XCTAssertEqual(s.count, MergedTransfer.maxRequests) } else { XCTFail() }
    }

    /// The worker pool gets page-cache requests one by one (its threads copy them in parallel),
    /// but an O_DIRECT backend's merged: each request there is a disk operation.
    func testWorkerPoolStyleExecutorMergesOnlyForDirectBackends() throws {
        for direct in [false, true] {
            let exec = RecordingBlockExecutor()
            exec.merges = false
            let disk = MemoryBlockDevice(size: 1 << 20)
            disk.direct = direct
            let (_, drv) = try makeDisk(disk, executor: exec)
            try probe(drv)
            _ = try queueRequests(drv, (0..<4).map { (0, UInt64($0), 0x300000 + 0x1000 * UInt64($0), 512) })
            drv.kick(0)
            XCTAssertEqual(try drv.queues[0].harvest().count, 4)
            XCTAssertEqual(exec.requests.count, direct ? 1 : 4, "direct: \(direct)")
            pio = Bus(name: "pio"); mmio = Bus(name: "mmio")
            bridge = PCIHostBridge(pio: pio, mmio: mmio)
            try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
        }
    }
}
