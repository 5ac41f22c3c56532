import XCTest
@testable import Devices

final class InterruptPITTests: XCTestCase {
    var clock: FakeClock!
    var line: RecordingLine!
    var pit: PIT8254!

    override func setUpWithError() throws {
        clock = FakeClock()
        line = RecordingLine()
        pit = try PIT8254(clock: clock, irq: line)
    }

    func outb(_ v: UInt8, _ port: UInt16) {
        if port == 0x61 { pit.portB.write8(0, v) } else { pit.ports.write8(UInt64(port - 0x40), v) }
    }

    func inb(_ port: UInt16) -> UInt8 {
        port == 0x61 ? pit.portB.read8(0) : pit.ports.read8(UInt64(port - 0x40))
    }

    /// Nanoseconds at which `ticks` input clocks have elapsed since 0.
    func ns(ticks: UInt64) -> UInt64 { (ticks * 1_000_000_000 + PIT8254.frequencyHz - 1) / PIT8254.frequencyHz }

    func testMode2PeriodicIRQ0AsLinuxProgramsIt() {
        // arch/x86/kernel/i8253.c / i8254: 0x34 (ch0, lobyte/hibyte, mode 2), LATCH for HZ=100.
        outb(0x34, 0x43); outb(0x9C, 0x40); outb(0x2E, 0x40)  // 11932
        XCTAssertEqual(line.rises, 0)
        clock.advance(to: ns(ticks: 11932) - 1)
        XCTAssertEqual(line.rises, 0)
        clock.advance(to: ns(ticks: 11932))
        XCTAssertEqual(line.rises, 1)
        XCTAssertFalse(line.level)                            // a pulse: the edge is what counts
        clock.advance(to: ns(ticks: 11932 * 10))
        XCTAssertEqual(line.rises, 10)
        // Counts: mode 2 counts down from 11932 and reloads.
        clock.advance(to: ns(ticks: 11932 * 10 + 1000))
        outb(0x00, 0x43)                                      // latch channel 0
        clock.advance(by: 5_000_000)
        let lo = inb(0x40), hi = inb(0x40)
        XCTAssertEqual(UInt16(hi) << 8 | UInt16(lo), 11932 - 1000)
        // Shut down as Linux's pit_shutdown: mode 0, count 0 (65536).
        outb(0x30, 0x43); outb(0, 0x40); outb(0, 0x40)
        let before = line.rises
        clock.advance(by: 30_000_000)
        XCTAssertEqual(line.rises, before)
    }

    func testMode3SquareWaveCountsByTwo() {
        outb(0x36, 0x43); outb(0xE8, 0x40); outb(0x03, 0x40)  // 1000, mode 3
        clock.advance(to: ns(ticks: 100))
        outb(0x00, 0x43)
        XCTAssertEqual(UInt16(inb(0x40)) | UInt16(inb(0x40)) << 8, 1000 - 200)
        clock.advance(to: ns(ticks: 5000))
        XCTAssertEqual(line.rises, 5)
    }

    func testMode0OneShotIRQStaysHigh() {
        outb(0x30, 0x43); outb(0xA9, 0x40); outb(0x04, 0x40)  // 1193: about 1 ms
        clock.advance(to: ns(ticks: 1192))
        XCTAssertFalse(line.level)
        clock.advance(to: ns(ticks: 1193))
        XCTAssertTrue(line.level)
        clock.advance(to: 100_000_000)
        XCTAssertEqual(line.rises, 1)
        outb(0x30, 0x43)                                      // a new control word: OUT low
        XCTAssertFalse(line.level)
    }

    func testReadBackStatusAndCount() {
        outb(0x34, 0x43)
        outb(0xE2, 0x43)                                      // status only of ch0, before a count
        XCTAssertEqual(inb(0x40), 0x40 | 0x30 | 0x04 | 0x80)  // null count, lo/hi, mode 2, OUT high
        outb(0x10, 0x40); outb(0x27, 0x40)                    // 10000
        clock.advance(to: ns(ticks: 2500))
        outb(0xC2, 0x43)                                      // count and status of ch0
        clock.advance(to: ns(ticks: 4000))
        XCTAssertEqual(inb(0x40), 0x80 | 0x30 | 0x04)
        XCTAssertEqual(UInt16(inb(0x40)) | UInt16(inb(0x40)) << 8, 10000 - 2500)
        // Lobyte-only access and a second latch while one is held (the first holds).
        outb(0x54, 0x43)                                      // ch1, LSB only, mode 2
        outb(200, 0x41)
        clock.advance(to: ns(ticks: 4000 + 50))
        outb(0x40, 0x43)
        clock.advance(to: ns(ticks: 4000 + 70))
        outb(0x40, 0x43)
        XCTAssertEqual(inb(0x41), 150)
        XCTAssertEqual(inb(0x41), 130)                        // unlatched: live
    }

