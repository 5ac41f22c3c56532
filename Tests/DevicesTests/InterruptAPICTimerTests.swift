import XCTest
@testable import Devices

/// The LAPIC timer counts at 1 GHz (the crystal) / divide on the fake clock.
final class InterruptAPICTimerTests: XCTestCase {
    func testOneShotWithDivideBy16() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.write32(APICReg.divide, 0x3)                        // divide by 16
        a.write32(APICReg.lvtTimer, 0xEC)                     // one-shot, vector 0xEC
        r.clock.advance(to: 1_000)
        a.write32(APICReg.initialCount, 1_000)                // 16 us
        r.clock.advance(to: 1_000 + 8_000)
        XCTAssertEqual(a.read32(APICReg.currentCount), 500)
        XCTAssertFalse(a.hasPendingEvent)
        r.clock.advance(to: 1_000 + 15_999)
        XCTAssertFalse(a.hasPendingEvent)
        r.clock.advance(to: 1_000 + 16_000)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0xEC)
        XCTAssertEqual(a.read32(APICReg.currentCount), 0)
        a.write32(APICReg.eoi, 0)
        r.clock.advance(to: 1_000_000)
        XCTAssertFalse(a.hasPendingEvent)                     // one-shot: once
    }

    func testPeriodicFiresEachPeriodAndReloads() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.write32(APICReg.divide, 0xB)                        // divide by 1
        a.write32(APICReg.lvtTimer, 0x2_00EF)                 // periodic
        a.write32(APICReg.initialCount, 1_000_000)            // 1 ms
        var fires = 0
        for ms in 1...5 {
            r.clock.advance(to: UInt64(ms) * 1_000_000 - 1)
            XCTAssertNil(a.acknowledgeInterrupt())
            r.clock.advance(to: UInt64(ms) * 1_000_000)
            if a.acknowledgeInterrupt() == 0xEF { fires += 1; a.write32(APICReg.eoi, 0) }
        }
        XCTAssertEqual(fires, 5)
        r.clock.advance(to: 5_250_000)
        XCTAssertEqual(a.read32(APICReg.currentCount), 750_000)
        // Masked: counts on, delivers nothing.
        a.write32(APICReg.lvtTimer, 0x3_00EF)
        r.clock.advance(to: 9_000_000)
        XCTAssertFalse(a.hasPendingEvent)
        a.write32(APICReg.initialCount, 0)                    // stops
        XCTAssertEqual(a.read32(APICReg.currentCount), 0)
    }

    func testDivideChangeContinuesCount() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.write32(APICReg.divide, 0xB)
        a.write32(APICReg.lvtTimer, 0x40)
        a.write32(APICReg.initialCount, 10_000)
        r.clock.advance(to: 4_000)
        XCTAssertEqual(a.read32(APICReg.currentCount), 6_000)
        a.write32(APICReg.divide, 0x0)                        // divide by 2
        XCTAssertEqual(a.read32(APICReg.currentCount), 6_000)
        r.clock.advance(to: 4_000 + 11_999)
        XCTAssertFalse(a.hasPendingEvent)
        r.clock.advance(to: 4_000 + 12_000)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x40)
    }

    func testTSCDeadline() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        XCTAssertEqual(a.readMSR(0x6E0), 0)
        XCTAssertTrue(a.writeMSR(0x6E0, 5_000))               // not in deadline mode: ignored
        XCTAssertEqual(a.readMSR(0x6E0), 0)
        a.write32(APICReg.lvtTimer, 0x4_00D0)                 // TSC-deadline
        a.write32(APICReg.initialCount, 100)                  // ignored in this mode
        XCTAssertEqual(a.read32(APICReg.currentCount), 0)
        // TSC at 2 GHz: 2_000_000 ticks is 1 ms.
        XCTAssertTrue(a.writeMSR(0x6E0, 2_000_000))
        XCTAssertEqual(a.readMSR(0x6E0), 2_000_000)
        r.clock.advance(to: 999_999)
        XCTAssertFalse(a.hasPendingEvent)
        r.clock.advance(to: 1_000_000)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0xD0)
        XCTAssertEqual(a.readMSR(0x6E0), 0)                   // cleared when it fires
        a.write32(APICReg.eoi, 0)
        // A deadline in the past fires at once; 0 disarms.
        XCTAssertTrue(a.writeMSR(0x6E0, 1))
        r.clock.advance(by: 0)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0xD0)
        a.write32(APICReg.eoi, 0)
        XCTAssertTrue(a.writeMSR(0x6E0, 4_000_000))
        XCTAssertTrue(a.writeMSR(0x6E0, 0))
        r.clock.advance(to: 10_000_000)
        XCTAssertFalse(a.hasPendingEvent)
        // Leaving deadline mode disarms.
        XCTAssertTrue(a.writeMSR(0x6E0, 30_000_000))
        a.write32(APICReg.lvtTimer, 0x00D0)
        r.clock.advance(to: 20_000_000)
        XCTAssertFalse(a.hasPendingEvent)
    }

    func testHugeCountsAndTinyPeriodsAreSafe() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.write32(APICReg.divide, 0xA)                        // divide by 128
        a.write32(APICReg.lvtTimer, 0x2_0040)
        a.write32(APICReg.initialCount, 0xFFFF_FFFF)
        r.clock.advance(to: 1_000_000)
        XCTAssertGreaterThan(a.read32(APICReg.currentCount), 0xFFF0_0000)
        a.write32(APICReg.divide, 0xB)
        a.write32(APICReg.initialCount, 1)                    // a 1 ns period
        r.clock.advance(to: 2_000_000)
        let timer = r.clock.timers[0]
        // Host timer fires are bounded by the minimum period, not 1 per ns.
        XCTAssertLessThanOrEqual(timer.fireCount, 12)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x40)
        XCTAssertTrue(a.writeMSR(0x6E0, .max))
    }
}
