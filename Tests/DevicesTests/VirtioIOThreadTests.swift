import Block
@testable import Devices
import Foundation
import Loop
import Memory
import XCTest

/// A virtio-blk device whose queue belongs to an iothread, and queue pausing (QMP stop), driven
/// through the PCI bus as Linux's driver does. The test thread plays the vCPU: it holds the big
/// lock around every register access.
final class VirtioIOThreadTests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    let msi = LockedMSIController()
    let lock = BigLock()
    /// The main loop, running (with the big lock) on its own thread: injections the iothread
    /// cannot do under the big lock go there.
    var mainLoop: EventLoop!
    var mainThread: Thread?

    override func setUpWithError() throws {
        mainLoop = try EventLoop(lock: lock)
        let loop = mainLoop!
        let t = Thread { loop.run() }
        t.start()
        mainThread = t
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
    }

    override func tearDown() {
        mainLoop.stop()
        while mainThread?.isFinished == false { usleep(1000) }
    }

    /// A backend that notes the thread each request runs on.
    final class ThreadNotingDisk: BlockDevice, @unchecked Sendable {
        let inner = MemoryBlockDevice(size: 1 << 20)
        var threads: [pthread_t] = []
        var size: UInt64 { inner.size }
        var isReadOnly: Bool { false }
        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
            threads.append(pthread_self()); try inner.read(into: buffer, at: offset)
        }
        func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
            threads.append(pthread_self()); try inner.write(data, at: offset)
        }
        func flush() throws(BlockError) {}
        func discard(offset: UInt64, length: UInt64) throws(BlockError) {}
        func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {}
        func close() {}
    }

    func makeDevice(_ disk: BlockDevice, executor: VirtioRequestExecutor = InlineExecutor(), iothread: IOThread?) throws -> (VirtioPCIDevice, TestVirtioPCIDriver) {
        let dev = VirtioPCIDevice(device: VirtioBlock(backend: disk, configuration: .init(), executor: executor), memory: memory, msiController: msi)
        if let iothread { dev.assign(to: VirtioIOThreadContext(iothread: iothread, bigLock: lock, mainLoop: mainLoop)) }
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        try lock.withLock {
            XCTAssertTrue(drv.negotiate { $0 })
            drv.enableMSIX(vectors: 2)
            try drv.setUpQueues(memory: memory, count: 1, msix: true)
            drv.queues[0].eventIndex = true
            drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
            XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
        }
        return (dev, drv)
    }

    /// Queues a write of `byte` x 512 to `sector` with its status byte at `status`, and kicks.
    func queueWrite(_ drv: TestVirtioPCIDriver, sector: UInt64, byte: UInt8, status: UInt64) throws {
        var header = [UInt8](repeating: 0, count: 16)
        header[0] = 1
        for i in 0..<8 { header[8 + i] = UInt8(truncatingIfNeeded: sector >> (8 * UInt64(i))) }
        let base = 0x200000 + sector * 0x2000
        try memory.write(header, at: base)
        try memory.write([UInt8](repeating: byte, count: 512), at: base + 0x1000)
        try memory.write([0xEE], at: status)
        try lock.withLock {
            let q = drv.queues[0]
            let old = q.availIdx
            try q.add([.init(address: base, length: 16, writable: false), .init(address: base + 0x1000, length: 512, writable: false),
                       .init(address: status, length: 1, writable: true)])
            if try q.kickNeeded(oldAvail: old) { drv.kick(0) }
        }
    }

    func waitForStatus(_ address: UInt64, timeout: TimeInterval = 5) -> UInt8? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let v = try? memory.load(UInt8.self, at: address), v != 0xEE { return v }
            usleep(500)
        }
        return nil
    }

    /// The request is parsed, executed and completed on the iothread; the MSI-X message is
    /// injected from it under the big lock (no irqfd here).
    func testRequestsRunOnTheIOThread() throws {
        let t = try IOThread(id: "io0")
        try t.start()
        defer { t.stop() }
        let disk = ThreadNotingDisk()
        let (dev, drv) = try makeDevice(disk, iothread: t)
        try queueWrite(drv, sector: 4, byte: 0x5C, status: 0x210000)
        XCTAssertEqual(waitForStatus(0x210000), 0)
        var iothreadThread = pthread_self()
        t.runSync { iothreadThread = pthread_self() }
        t.runSync {
            XCTAssertEqual(disk.threads.count, 1)
            XCTAssertTrue(disk.threads.allSatisfy { pthread_equal($0, iothreadThread) != 0 }, "the request ran off the iothread")
            XCTAssertEqual(Array(disk.inner.bytes[2048..<2560]), [UInt8](repeating: 0x5C, count: 512))
        }
        // The status byte is stored before the used ring and the interrupt: wait for the MSI.
        let deadline = Date().addingTimeInterval(5)
        while lock.withLock({ msi.messages.isEmpty }) && Date() < deadline { usleep(500) }
        lock.withLock {
            XCTAssertEqual(msi.messages.last?.1, 0x41, "queue 0's vector")
            XCTAssertEqual(dev.statistics.trappedNotifies, 1)
            XCTAssertEqual(dev.statistics.iothreadNotifies, 1)
            XCTAssertEqual(dev.notifyThreadName, "iothread io0")
        }
        // A driver reset goes through the iothread and the device works again afterwards.
        try lock.withLock {
            drv.setStatus(0)
            XCTAssertEqual(drv.status, 0)
            drv.queues.removeAll(); drv.notifyOffsets.removeAll()
            XCTAssertTrue(drv.negotiate { $0 })
            drv.enableMSIX(vectors: 2)
            try drv.setUpQueues(memory: memory, count: 1, msix: true)
            drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        }
        try queueWrite(drv, sector: 5, byte: 0x6D, status: 0x210010)
        XCTAssertEqual(waitForStatus(0x210010), 0)
        t.runSync { XCTAssertEqual(Array(disk.inner.bytes[2560..<3072]), [UInt8](repeating: 0x6D, count: 512)) }
    }

    /// QMP stop: a queued request is not taken while paused (the disk does not change), one in
    /// flight completes, and resuming processes what was queued meanwhile.
    func pausedQueue(iothread t: IOThread?) throws {
        let disk = MemoryBlockDevice(size: 1 << 20)
        let executor = DeferredExecutor()
        let (dev, drv) = try makeDevice(disk, executor: executor, iothread: t)
        func onOwner(_ work: () -> Void) { if let t { t.runSync(work) } else { work() } }
        try queueWrite(drv, sector: 1, byte: 0x11, status: 0x210000)
        // The first request is in flight (held by the executor) when the machine stops.
        let deadline = Date().addingTimeInterval(5)
        var inFlight = 0
        while inFlight == 0 && Date() < deadline { onOwner { inFlight = executor.queued.count }; usleep(500) }
        XCTAssertEqual(inFlight, 1)
        lock.withLock { dev.setQueuesPaused(true) }
        try queueWrite(drv, sector: 2, byte: 0x22, status: 0x210010)
        usleep(20_000)
        onOwner {
            XCTAssertEqual(executor.queued.count, 1, "a request was taken from the ring while stopped")
            executor.runAll()
        }
        XCTAssertEqual(waitForStatus(0x210000), 0, "the request in flight must complete while stopped")
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x210010), 0xEE)
        onOwner { XCTAssertEqual(Array(disk.bytes[1024..<1536]), [UInt8](repeating: 0, count: 512)) }
        lock.withLock { dev.setQueuesPaused(false) }
        onOwner {
            XCTAssertEqual(executor.queued.count, 1, "cont must process what was queued while stopped")
            executor.runAll()
        }
        XCTAssertEqual(waitForStatus(0x210010), 0)
        onOwner { XCTAssertEqual(Array(disk.bytes[1024..<1536]), [UInt8](repeating: 0x22, count: 512)) }
    }

    func testPausedQueueOnTheMainLoop() throws {
        try pausedQueue(iothread: nil)
    }

    func testPausedQueueOnAnIOThread() throws {
        let t = try IOThread(id: "io1")
        try t.start()
        defer { t.stop() }
        try pausedQueue(iothread: t)
    }
}

