@testable import Devices
import XCTest

/// A BAR's registers that remember the last write (to see which address reaches them).
final class RecordingRegion: BusDevice {
    var lastWrite: (UInt64, UInt64)?
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0xA5A5_0000 | offset) }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) { lastWrite = (offset, data.littleEndianValue) }
}

final class TestPCIDevice: PCIDevice {
    let pci = PCIFunction(vendorID: 0x1234, deviceID: 0x5678, classCode: 0xFF_0000, revision: 3, interruptPin: 1)
    let io = RecordingRegion(), mem32 = RecordingRegion(), mem64 = RecordingRegion(), msixRegion: PCIMSIXRegion
    let msix: PCIMSIX
    var resets = 0
    init() {
        pci.setBar(0, PCIBar(kind: .io, size: 32, region: io, name: "io"))
        pci.setBar(1, PCIBar(kind: .memory32, size: 0x1000, region: mem32, name: "mem32"))
        pci.setBar(2, PCIBar(kind: .memory64, size: 0x4000, prefetchable: true, region: mem64, name: "mem64"))
        msix = PCIMSIX(function: pci, vectors: 3, bar: 4)
        msixRegion = PCIMSIXRegion(msix)
        pci.setBar(4, PCIBar(kind: .memory32, size: msix.barSize, region: msixRegion, name: "msix"))
    }
    func pciReset() { resets += 1 }
}

final class RecordingMSIController: MSIController {
    var messages: [(UInt64, UInt32)] = []
    func signalMSI(address: UInt64, data: UInt32) { messages.append((address, data)) }
}

