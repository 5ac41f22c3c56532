@testable import Devices
import Loop
import Memory
import Net
import XCTest

/// A backend that records what the NIC sends and lets the test hand it frames, refuse sends
/// (`.wouldBlock`) and watch receive being switched off and on.
final class FakeNetBackend: NetBackend {
    let vnetHeaderLength: Int
    let supportedOffloads: NetOffloads
    var offloads: NetOffloads = []
    var sent: [[UInt8]] = []
    var sendAttempts = 0
    var blockSends = false
    var receiveEnabled = true
    var receiveEnabledChanges: [Bool] = []
    var isLinkUp = true
    var attached = false
    weak var receiver: NetReceiver?

    init(vnetHeaderLength: Int = 0, supportedOffloads: NetOffloads = []) {
        self.vnetHeaderLength = vnetHeaderLength
        self.supportedOffloads = supportedOffloads
    }

    func setOffloads(_ o: NetOffloads) throws { offloads = o }
    func attach(to loop: EventLoop, receiver: NetReceiver) throws { self.receiver = receiver; attached = true }
    func detach() { attached = false; receiver = nil }
    func setReceiveEnabled(_ enabled: Bool) { receiveEnabled = enabled; receiveEnabledChanges.append(enabled) }

    func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult {
        sendAttempts += 1
        if blockSends { return .wouldBlock }
        var frame: [UInt8] = []
        for s in segments { frame += UnsafeRawBufferPointer(start: s.base, count: s.count) }
        sent.append(frame)
        return .sent
    }

    /// Offers a frame as the host side would; the NIC's answer.
    func inject(_ frame: [UInt8]) -> Bool {
        guard let receiver else { XCTFail("backend not attached"); return false }
        return frame.withUnsafeBytes { receiver.receive($0) }
    }
}

/// A virtio-net-pci on a PCI bus with Linux's probe sequence driving it.
final class VirtioNetHarness {
    let memory: GuestMemory
    let pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    let bridge: PCIHostBridge
    let msi = RecordingMSIController()
    let loop: EventLoop
    let backends: [FakeNetBackend]
    let net: VirtioNet
    let transport: VirtioPCIDevice
    let driver: TestVirtioPCIDriver
    var features: UInt64 = 0
    /// Guest buffers come from here up.
    var nextBuffer: UInt64 = 0x40_0000

    init(backends: [FakeNetBackend], multiqueue: Bool = true, mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56]) throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        loop = try EventLoop()
        self.backends = backends
        var c = VirtioNet.Configuration(mac: mac)
        c.multiqueue = multiqueue
        net = try VirtioNet(backends: backends, configuration: c, loop: loop)
        transport = VirtioPCIDevice(device: net, memory: memory, msiController: msi)
        let slot = try bridge.plug(transport)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        driver = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        driver.findCapabilities()
    }

    /// Negotiates `accept(offered)`, sets up `queues` queues and DRIVER_OK.
    func start(queues: Int = 3, accept: (UInt64) -> UInt64 = { $0 }) throws {
        XCTAssertTrue(driver.negotiate { offered in
            let chosen = accept(offered)
            self.features = chosen
            return chosen
        })
        driver.enableMSIX(vectors: queues + 1)
        try driver.setUpQueues(memory: memory, count: queues, msix: true)
        driver.setStatus(0x0F)
        XCTAssertEqual(driver.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
    }

    func buffer(_ bytes: [UInt8]) throws -> UInt64 {
        let a = nextBuffer
        nextBuffer += (UInt64(max(bytes.count, 1)) + 63) & ~63
        try memory.write(bytes, at: a)
        return a
    }

    func buffer(zeroes n: Int) throws -> UInt64 { try buffer([UInt8](repeating: 0, count: n)) }

    /// A transmit chain: the 12-byte header then the frame in pieces.
    @discardableResult
    func transmit(_ frame: [UInt8], queue: Int = 1, header: [UInt8] = [UInt8](repeating: 0, count: 12), split: Int? = nil) throws -> UInt16 {
        var bufs = [TestVirtqueueDriver.Buf(address: try buffer(header), length: UInt32(header.count), writable: false)]
        let cut = min(split ?? frame.count, frame.count)
        bufs.append(.init(address: try buffer(Array(frame[..<cut])), length: UInt32(cut), writable: false))
        if cut < frame.count {
            bufs.append(.init(address: try buffer(Array(frame[cut...])), length: UInt32(frame.count - cut), writable: false))
        }
        return try driver.queues[queue].add(bufs)
    }

    /// Posts a receive buffer; returns (head, guest address).
    func postReceive(_ length: Int, queue: Int = 0) throws -> (UInt16, UInt64) {
        let a = try buffer(zeroes: length)
        let head = try driver.queues[queue].add([.init(address: a, length: UInt32(length), writable: true)])
        return (head, a)
    }

    /// A control command: class, command, data; returns the ack byte (nil if none written).
    func control(_ cls: UInt8, _ cmd: UInt8, _ data: [UInt8], queue: Int = 2, ackLength: UInt32 = 1) throws -> UInt8? {
        let ackAddress = try buffer([0xEE])
        var bufs = [TestVirtqueueDriver.Buf(address: try buffer([cls, cmd]), length: 2, writable: false)]
        if !data.isEmpty { bufs.append(.init(address: try buffer(data), length: UInt32(data.count), writable: false)) }
        if ackLength > 0 { bufs.append(.init(address: ackAddress, length: ackLength, writable: true)) }
        try driver.queues[queue].add(bufs)
        driver.kick(queue)
        let used = try driver.queues[queue].harvest()
        XCTAssertEqual(used.count, 1, "one control command, one used entry")
        guard let u = used.first, u.1 > 0 else { return nil }
        return try memory.load(UInt8.self, at: ackAddress)
    }

    func config(_ offset: UInt64, _ width: Int) -> UInt64 { mmio.inp(driver.deviceCfg + offset, width: width) }
}

/// An Ethernet frame to `destination` with a counting payload.
func ethernetFrame(to destination: [UInt8], length: Int, seed: UInt8 = 0) -> [UInt8] {
    var f = destination + [0x02, 0, 0, 0, 0, 1, 0x08, 0x00]
    while f.count < length { f.append(UInt8(truncatingIfNeeded: f.count) &+ seed) }
    return f
}
