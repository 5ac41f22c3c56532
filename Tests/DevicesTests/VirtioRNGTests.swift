@testable import Devices
import Memory
import XCTest

final class VirtioRNGTests: XCTestCase {
    func testFillsWritableBuffers() throws {
        let memory = try makeGuestMemory()
        let pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
        let bridge = PCIHostBridge(pio: pio, mmio: mmio)
        let msi = RecordingMSIController()
        let dev = VirtioPCIDevice(device: VirtioRNG(), memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        XCTAssertEqual(drv.cfg(0, 4), 0x1044_1AF4)
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: 2)
        try drv.setUpQueues(memory: memory, count: 1, msix: true)
        drv.setStatus(0x0F)
        try memory.write([UInt8](repeating: 0, count: 64), at: 0x200000)
        try drv.queues[0].add([.init(address: 0x200000, length: 64, writable: true)])
        drv.kick(0)
        let used = try drv.queues[0].harvest()
        XCTAssertEqual(used.first?.1, 64)
        XCTAssertNotEqual(try memory.readBytes(at: 0x200000, count: 64), [UInt8](repeating: 0, count: 64))
        XCTAssertEqual(msi.messages.last?.1, 0x41)
    }
}
