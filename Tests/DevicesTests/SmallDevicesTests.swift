import Devices
import Foundation
import XCTest

final class DebugExitTests: XCTestCase {
    func testStatusComputation() {
        var statuses: [Int32] = []
        let dev = DebugExit { statuses.append($0) }
        dev.outb(0, 0)
        dev.outb(0, 1)
        dev.out(0, width: 2, 0x10)
        dev.out(0, width: 4, 0x7FFF_FFFF)
        XCTAssertEqual(statuses, [1, 3, 0x21, -1])
        XCTAssertEqual(dev.inp(0, width: 4), 0)
        XCTAssertEqual(DebugExit.status(forWrittenValue: 0x31), 0x63)
    }
}

final class ACPIPMRegistersTests: XCTestCase {
    var sci: RecordingInterruptLine!
    var powerOffs = 0
    var pm: ACPIPMRegisters!

    override func setUp() {
        sci = RecordingInterruptLine()
        powerOffs = 0
        pm = ACPIPMRegisters(sci: sci, onPowerOff: { [unowned self] in self.powerOffs += 1 })
    }

    func testSCIEnabledAndS5PowersOff() {
        XCTAssertEqual(pm.inp(4, width: 2) & 1, 1, "SCI_EN always reads 1")
        pm.out(4, width: 2, 3 << 10 | 1 << 13) // S3: ignored
        XCTAssertEqual(powerOffs, 0)
        XCTAssertEqual(pm.inp(4, width: 2), 3 << 10 | 1, "SLP_EN is write-only")
        pm.out(4, width: 2, 5 << 10 | 1 << 13 | 1)
        XCTAssertEqual(powerOffs, 1)
        // A byte write to the high half (as some guests do) works too.
        pm.outb(5, UInt8((5 << 2) | (1 << 5)))
        XCTAssertEqual(powerOffs, 2)
        pm.out(4, width: 2, 5 << 10) // SLP_TYP without SLP_EN: nothing
        XCTAssertEqual(powerOffs, 2)
    }

    func testPowerButtonAndSCILevel() {
        pm.pressPowerButton()
        XCTAssertFalse(sci.asserted, "PWRBTN_EN clear: no SCI")
        XCTAssertEqual(pm.inp(0, width: 2) & 0x100, 0x100)
        pm.out(2, width: 2, 0x100)
        XCTAssertTrue(sci.asserted)
        XCTAssertEqual(pm.inp(2, width: 2), 0x100)
        pm.out(0, width: 2, 0x0001) // clearing another bit leaves it
        XCTAssertTrue(sci.asserted)
        pm.out(0, width: 2, 0x0100) // write 1 to clear
        XCTAssertFalse(sci.asserted)
        XCTAssertEqual(pm.inp(0, width: 2), 0)
        pm.pressPowerButton()
        XCTAssertTrue(sci.asserted)
        pm.out(0, width: 4, 0x0000_0100) // dword write to STS+EN clears STS and EN
        XCTAssertFalse(sci.asserted)
        XCTAssertEqual(sci.levels, [true, false, true, false])
    }

    func testTimerIsMonotonicAndRunsAt3_58MHz() {
        var last = pm.inp(8, width: 4)
        for _ in 0..<1000 {
            let v = pm.inp(8, width: 4)
            XCTAssertGreaterThanOrEqual(v, last)
            last = v
        }
        let a = pm.inp(8, width: 4)
        let start = DispatchTime.now().uptimeNanoseconds
        usleep(100_000)
        let b = pm.inp(8, width: 4)
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let rate = Double(b &- a) / elapsed
        XCTAssertEqual(rate, 3_579_545, accuracy: 3_579_545 * 0.05)
        XCTAssertEqual(pm.inp(0x0C, width: 1), 0xFF, "past the block")
    }
}