extension VirtioIOThreadTests {
    /// aio=io_uring behind the device on an iothread: three writes queued before one notify go
    /// to the kernel in one submission; reads, flush, discard and write-zeroes complete through
    /// the ring and the host file holds the data.
    func testIoUringExecutorOnAnIOThread() throws {
        let t = try IOThread(id: "io2")
        try t.start()
        defer { t.stop() }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(".build/keel-uring-dev-\(UUID().uuidString).raw").path
        FileManager.default.createFile(atPath: path, contents: Data(repeating: 0x77, count: 1 << 20))
        defer { unlink(path) }
        let file = try RawFileDevice(path: path, readOnly: false, cache: .writeback)
        defer { file.close() }
        let pool = WorkerPool(threads: 1)
        defer { pool.shutdown() }
        let executor: IoUringExecutor
        do {
            executor = try IoUringExecutor(pool: pool, loop: t.loop) { fd, handler in
                var failure: Error?
                t.runSync { do { try t.loop.addReadable(fd: fd, handler) } catch { failure = error } }
                if let failure { throw failure }
            }
        } catch {
            throw XCTSkip("io_uring is unavailable here: \(error)")
        }
        let (_, drv) = try makeDevice(file, executor: executor, iothread: t)
        // Three writes, one notify.
        try lock.withLock {
            let q = drv.queues[0]
            let old = q.availIdx
            for k in 0..<3 {
                let base = 0x200000 + UInt64(k) * 0x4000
                var header = [UInt8](repeating: 0, count: 16)
                header[0] = 1; header[8] = UInt8(8 * k)   // sectors 0, 8, 16
                try memory.write(header, at: base)
                try memory.write([UInt8](repeating: UInt8(0xA0 + k), count: 4096), at: base + 0x1000)
                try memory.write([0xEE], at: 0x210000 + UInt64(k))
                try q.add([.init(address: base, length: 16, writable: false), .init(address: base + 0x1000, length: 4096, writable: false),
                           .init(address: 0x210000 + UInt64(k), length: 1, writable: true)])
            }
            if try q.kickNeeded(oldAvail: old) { drv.kick(0) }
        }
        for k in 0..<3 { XCTAssertEqual(waitForStatus(0x210000 + UInt64(k)), 0, "write \(k)") }
        let disk = try Data(contentsOf: URL(fileURLWithPath: path))
        for k in 0..<3 { XCTAssertEqual(disk[(4096 * k)..<(4096 * (k + 1))], Data(repeating: UInt8(0xA0 + k), count: 4096)) }
        XCTAssertEqual(disk[12288..<(1 << 20)], Data(repeating: 0x77, count: (1 << 20) - 12288))
        t.runSync {
            XCTAssertEqual(executor.ringOperations, 1, "the three adjacent writes merged into one writev")
            XCTAssertEqual(executor.ringSubmissions, 1, "one io_uring_enter for the batch")
        }
        // A read back through the ring, then flush, discard and write-zeroes.
        var header = [UInt8](repeating: 0, count: 16)
        header[8] = 8
        try memory.write(header, at: 0x300000)
        try memory.write([0xEE], at: 0x210010)
        try lock.withLock {
            let q = drv.queues[0]
            let old = q.availIdx
            try q.add([.init(address: 0x300000, length: 16, writable: false), .init(address: 0x301000, length: 4096, writable: true),
                       .init(address: 0x210010, length: 1, writable: true)])
            if try q.kickNeeded(oldAvail: old) { drv.kick(0) }
        }
        XCTAssertEqual(waitForStatus(0x210010), 0)
        XCTAssertEqual(try memory.readBytes(at: 0x301000, count: 4096), [UInt8](repeating: 0xA1, count: 4096))
        func segment(_ sector: UInt64, _ count: UInt32, _ flags: UInt32) -> [UInt8] {
            (0..<8).map { UInt8(truncatingIfNeeded: sector >> (8 * UInt64($0))) } +
            (0..<4).map { UInt8(truncatingIfNeeded: count >> (8 * UInt32($0))) } +
            (0..<4).map { UInt8(truncatingIfNeeded: flags >> (8 * UInt32($0))) }
        }
        for (n, (type, data)) in [(UInt32(4), [UInt8]()), (11, segment(0, 8, 0)), (13, segment(16, 8, 0))].enumerated() {
            var h = [UInt8](repeating: 0, count: 16)
            h[0] = UInt8(type)
            try memory.write(h, at: 0x310000)
            var bufs: [TestVirtqueueDriver.Buf] = [.init(address: 0x310000, length: 16, writable: false)]
            if !data.isEmpty { try memory.write(data, at: 0x311000); bufs.append(.init(address: 0x311000, length: 16, writable: false)) }
            let status = 0x210020 + UInt64(n)
            try memory.write([0xEE], at: status)
            bufs.append(.init(address: status, length: 1, writable: true))
            try lock.withLock {
                let q = drv.queues[0]
                let old = q.availIdx
                try q.add(bufs)
                if try q.kickNeeded(oldAvail: old) { drv.kick(0) }
            }
            XCTAssertEqual(waitForStatus(status), 0, "request type \(type)")
        }
        let after = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(after[8192..<12288], Data(count: 4096), "write-zeroes of sectors 16-23")
        XCTAssertEqual(after[4096..<8192], Data(repeating: 0xA1, count: 4096))
        t.runSync { XCTAssertEqual(executor.ringOperations, 5) }
    }
}

/// Messages recorded under the test's big lock (the iothread injects with it held).
final class LockedMSIController: MSIController, @unchecked Sendable {
    var messages: [(UInt64, UInt32)] = []
    func signalMSI(address: UInt64, data: UInt32) { messages.append((address, data)) }
}
