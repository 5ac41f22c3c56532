import XCTest
@testable import Devices

final class InterruptPICTests: XCTestCase {
    var pic: PIC8259Pair!
    var outputs: [Bool] = []

    override func setUp() {
        pic = PIC8259Pair()
        outputs = []
        pic.outputChanged = { [unowned self] in self.outputs.append($0) }
    }

    func outb(_ v: UInt8, _ port: UInt16) {
        switch port {
        case 0x20, 0x21: pic.masterPorts.write8(UInt64(port - 0x20), v)
        case 0xA0, 0xA1: pic.slavePorts.write8(UInt64(port - 0xA0), v)
        case 0x4D0, 0x4D1: pic.elcrPorts.write8(UInt64(port - 0x4D0), v)
        default: XCTFail("port \(port)")
        }
    }

    func inb(_ port: UInt16) -> UInt8 {
        switch port {
        case 0x20, 0x21: return pic.masterPorts.read8(UInt64(port - 0x20))
        case 0xA0, 0xA1: return pic.slavePorts.read8(UInt64(port - 0xA0))
        default: return pic.elcrPorts.read8(UInt64(port - 0x4D0))
        }
    }

    /// arch/x86/kernel/i8259.c init_8259A(auto_eoi), then all lines unmasked.
    func linuxInit(autoEOI: Bool = false) {
        outb(0xFF, 0x21); outb(0xFF, 0xA1)
        outb(0x11, 0x20); outb(0x30, 0x21); outb(0x04, 0x21); outb(autoEOI ? 0x03 : 0x01, 0x21)
        outb(0x11, 0xA0); outb(0x38, 0xA1); outb(0x02, 0xA1); outb(0x01, 0xA1)
        outb(0x00, 0x21); outb(0x00, 0xA1)
    }

    func testLinuxProbeAndInit() {
        outb(0xFF, 0xA1)
        outb(0xA5, 0x21)                                      // probe_8259A
        XCTAssertEqual(inb(0x21), 0xA5)
        linuxInit()
        XCTAssertEqual(inb(0x21), 0)
        XCTAssertFalse(pic.hasInterrupt)
        pic.setIRQ(4, level: true)
        XCTAssertTrue(pic.hasInterrupt)
        XCTAssertEqual(outputs, [true])
        XCTAssertEqual(pic.acknowledge(), 0x34)
        XCTAssertEqual(outputs, [true, false])
        outb(0x20, 0x20)                                      // non-specific EOI
        XCTAssertEqual(pic.registers.master.isr, 0)
    }

    func testPriorityAndNesting() {
        linuxInit()
        pic.setIRQ(3, level: true)
        pic.setIRQ(1, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x31)
        XCTAssertFalse(pic.hasInterrupt)                      // IRQ 3 waits behind IRQ 1
        pic.setIRQ(0, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x30)               // IRQ 0 nests above 1
        outb(0x60, 0x20)                                      // specific EOI IRQ 0
        outb(0x61, 0x20)                                      // specific EOI IRQ 1
        XCTAssertEqual(pic.acknowledge(), 0x33)
        outb(0x20, 0x20)
        XCTAssertEqual(pic.registers.master.isr, 0)
        XCTAssertFalse(pic.hasInterrupt)
    }

    func testMaskAndReadIRRISR() {
        linuxInit()
        outb(0x20, 0x21)                                      // mask IRQ 5
        pic.setIRQ(5, level: true)
        XCTAssertFalse(pic.hasInterrupt)
        outb(0x0A, 0x20)                                      // OCW3: read IRR
        XCTAssertEqual(inb(0x20), 0x20)
        outb(0x00, 0x21)
        XCTAssertEqual(pic.acknowledge(), 0x35)
        outb(0x0B, 0x20)                                      // OCW3: read ISR
        XCTAssertEqual(inb(0x20), 0x20)
        outb(0x0A, 0x20)
        XCTAssertEqual(inb(0x20), 0)                           // edge: IRR cleared on INTA
    }