final class ResetControlRegisterTests: XCTestCase {
    func testResetOnRSTCPU() {
        var resets = 0
        let rcr = ResetControlRegister { resets += 1 }
        rcr.outb(0, 0x02)
        XCTAssertEqual(resets, 0)
        XCTAssertEqual(rcr.inb(0), 0x02)
        rcr.outb(0, 0x06)
        XCTAssertEqual(resets, 1)
        XCTAssertEqual(rcr.inb(0), 0x06)
        rcr.outb(0, 0x0F)
        XCTAssertEqual(resets, 2)
        XCTAssertEqual(rcr.inb(0), 0x0E, "bit 0 does not read back")
        rcr.reset()
        XCTAssertEqual(rcr.inb(0), 0)
    }
}

final class PCTestDeviceTests: XCTestCase {
    func testIOPortLaneSemantics() {
        let dev = PCTestDevice()
        let port = dev.ioport
        port.out(0, width: 4, 0x1234_5678)
        XCTAssertEqual(port.inp(0, width: 4), 0x1234_5678)
        XCTAssertEqual(port.inp(1, width: 1), 0x56)
        XCTAssertEqual(port.inp(2, width: 2), 0x1234)
        port.out(2, width: 2, 0xABCD)
        XCTAssertEqual(dev.ioportData, 0xABCD_5678)
        port.out(3, width: 1, 0xEF)
        XCTAssertEqual(port.inp(0, width: 4), 0xEFCD_5678)
        // The byte window shares the register.
        let bytes = dev.ioportByte
        XCTAssertEqual(bytes.inp(0, width: 4), 0xEFCD_5678)
        bytes.out(1, width: 1, 0x00)
        XCTAssertEqual(port.inp(0, width: 4), 0xEFCD_0078)
        // Lanes past the register are dropped and read 0.
        port.out(2, width: 4, 0xFFFF_FFFF)
        XCTAssertEqual(dev.ioportData, 0xFFFF_0078)
        XCTAssertEqual(port.inp(3, width: 4), 0xFF)
    }

    func testIOMemAndBuses() throws {
        var irqs: [(Int, Bool)] = []
        let dev = PCTestDevice { irqs.append(($0, $1)) }
        let pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
        try dev.attach(pio: pio, mmio: mmio)

        var v: UInt64 = 0x0102_0304_0506_0708
        withUnsafeBytes(of: &v) { _ = mmio.write(PCTestDevice.iomemAddress + 0x100, data: $0) }
        var out = [UInt8](repeating: 0, count: 2)
        out.withUnsafeMutableBytes { _ = mmio.read(PCTestDevice.iomemAddress + 0x101, data: $0) }
        XCTAssertEqual(out, [0x07, 0x06])

        let iomem = dev.iomem
        iomem.out(PCTestDevice.iomemSize - 2, width: 4, 0xAABB_CCDD) // runs past the end
        XCTAssertEqual(iomem.inp(PCTestDevice.iomemSize - 2, width: 4), 0xCCDD)
        XCTAssertEqual(iomem.inp(UInt64.max, width: 8), 0)

        var word: UInt32 = 0xCAFE_F00D
        withUnsafeBytes(of: &word) { _ = pio.write(0xE0, data: $0) }
        var back: UInt16 = 0
        withUnsafeMutableBytes(of: &back) { _ = pio.read(0xEA, data: $0) }
        XCTAssertEqual(back, 0xCAFE)

        var one: UInt8 = 1
        withUnsafeBytes(of: &one) { _ = pio.write(0x2004, data: $0) }
        one = 0
        withUnsafeBytes(of: &one) { _ = pio.write(0x2004, data: $0) }
        XCTAssertEqual(irqs.map { $0.0 }, [4, 4])
        XCTAssertEqual(irqs.map { $0.1 }, [true, false])
        var flush: UInt32 = 0x1000
        withUnsafeBytes(of: &flush) { XCTAssertTrue(pio.write(0xE4, data: $0)) }
    }
}
