@testable import Devices
import Loop
import Memory
import XCTest

final class VirtioBlockTests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    var msi = RecordingMSIController()

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
    }

    func makeDisk(_ disk: MemoryBlockDevice, _ cfg: VirtioBlock.Configuration = .init(), executor: VirtioRequestExecutor = InlineExecutor())
        throws -> (VirtioPCIDevice, TestVirtioPCIDriver) {
        try makeDisks([disk], cfg, executor: executor)[0]
    }

    /// Plugs the disks, then assigns BARs once, as firmware does after enumerating everything.
    func makeDisks(_ disks: [MemoryBlockDevice], _ cfg: VirtioBlock.Configuration = .init(), executor: VirtioRequestExecutor = InlineExecutor())
        throws -> [(VirtioPCIDevice, TestVirtioPCIDriver)] {
        let plugged = try disks.map { disk -> (VirtioPCIDevice, Int) in
            let dev = VirtioPCIDevice(device: VirtioBlock(backend: disk, configuration: cfg, executor: executor), memory: memory, msiController: msi)
            return (dev, try bridge.plug(dev))
        }
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        return plugged.map { dev, slot in
            let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
            drv.findCapabilities()
            return (dev, drv)
        }
    }

    /// Linux's virtio_blk probe: VERSION_1, EVENT_IDX, INDIRECT_DESC and the blk features it knows.
    func probe(_ drv: TestVirtioPCIDriver, queues: Int = 1) throws {
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: queues + 1)
        try drv.setUpQueues(memory: memory, count: queues, msix: true)
        for q in drv.queues { q.eventIndex = true }
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
    }

    /// One request: header at 0x200000, data at 0x201000, status at 0x210000.
    @discardableResult
    func request(_ drv: TestVirtioPCIDriver, queue: Int = 0, type: UInt32, sector: UInt64, data: [UInt8] = [],
                 readLength: Int = 0, indirect: Bool = false, dataBuffers: [TestVirtqueueDriver.Buf]? = nil) throws -> UInt8 {
        var header = [UInt8](repeating: 0, count: 16)
        for i in 0..<4 { header[i] = UInt8(truncatingIfNeeded: type >> (8 * UInt32(i))) }
        for i in 0..<8 { header[8 + i] = UInt8(truncatingIfNeeded: sector >> (8 * UInt64(i))) }
        try memory.write(header, at: 0x200000)
        try memory.write([0xEE], at: 0x210000)
        var bufs: [TestVirtqueueDriver.Buf] = [.init(address: 0x200000, length: 16, writable: false)]
        if let d = dataBuffers { bufs += d }
        else if !data.isEmpty {
            try memory.write(data, at: 0x201000)
            bufs.append(.init(address: 0x201000, length: UInt32(data.count), writable: false))
        } else if readLength > 0 {
            bufs.append(.init(address: 0x201000, length: UInt32(readLength), writable: true))
        }
        bufs.append(.init(address: 0x210000, length: 1, writable: true))
        let q = drv.queues[queue]
        let old = q.availIdx
        try q.add(bufs, indirect: indirect)
        if try q.kickNeeded(oldAvail: old) { drv.kick(queue) }
        _ = try q.harvest()
        return try memory.load(UInt8.self, at: 0x210000)
    }

    func testIdentityCapabilitiesAndConfigSpace() throws {
        let disk = MemoryBlockDevice(size: 1 << 20)
        var c = VirtioBlock.Configuration(); c.queueCount = 2; c.queueSize = 128
        let (_, drv) = try makeDisk(disk, c)
        XCTAssertEqual(drv.cfg(0, 4), 0x1042_1AF4)
        XCTAssertEqual(drv.cfg(0x08, 1), 1, "modern-only devices have revision 1")
        XCTAssertEqual(drv.cfg(0x09, 3), 0x01_8000)
        XCTAssertNotEqual(drv.common, 0); XCTAssertNotEqual(drv.isr, 0)
        XCTAssertNotEqual(drv.deviceCfg, 0); XCTAssertNotEqual(drv.notifyBase, 0)
        XCTAssertEqual(drv.notifyMultiplier, 4)
        XCTAssertEqual(drv.r(0x12, 2), 2, "num_queues")
        XCTAssertEqual(mmio.inp(drv.deviceCfg, width: 8), (1 << 20) / 512, "capacity")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 12, width: 4), 126, "seg_max")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 20, width: 4), 512, "blk_size")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 34, width: 2), 2, "num_queues")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 0xFFE, width: 2), 0)
        drv.w(0x00, 4, 1)
        XCTAssertEqual(drv.r(0x04, 4) & 1, 1, "VERSION_1")
        drv.w(0x00, 4, 0)
        let low = drv.r(0x04, 4)
        XCTAssertEqual(low & (1 << 28 | 1 << 29), 1 << 28 | 1 << 29, "INDIRECT_DESC and EVENT_IDX")
        XCTAssertEqual(low & (1 << 12), 1 << 12, "MQ")
        drv.w(0x00, 4, 7)
        XCTAssertEqual(drv.r(0x04, 4), 0)
    }

    func testFeatureNegotiationRequiresVersion1AndOfferedBits() throws {
        let (_, drv) = try makeDisk(MemoryBlockDevice(size: 4096))
        XCTAssertFalse(drv.negotiate { $0 & ~Virtio.featureVersion1 }, "legacy drivers are refused")
        XCTAssertFalse(drv.negotiate { $0 | 1 << 40 }, "bits the device did not offer")
        XCTAssertTrue(drv.negotiate { $0 })
        // Features are frozen after FEATURES_OK.
        drv.w(0x08, 4, 0); drv.w(0x0C, 4, 0)
        XCTAssertNotEqual(drv.r(0x0C, 4), 0)
    }

    func testWriteReadFlushGetIDDiscardWriteZeroes() throws {
        let disk = MemoryBlockDevice(size: 1 << 20)
        var c = VirtioBlock.Configuration(); c.serial = "KEEL-SERIAL-0001"
        let (_, drv) = try makeDisk(disk, c)
        try probe(drv)
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        XCTAssertEqual(try request(drv, type: 1, sector: 8, data: pattern), 0)
        XCTAssertEqual(Array(disk.bytes[4096..<5120]), pattern)
        XCTAssertEqual(msi.messages.last?.1, 0x41, "queue 0's vector")
        try memory.write([UInt8](repeating: 0, count: 1024), at: 0x201000)
        XCTAssertEqual(try request(drv, type: 0, sector: 8, readLength: 1024), 0)
        XCTAssertEqual(try memory.readBytes(at: 0x201000, count: 1024), pattern)
        XCTAssertEqual(drv.queues[0].lastUsed, 2)
        // Through an indirect table, scattered over three buffers.
        disk.bytes.replaceSubrange(0..<1536, with: (0..<1536).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) })
        let scattered: [TestVirtqueueDriver.Buf] = [.init(address: 0x300000, length: 512, writable: true),
                                                    .init(address: 0x302000, length: 1000, writable: true),
                                                    .init(address: 0x304000, length: 24, writable: true)]
        XCTAssertEqual(try request(drv, type: 0, sector: 0, indirect: true, dataBuffers: scattered), 0)
        XCTAssertEqual(try memory.readBytes(at: 0x302000, count: 1000), Array(disk.bytes[512..<1512]))
        XCTAssertEqual(try memory.readBytes(at: 0x304000, count: 24), Array(disk.bytes[1512..<1536]))
        XCTAssertEqual(try request(drv, type: 4, sector: 0), 0)
        XCTAssertEqual(disk.flushes, 1)
        XCTAssertEqual(try request(drv, type: 8, sector: 0, readLength: 20), 0)
        XCTAssertEqual(try memory.readBytes(at: 0x201000, count: 20), Array("KEEL-SERIAL-0001".utf8) + [0, 0, 0, 0])
        func segment(_ sector: UInt64, _ count: UInt32, _ flags: UInt32) -> [UInt8] {
            (0..<8).map { UInt8(truncatingIfNeeded: sector >> (8 * UInt64($0))) } +
            (0..<4).map { UInt8(truncatingIfNeeded: count >> (8 * UInt32($0))) } +
            (0..<4).map { UInt8(truncatingIfNeeded: flags >> (8 * UInt32($0))) }
        }
        XCTAssertEqual(try request(drv, type: 11, sector: 0, data: segment(16, 8, 0)), 0)
        XCTAssertEqual(disk.discards.first?.0, 8192)
        XCTAssertEqual(disk.discards.first?.1, 4096)
        XCTAssertEqual(try request(drv, type: 11, sector: 0, data: segment(16, 8, 1)), 2, "discard with unmap is unsupported")
        XCTAssertEqual(try request(drv, type: 13, sector: 0, data: segment(8, 2, 1)), 0)
        XCTAssertEqual(Array(disk.bytes[4096..<5120]), [UInt8](repeating: 0, count: 1024))
        XCTAssertEqual(try request(drv, type: 99, sector: 0), 2, "unknown request types are UNSUPP")
        // Out of range, overflowing and partial-sector requests fail that request only.
        XCTAssertEqual(try request(drv, type: 0, sector: 2048, readLength: 512), 1)
        XCTAssertEqual(try request(drv, type: 0, sector: UInt64.max / 256, readLength: 512), 1)
        XCTAssertEqual(try request(drv, type: 1, sector: 0, data: [1, 2, 3]), 1)
        XCTAssertEqual(try request(drv, type: 13, sector: 2047, data: segment(2047, 2, 0)), 1)
        XCTAssertEqual(try request(drv, type: 0, sector: 0, readLength: 512), 0, "device still works")
    }

    func testReadOnlyDiskFailsWrites() throws {
        let disk = MemoryBlockDevice(size: 65536)
        var c = VirtioBlock.Configuration(); c.readOnly = true
        let (_, drv) = try makeDisk(disk, c)
        drv.w(0x00, 4, 0)
        XCTAssertEqual(drv.r(0x04, 4) & (1 << 5), 1 << 5, "VIRTIO_BLK_F_RO")
        try probe(drv)
        XCTAssertEqual(try request(drv, type: 1, sector: 0, data: [UInt8](repeating: 1, count: 512)), 1)
        XCTAssertEqual(disk.bytes[0], 0)
        XCTAssertEqual(try request(drv, type: 13, sector: 0, data: [UInt8](repeating: 0, count: 16)), 1)
        XCTAssertEqual(try request(drv, type: 0, sector: 0, readLength: 512), 0)
    }

    func testMultipleQueuesUseTheirOwnVectors() throws {
        var c = VirtioBlock.Configuration(); c.queueCount = 2
        let (_, drv) = try makeDisk(MemoryBlockDevice(size: 65536), c)
        try probe(drv, queues: 2)
        XCTAssertEqual(try request(drv, queue: 1, type: 0, sector: 0, readLength: 512), 0)
        XCTAssertEqual(msi.messages.last?.1, 0x42)
        XCTAssertEqual(try request(drv, queue: 0, type: 0, sector: 0, readLength: 512), 0)
        XCTAssertEqual(msi.messages.last?.1, 0x41)
    }

    func testINTxAndISRWithoutMSIX() throws {
        let (dev, drv) = try makeDisk(MemoryBlockDevice(size: 65536))
        let line = RecordingInterruptLine()
        dev.pci.intxLine = line
        XCTAssertTrue(drv.negotiate { $0 })
        try drv.setUpQueues(memory: memory, count: 1, msix: false)
        drv.setStatus(0x0F)
        XCTAssertEqual(try request(drv, type: 0, sector: 0, readLength: 512), 0)
        XCTAssertTrue(line.asserted)
        XCTAssertEqual(mmio.inp(drv.isr, width: 1), 1)
        XCTAssertFalse(line.asserted, "reading the ISR acknowledges")
        XCTAssertEqual(mmio.inp(drv.isr, width: 1), 0)
    }

    func testResetClearsQueuesAndWaitsForInflightRequests() throws {
        let exec = DeferredExecutor()
        let disk = MemoryBlockDevice(size: 65536)
        let (dev, drv) = try makeDisk(disk, executor: exec)
        try probe(drv)
        XCTAssertEqual(try request(drv, type: 1, sector: 0, data: [UInt8](repeating: 9, count: 512)), 0xEE, "not complete yet")
        drv.setStatus(0)
        XCTAssertNotEqual(drv.status, 0, "the reset waits for the request in flight")
        exec.runAll()
        XCTAssertEqual(drv.status, 0)
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x210000), 0xEE, "no completion after reset")
        XCTAssertEqual(drv.queues[0].lastUsed, 0)
        XCTAssertEqual(disk.bytes[0], 9, "the write itself reached the disk")
        XCTAssertFalse(dev.queues[0].isReady)
        drv.w(0x16, 2, 0)
        XCTAssertEqual(drv.r(0x1C, 2), 0)
        XCTAssertEqual(drv.r(0x20, 4), 0)
        XCTAssertEqual(drv.r(0x10, 2), 0xFFFF)
        // And the device comes back after a fresh probe.
        drv.queues.removeAll(); drv.notifyOffsets.removeAll()
        try probe(drv)
        _ = try request(drv, type: 0, sector: 0, readLength: 512)
        exec.runAll()
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x210000), 0)
    }

    func testHostileChainSetsNeedsResetAndSparesOtherDevices() throws {
        let other = MemoryBlockDevice(size: 65536)
        let pair = try makeDisks([MemoryBlockDevice(size: 65536), other])
        let (dev, drv) = pair[0], drv2 = pair[1].1
        XCTAssertNotEqual(drv.common, drv2.common)
        try probe(drv)
        // A two-descriptor loop.
        let q = drv.queues[0]
        try memory.store(UInt64(0x200000), at: q.desc); try memory.store(UInt32(16), at: q.desc + 8)
        try memory.store(UInt16(1), at: q.desc + 12); try memory.store(UInt16(1), at: q.desc + 14)
        try memory.store(UInt64(0x200000), at: q.desc + 16); try memory.store(UInt32(16), at: q.desc + 24)
        try memory.store(UInt16(1), at: q.desc + 28); try memory.store(UInt16(0), at: q.desc + 30)
        try memory.store(UInt16(0), at: q.avail + 4); try memory.store(UInt16(1), at: q.avail + 2)
        let before = msi.messages.count
        drv.kick(0)
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, Virtio.statusNeedsReset)
        XCTAssertEqual(dev.lastError, .chainTooLong)
        XCTAssertEqual(msi.messages.count, before + 1)
        XCTAssertEqual(msi.messages.last?.1, 0x40, "config vector")
        drv.kick(0) // ignored while broken
        // Queue addresses outside RAM are refused when the queue is enabled.
        try probe(drv2)
        drv2.w(0x16, 2, 0)
        XCTAssertEqual(try request(drv2, type: 1, sector: 1, data: [UInt8](repeating: 4, count: 512)), 0)
        XCTAssertEqual(other.bytes[512], 4)
        // Absurd selectors and sizes are ignored.
        drv.setStatus(0)
        XCTAssertEqual(drv.status, 0)
        drv.w(0x16, 2, 0xFFFF)
        XCTAssertEqual(drv.r(0x18, 2), 0)
        drv.w(0x1C, 2, 1)
        drv.w(0x16, 2, 0)
        drv.w(0x18, 2, 300)
        XCTAssertEqual(drv.r(0x18, 2), 256)
        drv.w(0x18, 2, 100)
        XCTAssertEqual(drv.r(0x18, 2), 256, "not a power of two")
        drv.w(0x20, 4, 0xFFFF_F000); drv.w(0x24, 4, 0xFFFF_FFFF)
        drv.w(0x1C, 2, 1)
        XCTAssertEqual(drv.r(0x1C, 2), 0)
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, Virtio.statusNeedsReset)
        drv.w(0x1A, 2, 77)
        XCTAssertEqual(drv.r(0x1A, 2), 0xFFFF, "vector beyond the table: NO_VECTOR")
    }

    func testWorkerPoolCompletesOnTheDeviceLoop() throws {
        let lock = BigLock()
        let loop = try EventLoop(lock: lock)
        let pool = WorkerPool(threads: 2)
        defer { pool.shutdown() }
        let disk = MemoryBlockDevice(size: 65536)
        let (_, drv) = try makeDisk(disk, executor: WorkerPoolExecutor(pool: pool, loop: loop))
        try probe(drv)
        var t = pthread_t()
        let box = Unmanaged.passRetained(loop).toOpaque()
        pthread_create(&t, nil, { Unmanaged<EventLoop>.fromOpaque($0!).takeRetainedValue().run(); return nil }, box)
        lock.lock()
        _ = try request(drv, type: 1, sector: 3, data: [UInt8](repeating: 0xAB, count: 4096))
        lock.unlock()
        let deadline = Date().addingTimeInterval(5)
        while lock.withLock({ (try? memory.load(UInt8.self, at: 0x210000)) == 0xEE }) && Date() < deadline { usleep(1000) }
        lock.withLock {
            XCTAssertEqual(try? memory.load(UInt8.self, at: 0x210000), 0)
            XCTAssertEqual(Array(disk.bytes[1536..<1536 + 4096]), [UInt8](repeating: 0xAB, count: 4096))
            XCTAssertEqual(msi.messages.last?.1, 0x41)
        }
        loop.stop()
        pthread_join(t, nil)
    }
}
