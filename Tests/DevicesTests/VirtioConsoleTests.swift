@testable import Devices
import Memory
import XCTest

extension RecordingChardev {
    /// Host input, as much as the frontend takes now.
    @discardableResult
    func type(_ s: String) -> Int {
        let bytes = Array(s.utf8)
        let n = min(bytes.count, frontend?.receiveCapacity() ?? 0)
        bytes.prefix(n).withUnsafeBytes { frontend?.receive($0) }
        return n
    }
}

final class VirtioConsoleTests: XCTestCase {
    var memory: GuestMemory!
    var chardev: RecordingChardev!
    var dev: VirtioPCIDevice!
    var drv: TestVirtioPCIDriver!
    let msi = RecordingMSIController()

    func bringUp(multiport: Bool) throws {
        memory = try makeGuestMemory()
        let pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
        let bridge = PCIHostBridge(pio: pio, mmio: mmio)
        chardev = RecordingChardev()
        dev = VirtioPCIDevice(device: VirtioConsole(chardevs: [chardev]), memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        XCTAssertEqual(drv.cfg(0, 4), 0x1043_1AF4)
        XCTAssertTrue(drv.negotiate { $0 & (multiport ? ~0 : ~VirtioConsole.featureMultiport) })
        drv.enableMSIX(vectors: 5)
        try drv.setUpQueues(memory: memory, count: 4, msix: true)
        drv.setStatus(0x0F)
    }

    func control(_ id: UInt32, _ event: UInt16, _ value: UInt16) -> [UInt8] {
        var m: [UInt8] = []
        for i in 0..<4 { m.append(UInt8(truncatingIfNeeded: id >> (8 * UInt32(i)))) }
        return m + [UInt8(event & 0xFF), UInt8(event >> 8), UInt8(value & 0xFF), UInt8(value >> 8)]
    }

    func send(_ bytes: [UInt8], at address: UInt64) throws {
        try memory.write(bytes, at: address)
        try drv.queues[3].add([.init(address: address, length: UInt32(bytes.count), writable: false)])
        drv.kick(3)
        _ = try drv.queues[3].harvest()
    }

    /// Control messages the device sent into the buffers at 0x300000 + 16 i.
    func received() throws -> [[UInt8]] {
        try drv.queues[2].harvest().map { head, length in
            XCTAssertEqual(length, 8)
            return try memory.readBytes(at: 0x300000 + 16 * UInt64(head), count: 8)
        }
    }

    func testSinglePortWithoutMultiport() throws {
        try bringUp(multiport: false)
        XCTAssertEqual(chardev.type("early"), 5, "input before any receive buffer is held")
        try drv.queues[0].add([.init(address: 0x200000, length: 3, writable: true)])
        try drv.queues[0].add([.init(address: 0x200010, length: 64, writable: true)])
        drv.kick(0)
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(used.map(\.1), [3, 2])
        XCTAssertEqual(try memory.readBytes(at: 0x200000, count: 3) + memory.readBytes(at: 0x200010, count: 2), Array("early".utf8))
        XCTAssertGreaterThan(chardev.resumeCount, 0)

        try memory.write(Array("hvc0 says hi".utf8), at: 0x210000)
        try drv.queues[1].add([.init(address: 0x210000, length: 5, writable: false), .init(address: 0x210004, length: 8, writable: false)])
        drv.kick(1)
        XCTAssertEqual(try drv.queues[1].harvest().count, 1)
        XCTAssertEqual(String(decoding: chardev.written, as: UTF8.self), "hvc0 " + " says hi")
        // The control queues do not exist for this driver: kicks there do nothing.
        drv.kick(3)
        XCTAssertEqual(dev.status & Virtio.statusNeedsReset, 0)
        // emerg_wr reaches port 0 at once.
        drv.mmio.out(drv.deviceCfg + 8, width: 4, UInt64(UInt8(ascii: "!")))
        XCTAssertEqual(chardev.written.last, UInt8(ascii: "!"))
    }

    func testMultiportHandshakeAndHostileControlMessages() throws {
        try bringUp(multiport: true)
        XCTAssertEqual(drv.mmio.inp(drv.deviceCfg + 4, width: 4), 1, "max_nr_ports")
        for i in 0..<8 { try drv.queues[2].add([.init(address: 0x300000 + 16 * UInt64(i), length: 8, writable: true)]) }
        drv.kick(2)
        // Malformed or meaningless messages are ignored.
        try send([0, 0, 0, 0], at: 0x400000)
        try send(control(0, 0xFFFF, 1), at: 0x400010)
        try send(control(99, 3, 1), at: 0x400020)
        try send(control(0, 3, 1), at: 0x400030) // PORT_READY before DEVICE_READY: no port yet
        XCTAssertEqual(try received().count, 0, "nothing answered before DEVICE_READY")
        try send(control(0xFFFF_FFFF, 0, 1), at: 0x400040)
        XCTAssertEqual(try received(), [control(0, 1, 1)], "PORT_ADD for port 0")
        try send(control(0xFFFF_FFFF, 0, 1), at: 0x400050)
        XCTAssertEqual(try received(), [], "a second DEVICE_READY adds nothing")
        try send(control(0, 3, 1), at: 0x400060)
        XCTAssertEqual(try received(), [control(0, 4, 1), control(0, 6, 1)], "CONSOLE_PORT, then PORT_OPEN")
        try send(control(0, 3, 1), at: 0x400070)
        XCTAssertEqual(try received(), [], "a port gets ready once")
        try send(control(0, 6, 1), at: 0x400080)
        XCTAssertEqual(dev.status & Virtio.statusNeedsReset, 0)

        // A receive chain with no writable buffer takes nothing; a bad transmit chain is a reset.
        try drv.queues[0].add([.init(address: 0x200000, length: 8, writable: false)])
        drv.kick(0)
        chardev.type("x")
        XCTAssertEqual(try drv.queues[0].harvest().map(\.1), [0])
        try drv.queues[1].add([.init(address: 0x7FFF_0000_0000, length: 8, writable: false)])
        drv.kick(1)
        XCTAssertNotEqual(dev.status & Virtio.statusNeedsReset, 0)
    }
}