    func testBCDCounting() {
        outb(0x35, 0x43); outb(0x00, 0x40); outb(0x10, 0x40)  // BCD 1000, mode 2
        clock.advance(to: ns(ticks: 1))
        outb(0x00, 0x43)
        XCTAssertEqual(UInt16(inb(0x40)) | UInt16(inb(0x40)) << 8, 0x0999)
    }

    /// arch/x86/kernel/tsc.c pit_calibrate_tsc: channel 2 mode 0 through port 0x61.
    func testPortBChannel2AsPitCalibrateTSC() {
        XCTAssertEqual(inb(0x61) & 0x21, 0)
        outb((inb(0x61) & ~0x02) | 0x01, 0x61)                // gate high, speaker off
        outb(0xB0, 0x43)                                      // ch2, lo/hi, mode 0
        let latch: UInt16 = 11931                             // CAL_LATCH for 10 ms
        outb(UInt8(latch & 0xFF), 0x42); outb(UInt8(latch >> 8), 0x42)
        var polls = 0
        while inb(0x61) & 0x20 == 0 && polls < 1_000_000 {
            clock.advance(by: 1_000)                          // real time passes between polls
            polls += 1
        }
        XCTAssertEqual(clock.nanoseconds, 10_000_000)         // first 1 us step past 9.9993 ms
        XCTAssertEqual(inb(0x61) & 0x01, 0x01)
        XCTAssertEqual(line.rises, 0)                          // channel 2 drives no IRQ
    }

    /// quick_pit_calibrate: count 0xFFFF, then the live MSB read with two plain inb(0x42).
    func testLiveMSBForQuickPitCalibrate() {
        outb((inb(0x61) & ~0x02) | 0x01, 0x61)
        outb(0xB0, 0x43)
        outb(0xFF, 0x42); outb(0xFF, 0x42)
        var msbs: [UInt8] = []
        for i in 0..<5 {
            clock.advance(to: ns(ticks: UInt64(i) * 256 + 10))
            _ = inb(0x42)
            msbs.append(inb(0x42))
        }
        XCTAssertEqual(msbs, [0xFF, 0xFE, 0xFD, 0xFC, 0xFB])
    }

    func testGateLowPausesMode0() {
        outb(0x01, 0x61)
        outb(0xB0, 0x43); outb(0xE8, 0x42); outb(0x03, 0x42)  // 1000
        clock.advance(to: ns(ticks: 400))
        outb(0x00, 0x61)                                      // gate low: pause
        clock.advance(to: ns(ticks: 5000))
        XCTAssertEqual(inb(0x61) & 0x20, 0)
        outb(0x01, 0x61)
        let resumed = clock.nanoseconds
        clock.advance(to: resumed + ns(ticks: 599))
        XCTAssertEqual(inb(0x61) & 0x20, 0)
        clock.advance(to: resumed + ns(ticks: 601))
        XCTAssertEqual(inb(0x61) & 0x20, 0x20)
    }

    func testHostileAccessesAndTinyCounts() {
        for port: UInt16 in [0x40, 0x41, 0x42, 0x43, 0x61] {
            for v in 0...255 { outb(UInt8(v), port); _ = inb(port) }
        }
        for w in [1, 2, 4, 8] {
            pit.ports.write(0, 0xFFFF_FFFF_FFFF_FFFF, width: w)
            _ = pit.ports.read(3, width: w)
            _ = pit.portB.read(UInt64.max, width: w)
            pit.portB.write(5, 0, width: w)
        }
        outb(0x34, 0x43); outb(2, 0x40); outb(0, 0x40)        // count 2: 1.7 us period
        clock.advance(by: 1_000_000)
        XCTAssertLessThanOrEqual(clock.timers[0].fireCount, 25)
        XCTAssertGreaterThan(line.rises, 0)
    }
}
