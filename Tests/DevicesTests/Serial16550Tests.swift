import Devices
import XCTest

final class Serial16550Tests: XCTestCase {
    // Register offsets.
    let RBR: UInt64 = 0, THR: UInt64 = 0, IER: UInt64 = 1, IIR: UInt64 = 2, FCR: UInt64 = 2
    let LCR: UInt64 = 3, MCR: UInt64 = 4, LSR: UInt64 = 5, MSR: UInt64 = 6, SCR: UInt64 = 7

    var line: RecordingInterruptLine!
    var chardev: RecordingChardev!
    var uart: Serial16550!

    override func setUp() {
        line = RecordingInterruptLine()
        chardev = RecordingChardev()
        uart = Serial16550(interrupt: line, chardev: chardev)
    }

    func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { uart.receive($0) }
    }

    func testPowerOnValues() {
        XCTAssertEqual(uart.inb(IIR), 0x01)
        XCTAssertEqual(uart.inb(LSR), 0x60) // THRE | TEMT
        XCTAssertEqual(uart.inb(MSR), 0xB0) // DCD | DSR | CTS
        XCTAssertEqual(uart.inb(MCR), 0x08) // OUT2
        XCTAssertEqual(uart.inb(LCR), 0x00)
        XCTAssertTrue(chardev.frontend === uart)
        XCTAssertEqual(uart.receiveCapacity(), 1) // 16450 mode until FIFOs are enabled
    }

    /// The probe of Linux's 8250 autoconfig(), step by step.
    func testLinuxAutoconfigProbe() {
        // IER test: writes of 0 and 0x0F read back in the low nibble.
        let savedIER = uart.inb(IER)
        uart.outb(IER, 0)
        XCTAssertEqual(uart.inb(IER) & 0x0F, 0)
        uart.outb(IER, 0x0F)
        XCTAssertEqual(uart.inb(IER) & 0x0F, 0x0F)
        uart.outb(IER, savedIER)

        // Loopback test: MCR = LOOP|OUT2|RTS must show DCD|CTS in MSR's status bits.
        let savedMCR = uart.inb(MCR)
        uart.outb(MCR, 0x10 | 0x08 | 0x02)
        XCTAssertEqual(uart.inb(MSR) & 0xF0, 0x90)
        uart.outb(MCR, savedMCR)
        XCTAssertEqual(uart.inb(MCR), savedMCR)

        // Every MCR output line maps to its MSR input in loopback.
        uart.outb(MCR, 0x1F)
        XCTAssertEqual(uart.inb(MSR) & 0xF0, 0xF0)
        uart.outb(MCR, 0x10 | 0x01) // DTR → DSR
        XCTAssertEqual(uart.inb(MSR) & 0xF0, 0x20)
        uart.outb(MCR, 0x10 | 0x04) // OUT1 → RI
        XCTAssertEqual(uart.inb(MSR) & 0xF0, 0x40)
        uart.outb(MCR, savedMCR)

        // EFR probe (LCR 0xBF) finds no EFR; enabling FIFOs shows IIR bits 7:6 = 3 (16550A).
        uart.outb(LCR, 0xBF)
        uart.outb(2, 0)
        uart.outb(LCR, 0)
        uart.outb(FCR, 0x01)
        XCTAssertEqual(uart.inb(IIR) >> 6, 3)
        // No 64-byte FIFO bit (16750 test), with or without DLAB.
        uart.outb(FCR, 0x01 | 0x20)
        XCTAssertEqual(uart.inb(IIR) & 0xE0, 0xC0)
        uart.outb(LCR, 0x80)
        uart.outb(FCR, 0x01 | 0x20)
        XCTAssertEqual(uart.inb(IIR) & 0xE0, 0xC0)
        uart.outb(LCR, 0)

        // size_fifo(): loopback, 256 bytes out, count what comes back: 16.
        uart.outb(FCR, 0x07)
        uart.outb(MCR, 0x10)
        uart.outb(LCR, 0x80)
        uart.outb(0, 1)
        uart.outb(1, 0)
        uart.outb(LCR, 0x03)
        for i in 0..<256 { uart.outb(THR, UInt8(i)) }
        var count = 0
        var got: [UInt8] = []
        while uart.inb(LSR) & 0x01 != 0 && count < 256 {
            got.append(uart.inb(RBR))
            count += 1
        }
        XCTAssertEqual(count, 16)
        XCTAssertEqual(got, Array(0..<16), "an overrun keeps the FIFO's first bytes")
        XCTAssertTrue(chardev.written.isEmpty, "loopback output must not reach the host")

        // Scratch register.
        uart.outb(SCR, 0xA5)
        XCTAssertEqual(uart.inb(SCR), 0xA5)
    }

    func testLoopbackOverrunSetsOEAndLineStatusInterrupt() {
        uart.outb(FCR, 0x07)
        uart.outb(IER, 0x04)
        uart.outb(MCR, 0x10)
        for i in 0..<17 { uart.outb(THR, UInt8(i)) }
        XCTAssertEqual(uart.inb(IIR), 0xC6)
        XCTAssertTrue(line.asserted)
        XCTAssertEqual(uart.inb(LSR) & 0x03, 0x03)
        XCTAssertEqual(uart.inb(LSR) & 0x02, 0, "OE clears when LSR is read")
        XCTAssertEqual(uart.inb(IIR), 0xC1)
        XCTAssertFalse(line.asserted)
    }

    func testDivisorLatch() {
        uart.outb(LCR, 0x83)
        uart.outb(0, 0x01)
        uart.outb(1, 0x02)
        XCTAssertEqual(uart.inb(0), 0x01)
        XCTAssertEqual(uart.inb(1), 0x02)
        XCTAssertEqual(uart.divisor, 0x0201)
        uart.outb(LCR, 0x03)
        XCTAssertEqual(uart.inb(IER), 0, "IER is separate from DLM")
        uart.outb(THR, 0x41)
        XCTAssertEqual(chardev.written, [0x41])
        XCTAssertEqual(uart.divisor, 0x0201, "THR writes do not touch the divisor")
        XCTAssertEqual(uart.inb(LCR), 0x03)
    }

    func testTransmitGoesToChardevAndLSRStaysEmpty() {
        for b in Array("hi\n".utf8) { uart.outb(THR, b) }
        XCTAssertEqual(chardev.written, Array("hi\n".utf8))
        XCTAssertEqual(uart.inb(LSR) & 0x60, 0x60)
    }

    func testWideAccessIsSplitIntoBytes() {
        uart.out(FCR, width: 2, 0x0300) // FCR = 0, LCR (next byte) = 3
        XCTAssertEqual(uart.inb(LCR), 0x03)
        XCTAssertEqual(uart.inp(SCR, width: 4) >> 8, 0xFFFFFF, "bytes past the 8 registers read as ones")
    }

    func testTHREmptyInterrupt() {
        XCTAssertFalse(line.asserted)
        uart.outb(IER, 0x02)
        XCTAssertTrue(line.asserted, "enabling ETBEI while THR is empty raises the interrupt")
        XCTAssertEqual(uart.inb(IIR), 0x02)
        XCTAssertFalse(line.asserted, "reading IIR acknowledges THR empty")
        XCTAssertEqual(uart.inb(IIR), 0x01)
        uart.outb(THR, 0x55)
        XCTAssertTrue(line.asserted, "THR empties again after each byte")
        XCTAssertEqual(uart.inb(IIR), 0x02)
        // Rewriting IER with ETBEI still set does not re-raise; toggling it does.
        uart.outb(IER, 0x02)
        XCTAssertFalse(line.asserted)
        uart.outb(IER, 0x00)
        uart.outb(IER, 0x02)
        XCTAssertTrue(line.asserted)
        uart.outb(IER, 0x00)
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(line.levels, [true, false, true, false, true, false])
    }

    func testLinuxTXENProbe() {
        // serial8250_do_startup's UART_BUG_TXEN check: IER=THRI, then LSR has TEMT and IIR
        // must report an interrupt (bit 0 clear), otherwise Linux marks the port buggy.
        uart.outb(IER, 0x02)
        let lsr = uart.inb(LSR)
        let iir = uart.inb(IIR)
        uart.outb(IER, 0)
        XCTAssertNotEqual(lsr & 0x40, 0)
        XCTAssertEqual(iir & 0x01, 0)
    }

    func testInterruptIgnoresOUT2LikeQEMU() {
        uart.outb(MCR, 0x00)
        uart.outb(IER, 0x02)
        XCTAssertTrue(line.asserted)
    }

    func testFIFOFillDrainAndTriggerLevel() {
        uart.outb(FCR, 0xC7) // enable, clear both, trigger 14
        uart.outb(IER, 0x01)
        XCTAssertEqual(uart.receiveCapacity(), 16)
        feed(Array(1...10))
        XCTAssertEqual(uart.inb(LSR) & 0x01, 0x01)
        XCTAssertEqual(uart.inb(IIR), 0xCC, "below the trigger level: character timeout")
        XCTAssertTrue(line.asserted)
        feed(Array(11...14))
        XCTAssertEqual(uart.inb(IIR), 0xC4, "at the trigger level: received data available")
        XCTAssertEqual(uart.receiveCapacity(), 2)
        feed([15, 16])
        XCTAssertEqual(uart.receiveCapacity(), 0)
        XCTAssertEqual(chardev.resumeCount, 0)

        var got: [UInt8] = []
        got.append(uart.inb(RBR))
        XCTAssertEqual(chardev.resumeCount, 1, "the first byte read out of a full FIFO resumes the chardev")
        while uart.inb(LSR) & 0x01 != 0 { got.append(uart.inb(RBR)) }
        XCTAssertEqual(got, Array(1...16))
        XCTAssertEqual(chardev.resumeCount, 1, "resume is only sent when space appears")
        XCTAssertEqual(uart.inb(IIR), 0xC1)
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(uart.receiveCapacity(), 16)
    }

    func testTriggerLevels() {
        for (fcr, level) in [(UInt8(0x01), 1), (0x41, 4), (0x81, 8), (0xC1, 14)] {
            setUp()
            uart.outb(FCR, fcr)
            uart.outb(IER, 0x01)
            if level > 1 {
                feed(Array(repeating: 0x61, count: level - 1))
                XCTAssertEqual(uart.inb(IIR), 0xCC, "FCR \(fcr)")
                feed([0x62])
            } else {
                feed([0x62])
            }
            XCTAssertEqual(uart.inb(IIR), 0xC4, "FCR \(fcr)")
        }
    }

    func testFIFOResetClearsReceiver() {
        uart.outb(FCR, 0x01)
        feed(Array(repeating: 7, count: 16))
        XCTAssertEqual(uart.receiveCapacity(), 0)
        uart.outb(FCR, 0x03)
        XCTAssertEqual(uart.inb(LSR) & 0x01, 0)
        XCTAssertEqual(uart.receiveCapacity(), 16)
        XCTAssertEqual(chardev.resumeCount, 1)
    }

    func testNonFIFOModeHoldsOneByte() {
        uart.outb(IER, 0x01)
        XCTAssertEqual(uart.receiveCapacity(), 1)
        feed([0x41])
        XCTAssertEqual(uart.receiveCapacity(), 0)
        XCTAssertEqual(uart.inb(IIR), 0x04, "no FIFO bits in 16450 mode")
        XCTAssertEqual(uart.inb(RBR), 0x41)
        XCTAssertEqual(uart.inb(IIR), 0x01)
        XCTAssertEqual(chardev.resumeCount, 1)
    }

    func testInterruptPriorities() {
        uart.outb(IER, 0x0F)
        // THR empty is pending from enabling ETBEI.
        XCTAssertEqual(uart.inb(IIR), 0x02)
        uart.outb(IER, 0x00)
        uart.outb(IER, 0x0F)
        feed([0x41])
        feed([0x42]) // overrun in 16450 mode: OE, RBR = 0x42
        XCTAssertEqual(uart.inb(IIR), 0x06, "line status outranks everything")
        XCTAssertEqual(uart.inb(IIR), 0x06, "reading IIR does not clear line status")
        XCTAssertEqual(uart.inb(LSR) & 0x03, 0x03)
        XCTAssertEqual(uart.inb(IIR), 0x04, "then received data")
        XCTAssertEqual(uart.inb(RBR), 0x42)
        XCTAssertEqual(uart.inb(IIR), 0x02, "then THR empty")
        XCTAssertEqual(uart.inb(IIR), 0x01)
        XCTAssertFalse(line.asserted)
    }

    func testLoopbackDisconnectsHostInput() {
        uart.outb(FCR, 0x01)
        uart.outb(MCR, 0x18)
        XCTAssertEqual(uart.receiveCapacity(), 0)
        feed([1, 2, 3])
        XCTAssertEqual(uart.inb(LSR) & 0x01, 0)
        uart.outb(MCR, 0x08)
        XCTAssertEqual(chardev.resumeCount, 1, "leaving loopback resumes the chardev")
        XCTAssertEqual(uart.receiveCapacity(), 16)
    }

    func testResetRestoresPowerOnState() {
        uart.outb(FCR, 0x01)
        uart.outb(IER, 0x0F)
        uart.outb(LCR, 0x83)
        feed([1, 2])
        XCTAssertTrue(line.asserted)
        uart.reset()
        XCTAssertFalse(line.asserted)
        XCTAssertEqual(uart.inb(IIR), 0x01)
        XCTAssertEqual(uart.inb(LCR), 0)
        XCTAssertEqual(uart.inb(LSR), 0x60)
        XCTAssertEqual(uart.divisor, 0x0C)
    }
}
