import Block
@testable import Devices
import Foundation
import Loop
import Memory
import XCTest

/// Keel's vhost-user front-end (VhostUserDevice behind VirtioPCIDevice, driven like Linux does)
/// and back-end (VhostUserBackendServer serving VirtioBlock on its own loop thread) in one
/// process: the device's view comes from the back-end, requests run on the back-end, and
/// requests in flight when the connection dies are taken again by the next connection.
final class VhostUserTests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    var msi = RecordingMSIController()
    var backendLoop: EventLoop!
    var server: VhostUserBackendServer!
    var executor = DeferredExecutor()
    var disk = MemoryBlockDevice(size: 1 << 20)
    var socketPath = ""
    var loopThread: Thread?

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
        for i in 0..<disk.bytes.count { disk.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 9) }
        socketPath = "/tmp/keel-vhu-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        backendLoop = try EventLoop()
        var c = VirtioBlock.Configuration(); c.queueSize = 256; c.serial = "VHU"
        server = try VhostUserBackendServer(device: VirtioBlock(backend: disk, configuration: c, executor: executor), socketPath: socketPath, loop: backendLoop)
        server.log = { _ in }
        try server.start()
        let loop = backendLoop!
        let t = Thread { loop.run() }
        t.start()
        loopThread = t
    }

    override func tearDownWithError() throws {
        onBackend { self.server.stop() }
        backendLoop.stop()
        usleep(50_000)
    }

    /// Runs `work` on the back-end's loop thread and waits for it.
    func onBackend<T>(_ work: @escaping () -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        var result: T?
        backendLoop.post { result = work(); done.signal() }
        done.wait()
        return result!
    }

    func waitUntil(_ what: String, _ condition: @escaping () -> Bool) {
        let deadline = Date().addingTimeInterval(5)
        while !onBackend(condition) {
            guard Date() < deadline else { XCTFail("timed out waiting for \(what)"); return }
            usleep(2_000)
        }
    }

    func makeFrontend() throws -> (VhostUserDevice, VirtioPCIDevice, TestVirtioPCIDriver) {
        let device = try VhostUserDevice(deviceType: 2, pciClassCode: 0x01_8000, configSize: 60, configOverrides: [(34, [1, 0])],
                                         queueCount: 1, queueSize: 256, frontend: VhostUserFrontend(endpoint: .connect(socketPath)),
                                         memory: memory, loop: try EventLoop())
        device.log = { _ in }
        let dev = VirtioPCIDevice(device: device, memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: 2)
        try drv.setUpQueues(memory: memory, count: 1, msix: true)
        drv.queues[0].eventIndex = true
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
        return (device, dev, drv)
    }

    /// Adds a read of `sectors` at `sector` into 0x200000 + 0x10000 * slot.
    func addRead(_ drv: TestVirtioPCIDriver, slot: UInt64, sector: UInt64, sectors: UInt32) throws -> UInt16 {
        let base = 0x200000 + 0x10000 * slot
        var header = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 { header[8 + i] = UInt8(truncatingIfNeeded: sector >> (8 * UInt64(i))) }
        try memory.write(header, at: base)
        try memory.write([0xEE], at: base + 0xF000)
        return try drv.queues[0].add([.init(address: base, length: 16, writable: false),
                                      .init(address: base + 0x1000, length: sectors * 512, writable: true),
                                      .init(address: base + 0xF000, length: 1, writable: true)])
    }

    func testDeviceViewComesFromTheBackEnd() throws {
        let (device, _, drv) = try makeFrontend()
        XCTAssertEqual(drv.cfg(0, 4), 0x1042_1AF4, "virtio-blk")
        XCTAssertEqual(mmio.inp(drv.deviceCfg, width: 8), (1 << 20) / 512, "capacity from GET_CONFIG")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 34, width: 2), 1, "num_queues is the front-end's")
        XCTAssertEqual(device.deviceFeatures & (1 << 30), 0, "VHOST_USER_F_PROTOCOL_FEATURES is not the guest's")
        XCTAssertNotEqual(device.frontend.protocolFeatures & VhostUser.protocolInflightSHMFD, 0)
        XCTAssertTrue(onBackend { self.server.isProcessing }, "DRIVER_OK handed the ring over")
    }

    func testReadRunsOnTheBackEndAndLandsInGuestMemory() throws {
        let (_, _, drv) = try makeFrontend()
        let head = try addRead(drv, slot: 0, sector: 3, sectors: 2)
        drv.kick(0)
        waitUntil("the back-end to take the request") { self.executor.queued.count == 1 }
        onBackend { self.executor.runAll() }
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(used.map(\.0), [head])
        XCTAssertEqual(used.first?.1, 1025)
        XCTAssertEqual(try memory.load(UInt8.self, at: 0x20F000), 0, "status OK")
        XCTAssertEqual(try memory.readBytes(at: 0x201000, count: 1024), Array(disk.bytes[1536..<2560]))
    }

    /// Three reads are taken, the middle one finishes first, the connection dies, the front-end
    /// reconnects: the back-end takes exactly the two unfinished ones again (from the inflight
    /// region; the used index alone would repeat the middle one and lose the first), and each
    /// request is answered once.
    func testRequestsInFlightAtDisconnectAreTakenAgain() throws {
        let (device, dev, drv) = try makeFrontend()
        let heads = try (0..<3).map { try addRead(drv, slot: UInt64($0), sector: UInt64(10 * $0), sectors: 1) }
        drv.kick(0)
        waitUntil("three requests in flight") { self.executor.queued.count == 3 }
        onBackend { let (w, c) = self.executor.queued.remove(at: 1); c(w()) }
        XCTAssertEqual(try drv.queues[0].harvest().map(\.0), [heads[1]])
        device.connectionLost(VhostUserError("test: back-end gone"))
        waitUntil("the back-end to notice") { !self.server.isConnected }
        // The old requests finish after the connection died: their completions must go nowhere.
        onBackend { self.executor.runAll() }
        XCTAssertEqual(try memory.load(UInt16.self, at: drv.queues[0].used + 2), 1)
        device.tryReconnect()
        XCTAssertTrue(device.frontend.isConnected)
        waitUntil("the two to be taken again") { self.executor.queued.count == 2 }
        onBackend { self.executor.runAll() }
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(used.map(\.0), [heads[0], heads[2]], "each unfinished request answered once, oldest first")
        for i in 0..<3 {
            let base = 0x200000 + 0x10000 * UInt64(i)
            XCTAssertEqual(try memory.load(UInt8.self, at: base + 0xF000), 0)
            XCTAssertEqual(try memory.readBytes(at: base + 0x1000, count: 512), Array(disk.bytes[(5120 * i)..<(5120 * i + 512)]))
        }
        // And the ring goes on from there.
        let next = try addRead(drv, slot: 4, sector: 1, sectors: 1)
        drv.kick(0)
        waitUntil("a new request") { self.executor.queued.count == 1 }
        onBackend { self.executor.runAll() }
        XCTAssertEqual(try drv.queues[0].harvest().map(\.0), [next])
        _ = dev
    }
}

