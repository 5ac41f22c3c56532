import Devices
import XCTest

final class I8042Tests: XCTestCase {
    var line: RecordingInterruptLine!
    var resets = 0
    var kbc: I8042!
    let data: UInt64 = 0, cmd: UInt64 = 4

    override func setUp() {
        line = RecordingInterruptLine()
        resets = 0
        kbc = I8042(interrupt: line, onReset: { [unowned self] in self.resets += 1 })
    }

    func command(_ c: UInt8) -> UInt8? {
        kbc.outb(cmd, c)
        guard kbc.inb(cmd) & 0x01 != 0 else { return nil }
        return kbc.inb(data)
    }

    func testStatusAfterPowerOn() {
        let s = kbc.inb(cmd)
        XCTAssertEqual(s & 0x01, 0, "output buffer empty")
        XCTAssertEqual(s & 0x02, 0, "input buffer never full")
        XCTAssertNotEqual(s & 0x04, 0, "system flag: POST passed")
        XCTAssertNotEqual(s & 0x10, 0, "keyboard not locked")
    }

    func testSelfTestsAndConfigByte() {
        XCTAssertEqual(command(0xAA), 0x55)
        XCTAssertEqual(command(0xAB), 0x00)
        XCTAssertEqual(command(0xA9), 0x00)
        XCTAssertEqual(command(0x20), I8042.initialConfig)
        // Linux disables the keyboard interrupt and port and writes the config back.
        kbc.outb(cmd, 0x60)
        kbc.outb(data, 0x54)
        XCTAssertEqual(command(0x20), 0x54)
        kbc.outb(cmd, 0xAE)
        XCTAssertEqual(command(0x20), 0x44)
        kbc.outb(cmd, 0xAD)
        kbc.outb(cmd, 0xA8)
        XCTAssertEqual(command(0x20), 0x54)
        kbc.outb(cmd, 0xA7)
        XCTAssertEqual(command(0x20), 0x74)
        XCTAssertEqual(kbc.inb(cmd) & 0x01, 0)
    }

    func testKeyboardInterruptFollowsConfig() {
        // The initial config enables IRQ 1: a pending response asserts it until read.
        kbc.outb(cmd, 0xAA)
        XCTAssertTrue(line.asserted)
        XCTAssertEqual(kbc.inb(data), 0x55)
        XCTAssertFalse(line.asserted)
        kbc.outb(cmd, 0x60)
        kbc.outb(data, 0x44) // interrupt off
        kbc.outb(cmd, 0xAA)
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(kbc.inb(cmd) & 0x01, 0x01)
        kbc.outb(cmd, 0x60)  // turning it on with a byte pending raises it... after the write
        kbc.outb(data, 0x45)
        XCTAssertTrue(line.asserted)
        XCTAssertEqual(kbc.inb(data), 0x55)
        XCTAssertFalse(line.asserted)
    }

    func testKeyboardCommands() {
        kbc.outb(data, 0xFF)
        XCTAssertEqual(kbc.inb(data), 0xFA)
        XCTAssertEqual(kbc.inb(data), 0xAA)
        XCTAssertEqual(kbc.inb(cmd) & 0x01, 0)
        kbc.outb(data, 0xF2)
        XCTAssertEqual([kbc.inb(data), kbc.inb(data), kbc.inb(data)], [0xFA, 0xAB, 0x41])
        kbc.outb(data, 0xED) // set LEDs takes an argument; both bytes are acknowledged
        XCTAssertEqual(kbc.inb(data), 0xFA)
        kbc.outb(data, 0x07)
        XCTAssertEqual(kbc.inb(data), 0xFA)
        kbc.outb(data, 0xF4)
        XCTAssertEqual(kbc.inb(data), 0xFA)
    }

    func testAUXLoopbackIsMarkedAUXAndRaisesNoKeyboardInterrupt() {
        kbc.outb(cmd, 0xD3)
        kbc.outb(data, 0x5A)
        XCTAssertEqual(kbc.inb(cmd) & 0x21, 0x21)
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(kbc.inb(data), 0x5A)
    }

    func testResetThroughPulseAndOutputPort() {
        kbc.outb(cmd, 0xFE)
        XCTAssertEqual(resets, 1)
        kbc.outb(cmd, 0xFF) // pulses no line
        XCTAssertEqual(resets, 1)
        kbc.outb(cmd, 0xD1)
        kbc.outb(data, 0x03) // reset line stays high
        XCTAssertEqual(resets, 1)
        XCTAssertEqual(command(0xD0), 0x03)
        kbc.outb(cmd, 0xD1)
        kbc.outb(data, 0x02) // bit 0 low: reset
        XCTAssertEqual(resets, 2)
    }

    func testOutputQueueIsBounded() {
        for _ in 0..<1000 { kbc.outb(cmd, 0xAA) }
        var n = 0
        while kbc.inb(cmd) & 0x01 != 0 && n < 2000 { _ = kbc.inb(data); n += 1 }
        XCTAssertEqual(n, I8042.outputQueueLimit)
    }

    func testSeparatePorts() {
        let d = kbc.dataPort, c = kbc.commandPort
        c.outb(0, 0xAA)
        XCTAssertEqual(c.inb(0) & 0x01, 0x01)
        XCTAssertEqual(d.inb(0), 0x55)
    }
}