final class PCITests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    let ecam: UInt64 = 0xE000_0000

    override func setUp() {
        pio = Bus(name: "pio"); mmio = Bus(name: "mmio")
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try! pio.insert(RecordingRegion(), base: 0xCF9, size: 1, name: "reset-control")
        try! bridge.attach(ecamBase: ecam, busCount: 1)
    }

    func cf8(_ bus: Int, _ dev: Int, _ fn: Int, _ reg: Int) -> UInt64 {
        0x8000_0000 | UInt64(bus) << 16 | UInt64(dev) << 11 | UInt64(fn) << 8 | UInt64(reg & 0xFC)
    }
    func type1Read(_ dev: Int, _ reg: Int, width: Int = 4) -> UInt64 {
        pio.out(0xCF8, width: 4, cf8(0, dev, 0, reg))
        return pio.inp(0xCFC + UInt64(reg & 3), width: width)
    }
    func type1Write(_ dev: Int, _ reg: Int, width: Int = 4, _ v: UInt64) {
        pio.out(0xCF8, width: 4, cf8(0, dev, 0, reg))
        pio.out(0xCFC + UInt64(reg & 3), width: width, v)
    }
    func ecamAddress(_ dev: Int, _ reg: Int) -> UInt64 { ecam + UInt64(dev) << 15 + UInt64(reg) }

    func testHostBridgeIdentityThroughBothMechanisms() {
        XCTAssertEqual(type1Read(0, 0), 0x29C0_8086)
        XCTAssertEqual(type1Read(0, 0x0A, width: 2), 0x0600)
        XCTAssertEqual(mmio.inp(ecamAddress(0, 0), width: 4), 0x29C0_8086)
        // Absent devices and functions read all ones.
        XCTAssertEqual(type1Read(5, 0), 0xFFFF_FFFF)
        XCTAssertEqual(mmio.inp(ecamAddress(7, 0), width: 2), 0xFFFF)
        XCTAssertEqual(mmio.inp(ecam + (1 << 12), width: 4), 0xFFFF_FFFF) // function 1
        // CONFIG_ADDRESS reads back; with the enable bit clear CONFIG_DATA reads all ones.
        pio.out(0xCF8, width: 4, 0x8000_0010)
        XCTAssertEqual(pio.inp(0xCF8, width: 4), 0x8000_0010)
        pio.out(0xCF8, width: 4, 0x0000_0000)
        XCTAssertEqual(pio.inp(0xCFC, width: 4), 0xFFFF_FFFF)
    }

    func testResetControlStaysOnItsOwnPort() {
        // Linux's type 1 probe writes a byte to 0xCFB and expects CONFIG_ADDRESS to be untouched by it.
        pio.out(0xCF8, width: 4, 0x8000_0000)
        pio.outb(0xCFB, 0x01)
        XCTAssertEqual(pio.inp(0xCF8, width: 4), 0x8000_0000)
        let r = pio.ranges.first { $0.base == 0xCF9 }
        XCTAssertEqual(r?.name, "reset-control")
    }

    func testBarSizingAndDecodeMapping() throws {
        let d = TestPCIDevice()
        let slot = try bridge.plug(d)
        XCTAssertEqual(slot, 1)
        // Sizing: write all ones, read back the mask with the type bits.
        type1Write(slot, 0x10, 0xFFFF_FFFF)
        XCTAssertEqual(type1Read(slot, 0x10), 0xFFFF_FFE1)
        type1Write(slot, 0x14, 0xFFFF_FFFF)
        XCTAssertEqual(type1Read(slot, 0x14), 0xFFFF_F000)
        type1Write(slot, 0x18, 0xFFFF_FFFF)
        type1Write(slot, 0x1C, 0xFFFF_FFFF)
        XCTAssertEqual(type1Read(slot, 0x18), 0xFFFF_C00C)
        XCTAssertEqual(type1Read(slot, 0x1C), 0xFFFF_FFFF)
        XCTAssertEqual(type1Read(slot, 0x20), 0, "BAR 3 is the upper half of BAR 2")
        // Place them; nothing decodes before the command register says so.
        type1Write(slot, 0x10, 0xC000)
        type1Write(slot, 0x14, 0xC100_0000)
        type1Write(slot, 0x18, 0x0000_0000)
        type1Write(slot, 0x1C, 0x10)
        XCTAssertFalse(mmio.read(0xC100_0000, data: UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 4)))
        type1Write(slot, 0x04, width: 2, 0x3)
        XCTAssertEqual(d.pci.mappedAddresses[0], 0xC000)
        XCTAssertEqual(d.pci.mappedAddresses[1], 0xC100_0000)
        XCTAssertEqual(d.pci.mappedAddresses[2], 0x10_0000_0000)
        mmio.out(0x10_0000_0008, width: 4, 0x77)
        XCTAssertEqual(d.mem64.lastWrite?.0, 8)
        XCTAssertEqual(pio.inp(0xC004, width: 4), 0xA5A5_0004)
        // Moving a BAR remaps it; clearing memory decode unmaps all memory BARs.
        var moved: [(Int, UInt64?)] = []
        d.pci.barMoved = { moved.append(($0, $1)) }
        type1Write(slot, 0x14, 0xC200_0000)
        XCTAssertEqual(moved.last?.0, 1)
        XCTAssertEqual(moved.last?.1, 0xC200_0000)
        XCTAssertEqual(mmio.inp(0xC200_0010, width: 4), 0xA5A5_0010)
        XCTAssertEqual(mmio.inp(0xC100_0010, width: 4), 0xFFFF_FFFF)
        type1Write(slot, 0x04, width: 2, 0x1)
        XCTAssertNil(d.pci.mappedAddresses[1])
        XCTAssertEqual(d.pci.mappedAddresses[0], 0xC000)
        // A BAR placed over another device's range stays unmapped instead of failing.
        type1Write(slot, 0x14, UInt64(ecam))
        type1Write(slot, 0x04, width: 2, 0x3)
        XCTAssertNil(d.pci.mappedAddresses[1])
        XCTAssertEqual(mmio.inp(ecamAddress(0, 0), width: 4), 0x29C0_8086)
    }

    func testFirmwareStyleAssignmentAndReset() throws {
        let d = TestPCIDevice()
        try bridge.plug(d)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000,
                                   memory64: 0x1_0000_0000..<0x2_0000_0000)
        XCTAssertEqual(d.pci.mappedAddresses[0], 0xC000)
        XCTAssertEqual(d.pci.mappedAddresses[2], 0x1_0000_0000)
        let m32 = [d.pci.mappedAddresses[1], d.pci.mappedAddresses[4]].compactMap { $0 }
        XCTAssertEqual(m32.count, 2)
        XCTAssertTrue(m32.allSatisfy { $0 >= 0xC000_0000 && $0 % 0x1000 == 0 })
        XCTAssertNotEqual(m32[0], m32[1])
        XCTAssertTrue(d.pci.busMasterEnabled)
        bridge.reset()
        XCTAssertEqual(d.resets, 1)
        XCTAssertEqual(d.pci.command, 0)
        XCTAssertTrue(d.pci.mappedAddresses.allSatisfy { $0 == nil })
        XCTAssertEqual(d.pci.barAddress(1), 0)
    }

    func testCapabilityListAndReadOnlyHeader() throws {
        let d = TestPCIDevice()
        let slot = try bridge.plug(d)
        XCTAssertEqual(type1Read(slot, 0x06, width: 2) & 0x10, 0x10)
        let cap = Int(type1Read(slot, 0x34, width: 1))
        XCTAssertEqual(cap, 0x40)
        XCTAssertEqual(type1Read(slot, cap, width: 1), 0x11)
        XCTAssertEqual(type1Read(slot, cap + 1, width: 1), 0, "last capability")
        XCTAssertEqual(type1Read(slot, cap + 2, width: 2), 2, "table size - 1")
        XCTAssertEqual(type1Read(slot, cap + 4, width: 4), 0x0000_0004) // table at offset 0 in BAR 4
        XCTAssertEqual(type1Read(slot, cap + 8, width: 4), 0x0000_0804)
        // The identity is read-only; the interrupt line is the guest's scratch register.
        type1Write(slot, 0, 0xFFFF_FFFF)
        XCTAssertEqual(type1Read(slot, 0), 0x5678_1234)
        type1Write(slot, 0x3C, width: 1, 11)
        XCTAssertEqual(type1Read(slot, 0x3C, width: 2), 0x010B)
        // Accesses that run past the end of config space are refused, not trapped on.
        XCTAssertEqual(d.pci.configRead(offset: 4094, length: 4), ~0)
        d.pci.configWrite(offset: 4095, length: 8, value: 0)
        d.pci.configWrite(offset: -1, length: 1, value: 0)
        XCTAssertEqual(mmio.inp(ecamAddress(slot, 0xFFE), width: 4), 0xFFFF_FFFF)
    }

    func testMSIXMaskingAndPendingBits() throws {
        let d = TestPCIDevice()
        let slot = try bridge.plug(d)
        let sink = RecordingMSIController()
        d.msix.controller = sink
        XCTAssertFalse(d.msix.notify(vector: 0), "MSI-X disabled: the caller falls back to INTx")
        let ctl = 0x42
        type1Write(slot, ctl, width: 2, 0x8000 | 0x4000)  // enable + function mask
        XCTAssertTrue(d.msix.isEnabled)
        let r = d.msixRegion
        r.out(0x10, width: 4, 0xFEE0_0000); r.out(0x14, width: 4, 0); r.out(0x18, width: 4, 0x41)
        XCTAssertEqual(r.inp(0x1C, width: 4), 1, "vectors start masked")
        r.out(0x1C, width: 4, 0)
        XCTAssertTrue(d.msix.notify(vector: 1))
        XCTAssertTrue(sink.messages.isEmpty, "function mask holds the message")
        XCTAssertEqual(r.inp(0x800, width: 4), 0b10)
        type1Write(slot, ctl, width: 2, 0x8000)
        XCTAssertEqual(sink.messages.count, 1)
        XCTAssertEqual(sink.messages.first?.0, 0xFEE0_0000)
        XCTAssertEqual(sink.messages.first?.1, 0x41)
        XCTAssertEqual(r.inp(0x800, width: 4), 0)
        // Per-vector mask.
        r.out(0x1C, width: 4, 1)
        d.msix.notify(vector: 1)
        XCTAssertEqual(sink.messages.count, 1)
        XCTAssertTrue(d.msix.isPending(1))
        r.out(0x1C, width: 4, 0)
        XCTAssertEqual(sink.messages.count, 2)
        // 64-bit table access; misaligned and byte accesses are ignored; out-of-range vectors too.
        r.out(0x20, width: 8, 0x1234_FEE0_1000)
        XCTAssertEqual(d.msix.entry(2)?.address, 0x1234_FEE0_1000)
        r.out(0x21, width: 4, 0xFFFF_FFFF)
        r.outb(0x20, 0xFF)
        XCTAssertEqual(d.msix.entry(2)?.address, 0x1234_FEE0_1000)
        XCTAssertTrue(d.msix.notify(vector: 99))
        XCTAssertEqual(sink.messages.count, 2)
        // Table size and offsets are read-only.
        type1Write(slot, ctl, width: 2, 0xFFFF)
        XCTAssertEqual(type1Read(slot, ctl, width: 2), 0xC002)
    }

    func testINTxFollowsInterruptDisable() throws {
        let d = TestPCIDevice()
        let slot = try bridge.plug(d)
        let line = RecordingInterruptLine()
        d.pci.intxLine = line
        d.pci.setINTx(true)
        XCTAssertTrue(line.asserted)
        XCTAssertEqual(type1Read(slot, 0x06, width: 2) & 0x8, 0x8)
        type1Write(slot, 0x04, width: 2, 0x400)
        XCTAssertFalse(line.asserted)
        type1Write(slot, 0x04, width: 2, 0)
        XCTAssertTrue(line.asserted)
        d.pci.setINTx(false)
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(type1Read(slot, 0x06, width: 2) & 0x8, 0)
    }
}

extension Bus {
    func out(_ address: UInt64, width: Int, _ value: UInt64) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { _ = write(address, data: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }
    func outb(_ address: UInt64, _ value: UInt8) { out(address, width: 1, UInt64(value)) }
    func inp(_ address: UInt64, width: Int) -> UInt64 {
        var buf = [UInt8](repeating: 0xEE, count: width)
        buf.withUnsafeMutableBytes { _ = read(address, data: $0) }
        var v: UInt64 = 0
        for (i, b) in buf.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}