/// Records ioeventfd registrations; refuses MSI routes (the ioctl fallback delivers).
final class RecordingIOEventAccelerator: IOEventAccelerator {
    var ioEvents: [(fd: Int32, address: UInt64)] = []
    func addIOEvent(fd: Int32, address: UInt64, length: UInt32) throws { ioEvents.append((fd, address)) }
    func removeIOEvent(fd: Int32, address: UInt64, length: UInt32) { ioEvents.removeAll { $0.fd == fd && $0.address == address } }
    func setMSIRoute(fd: Int32, address: UInt64, data: UInt32) throws { throw VhostUserError("no routes here") }
    func removeMSIRoute(fd: Int32) {}
}

extension VhostUserTests {
    /// Under kvm the queue's notify address signals the back-end's kick eventfd itself.
    func testKVMNotifyGoesStraightToTheBackEndsKick() throws {
        let (device, dev, drv) = try makeFrontend()
        let accel = RecordingIOEventAccelerator()
        dev.ioEvents = VirtioNotifyAcceleration(accelerator: accel, loop: device.loop)
        XCTAssertEqual(accel.ioEvents.map(\.fd), [device.vhostRings.kicks[0].fd])
        XCTAssertEqual(accel.ioEvents.first?.address, dev.notifyAddress(queue: 0))
        let head = try addRead(drv, slot: 0, sector: 0, sectors: 1)
        device.vhostRings.kicks[0].signal()   // what kvm does on the guest's notify write
        waitUntil("the back-end to take the request") { self.executor.queued.count == 1 }
        onBackend { self.executor.runAll() }
        XCTAssertEqual(try drv.queues[0].harvest().map(\.0), [head])
        XCTAssertEqual(dev.statistics.trappedNotifies, 0)
        XCTAssertEqual(dev.statistics.eventFDNotifies, 0, "Keel's loop never saw the notify")
    }
}