    func testCascadeThroughIRQ2() {
        linuxInit()
        pic.setIRQ(10, level: true)
        XCTAssertTrue(pic.hasInterrupt)
        XCTAssertEqual(pic.acknowledge(), 0x3A)
        XCTAssertEqual(pic.registers.master.isr, 0x04)
        XCTAssertEqual(pic.registers.slave.isr, 0x04)
        // Linux's mask_and_ack_8259A for a slave IRQ: specific EOIs to slave, then IR2 on master.
        outb(0x62, 0xA0); outb(0x62, 0x20)
        XCTAssertEqual(pic.registers.master.isr, 0)
        XCTAssertEqual(pic.registers.slave.isr, 0)
        pic.setIRQ(10, level: false)
        pic.setIRQ(10, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x3A)
        pic.setIRQ(2, level: true)                            // the cascade is not a device line
        XCTAssertEqual(pic.registers.master.irr & 0x04, 0)
    }

    func testSpuriousIRQ7AndIRQ15() {
        linuxInit()
        outb(0x20, 0x4D0)                                     // IRQ 5 level-triggered
        XCTAssertEqual(inb(0x4D0), 0x20)
        pic.setIRQ(5, level: true)
        pic.setIRQ(5, level: false)                           // gone before INTA
        XCTAssertEqual(pic.acknowledge(), 0x37)
        XCTAssertEqual(pic.registers.master.isr, 0)           // a spurious IRQ 7 sets no ISR bit
        outb(0x04, 0x4D1)                                     // IRQ 10 level
        pic.setIRQ(10, level: true)
        pic.setIRQ(10, level: false)
        XCTAssertEqual(pic.acknowledge(), 0x3F)               // spurious IRQ 15 from the slave
        XCTAssertEqual(pic.registers.slave.isr, 0)
        XCTAssertEqual(pic.registers.master.isr, 0x04)        // the master saw a real IR2
        outb(0xFF, 0x4D0)
        XCTAssertEqual(inb(0x4D0), 0xF8)                      // IRQ 0-2 are always edge
    }

    func testLevelTriggeredStaysPendingUntilDeasserted() {
        linuxInit()
        outb(0x08, 0x4D1)                                     // IRQ 11 level
        pic.setIRQ(11, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x3B)
        outb(0x63, 0xA0); outb(0x62, 0x20)
        XCTAssertEqual(pic.acknowledge(), 0x3B)               // still asserted: again
        pic.setIRQ(11, level: false)                          // the driver quiets the device
        outb(0x63, 0xA0); outb(0x62, 0x20)
        XCTAssertFalse(pic.hasInterrupt)
    }

    func testPollMode() {
        linuxInit()
        outb(0xFF, 0x21)                                      // polling works with INT masked too? no: IMR masks requests
        outb(0x00, 0x21)
        pic.setIRQ(6, level: true)
        outb(0x0C, 0x20)                                      // OCW3 poll
        XCTAssertEqual(inb(0x20), 0x86)
        XCTAssertEqual(pic.registers.master.isr, 0x40)
        outb(0x0C, 0x20)
        XCTAssertEqual(inb(0x20), 0x00)                        // nothing more
        outb(0x20, 0x20)
        XCTAssertEqual(inb(0x20), 0)                           // poll ended: reads IRR
    }

    func testAutoEOIAndRotation() {
        linuxInit(autoEOI: true)
        pic.setIRQ(3, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x33)
        XCTAssertEqual(pic.registers.master.isr, 0)
        // OCW2 set priority: IRQ 4 lowest, so IRQ 5 is highest.
        linuxInit()
        outb(0xC4, 0x20)
        pic.setIRQ(1, level: true)
        pic.setIRQ(6, level: true)
        XCTAssertEqual(pic.acknowledge(), 0x36)
        outb(0xA0, 0x20)                                      // rotate on non-specific EOI: 6 lowest
        XCTAssertEqual(pic.acknowledge(), 0x31)
    }

    func testHostileWritesNeverTrap() {
        for port: UInt16 in [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1] {
            for v in 0...255 { outb(UInt8(v), port); _ = inb(port) }
        }
        for irq in [-5, 2, 16, 99, Int.max] { pic.setIRQ(irq, level: true) }
        for w in [1, 2, 4, 8] {
            pic.masterPorts.write(0, 0xFFFF_FFFF_FFFF_FFFF, width: w)
            _ = pic.slavePorts.read(1, width: w)
            _ = pic.elcrPorts.read(UInt64.max, width: w)
        }
        for _ in 0..<20 { _ = pic.acknowledge() }
        linuxInit()
        XCTAssertEqual(inb(0x21), 0)
    }
}