/// Accepts MSI routes, as kvm's irqfd would.
final class RoutingIOEventAccelerator: IOEventAccelerator {
    var routes: [Int32: UInt32] = [:]
    func addIOEvent(fd: Int32, address: UInt64, length: UInt32) throws {}
    func removeIOEvent(fd: Int32, address: UInt64, length: UInt32) {}
    func setMSIRoute(fd: Int32, address: UInt64, data: UInt32) throws { routes[fd] = data }
    func removeMSIRoute(fd: Int32) { routes[fd] = nil }
}

extension VhostUserTests {
    /// Under kvm the back-end's call is the vector's irqfd; masking the vector moves it back to
    /// Keel's relay eventfd.
    func testKVMCallIsTheVectorsIRQFD() throws {
        let (device, dev, drv) = try makeFrontend()
        let accel = RoutingIOEventAccelerator()
        dev.ioEvents = VirtioNotifyAcceleration(accelerator: accel, loop: device.loop)
        guard let irqfd = dev.interruptEventFD(queue: 0) else { return XCTFail("queue 0's vector has no irqfd") }
        XCTAssertEqual(accel.routes[irqfd.fd], 0x41, "queue 0 uses vector 1")
        irqfd.consume(); device.vhostRings.calls[0].consume()
        XCTAssertEqual(device.vhostRings.givenCalls[0], irqfd.fd)
        _ = try addRead(drv, slot: 0, sector: 0, sectors: 1)
        device.vhostRings.kicks[0].signal()
        waitUntil("the back-end to take the request") { self.executor.queued.count == 1 }
        onBackend { self.executor.runAll() }
        XCTAssertEqual(irqfd.consume(), 1, "the back-end raised the vector through the irqfd")
        XCTAssertEqual(device.vhostRings.calls[0].consume(), 0, "Keel's relay was not used")
        // Mask vector 1: the route goes, the back-end is told to call Keel instead.
        let entry = drv.msixTable + 16
        mmio.out(entry + 12, width: 4, 1)
        XCTAssertNil(dev.interruptEventFD(queue: 0))
        XCTAssertEqual(device.vhostRings.givenCalls[0], device.vhostRings.calls[0].fd)
    }
}

extension VhostUserTests {
    /// A ring the guest broke (its avail index a thousand entries ahead of a 256-entry ring)
    /// stops in the back-end, which says so on the ring's SET_VRING_ERR eventfd; the front-end
    /// counts each report and logs only the first.
    func testBackEndReportsABrokenRingOnItsErrorEventFD() throws {
        let (device, _, drv) = try makeFrontend()
        try memory.store(UInt16(1000), at: drv.queues[0].avail + 2)
        drv.kick(0)
        let error = device.vhostRings.errors[0]
        var p = pollfd(fd: error.fd, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 5000), 1, "the back-end did not signal the ring's error eventfd")
        XCTAssertFalse(onBackend { self.server.isProcessing }, "the back-end stopped the broken ring")
        var lines: [String] = []
        device.log = { lines.append($0) }
        error.consume()
        device.vhostRings.errorReported?(0)
        device.vhostRings.errorReported?(0)
        XCTAssertEqual(device.ringErrors, 2)
        XCTAssertEqual(lines, ["the back-end reported an error on ring 0 (the guest's ring is malformed)"])
    }
}

extension VhostUserTests {
    /// QMP stop stops the back-end's ring (GET_VRING_BASE): a request the guest makes meanwhile
    /// waits; cont hands the ring over again and the request is served.
    func testStopAndContStopAndRestartTheBackEndsRing() throws {
        let (_, dev, drv) = try makeFrontend()
        dev.setQueuesPaused(true)
        waitUntil("the back-end to stop the ring") { !self.server.rings[0].started }
        let head = try addRead(drv, slot: 0, sector: 5, sectors: 1)
        drv.kick(0)
        usleep(100_000)
        XCTAssertEqual(onBackend { self.executor.queued.count }, 0, "a stopped ring takes nothing")
        dev.setQueuesPaused(false)
        waitUntil("the back-end to take the request after cont") { self.executor.queued.count == 1 }
        onBackend { self.executor.runAll() }
        XCTAssertEqual(try drv.queues[0].harvest().map(\.0), [head])
    }
}
