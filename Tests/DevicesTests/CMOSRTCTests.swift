@testable import Devices
import Foundation
import XCTest

final class CMOSRTCTests: XCTestCase {
    func cmos(_ rtc: CMOSRTC, _ index: UInt8) -> UInt8 {
        rtc.outb(0, index)
        return rtc.inb(1)
    }

    func setCMOS(_ rtc: CMOSRTC, _ index: UInt8, _ value: UInt8) {
        rtc.outb(0, index)
        rtc.outb(1, value)
    }

    func bcd(_ v: UInt8) -> Int { Int(v >> 4) * 10 + Int(v & 0x0F) }

    /// Epoch nanoseconds of a UTC calendar time.
    func epochNanoseconds(_ y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ s: Int, ns: Int64 = 0) -> Int64 {
        var tm = Glibc.tm()
        tm.tm_year = Int32(y - 1900); tm.tm_mon = Int32(mo - 1); tm.tm_mday = Int32(d)
        tm.tm_hour = Int32(h); tm.tm_min = Int32(mi); tm.tm_sec = Int32(s)
        return Int64(timegm(&tm)) * 1_000_000_000 + ns
    }

    func testDefaultsAndRegisterD() {
        let rtc = CMOSRTC()
        XCTAssertEqual(cmos(rtc, 0x0B), 0x02)
        XCTAssertEqual(cmos(rtc, 0x0A) & 0x7F, 0x26)
        XCTAssertEqual(cmos(rtc, 0x0D), 0x80)
        setCMOS(rtc, 0x0D, 0)
        XCTAssertEqual(cmos(rtc, 0x0D), 0x80, "register D is read-only")
    }

    func testTimeMatchesHostUTC() {
        let rtc = CMOSRTC()
        // Read as Linux does: BCD, 24-hour (the default register B).
        let sec = bcd(cmos(rtc, 0x00)), min = bcd(cmos(rtc, 0x02)), hour = bcd(cmos(rtc, 0x04))
        let day = bcd(cmos(rtc, 0x07)), mon = bcd(cmos(rtc, 0x08)), year = bcd(cmos(rtc, 0x09))
        let century = bcd(cmos(rtc, 0x32))
        let guest = epochNanoseconds(century * 100 + year, mon, day, hour, min, sec) / 1_000_000_000
        let host = Int64(Date().timeIntervalSince1970)
        XCTAssertLessThanOrEqual(abs(guest - host), 2)
        let wday = bcd(cmos(rtc, 0x06))
        var t = time_t(host)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        XCTAssertEqual(wday, Int(tm.tm_wday) + 1)
    }

    func testBCDBinaryAnd12HourEncodings() {
        let rtc = CMOSRTC()
        // 2024-03-05 15:04:09.5 UTC
        rtc.hostNow = { self.epochNanoseconds(2024, 3, 5, 15, 4, 9, ns: 500_000_000) }
        XCTAssertEqual(cmos(rtc, 0x00), 0x09)
        XCTAssertEqual(cmos(rtc, 0x04), 0x15)
        XCTAssertEqual(cmos(rtc, 0x09), 0x24)
        XCTAssertEqual(cmos(rtc, 0x32), 0x20)
        XCTAssertEqual(cmos(rtc, 0x06), 0x03, "a Tuesday")
        setCMOS(rtc, 0x0B, 0x06) // binary, 24h
        XCTAssertEqual(cmos(rtc, 0x04), 15)
        XCTAssertEqual(cmos(rtc, 0x09), 24)
        XCTAssertEqual(cmos(rtc, 0x32), 20)
        setCMOS(rtc, 0x0B, 0x04) // binary, 12h
        XCTAssertEqual(cmos(rtc, 0x04), 0x80 | 3)
        setCMOS(rtc, 0x0B, 0x00) // BCD, 12h
        XCTAssertEqual(cmos(rtc, 0x04), 0x83)
        rtc.hostNow = { self.epochNanoseconds(2024, 3, 5, 0, 30, 0) }
        XCTAssertEqual(cmos(rtc, 0x04), 0x12, "00:30 is 12 AM")
        rtc.hostNow = { self.epochNanoseconds(2024, 3, 5, 12, 30, 0) }
        XCTAssertEqual(cmos(rtc, 0x04), 0x92, "12:30 is 12 PM")
    }

    func testSettingTheTimeWithSET() {
        let rtc = CMOSRTC()
        var host = epochNanoseconds(2024, 3, 5, 15, 4, 9)
        rtc.hostNow = { host }
        setCMOS(rtc, 0x0B, 0x82) // SET, BCD, 24h
        for (i, v) in [(0x00, 0x30), (0x02, 0x59), (0x04, 0x23), (0x07, 0x31), (0x08, 0x12), (0x09, 0x99), (0x32, 0x19)] {
            setCMOS(rtc, UInt8(i), UInt8(v))
        }
        host += 5_000_000_000
        XCTAssertEqual(cmos(rtc, 0x00), 0x30, "the clock is stopped while SET")
        setCMOS(rtc, 0x0B, 0x02)
        XCTAssertEqual(cmos(rtc, 0x09), 0x99)
        XCTAssertEqual(cmos(rtc, 0x32), 0x19)
        XCTAssertEqual(cmos(rtc, 0x06), 0x06, "1999-12-31 was a Friday")
        host += 31_000_000_000 // runs on from there: into the next millennium
        XCTAssertEqual(cmos(rtc, 0x00), 0x01)
        XCTAssertEqual(cmos(rtc, 0x02), 0x00)
        XCTAssertEqual(cmos(rtc, 0x04), 0x00)
        XCTAssertEqual(cmos(rtc, 0x09), 0x00)
        XCTAssertEqual(cmos(rtc, 0x32), 0x20)
        XCTAssertEqual(cmos(rtc, 0x08), 0x01)

        // 12-hour PM write while SET, binary.
        setCMOS(rtc, 0x0B, 0x84)
        setCMOS(rtc, 0x04, 0x80 | 11)
        setCMOS(rtc, 0x0B, 0x06)
        XCTAssertEqual(cmos(rtc, 0x04), 23)

        // A direct write (without SET) takes effect at once.
        setCMOS(rtc, 0x02, 42)
        XCTAssertEqual(cmos(rtc, 0x02), 42)
    }

    func testGarbageTimeDoesNotTrap() {
        let rtc = CMOSRTC()
        setCMOS(rtc, 0x0B, 0x80)
        for i in [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32] { setCMOS(rtc, UInt8(i), 0xFF) }
        setCMOS(rtc, 0x0B, 0x02)
        _ = cmos(rtc, 0x09)
        setCMOS(rtc, 0x0B, 0x04)
        for i in [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32] { setCMOS(rtc, UInt8(i), 0x00) }
        _ = cmos(rtc, 0x32)
    }

    func testUpdateInProgressWindow() {
        let rtc = CMOSRTC()
        rtc.hostNow = { self.epochNanoseconds(2024, 1, 1, 0, 0, 0, ns: 999_900_000) }
        XCTAssertEqual(cmos(rtc, 0x0A) & 0x80, 0x80)
        rtc.hostNow = { self.epochNanoseconds(2024, 1, 1, 0, 0, 0, ns: 500_000_000) }
        XCTAssertEqual(cmos(rtc, 0x0A) & 0x80, 0)
        setCMOS(rtc, 0x0A, 0xFF)
        XCTAssertEqual(cmos(rtc, 0x0A), 0x7F, "UIP is read-only, the rest writable")
    }

    func testRegisterCUpdateFlagClearsOnRead() {
        let rtc = CMOSRTC()
        var host = epochNanoseconds(2024, 1, 1, 0, 0, 0)
        rtc.hostNow = { host }
        _ = cmos(rtc, 0x0C)
        XCTAssertEqual(cmos(rtc, 0x0C), 0, "cleared by the previous read")
        host += 1_000_000_000
        XCTAssertEqual(cmos(rtc, 0x0C), 0x10)
        XCTAssertEqual(cmos(rtc, 0x0C), 0)
    }

    func testNVRAMSurvivesResetAndNMIMaskBit() {
        let rtc = CMOSRTC()
        rtc.outb(0, 0x80 | 0x40)
        XCTAssertTrue(rtc.nmiMasked)
        rtc.outb(1, 7)
        rtc.outb(0, 0x40)
        XCTAssertFalse(rtc.nmiMasked)
        XCTAssertEqual(rtc.inb(1), 7)
        setCMOS(rtc, 0x7F, 0xAB)
        setCMOS(rtc, 0x0B, 0x02 | 0x70)
        rtc.reset()
        XCTAssertEqual(cmos(rtc, 0x40), 7)
        XCTAssertEqual(cmos(rtc, 0x7F), 0xAB)
        XCTAssertEqual(cmos(rtc, 0x0B), 0x02, "reset clears the interrupt enables only")
    }

    func testMemorySizeBytes() {
        let mib: UInt64 = 1 << 20
        let rtc = CMOSRTC(memory: CMOSMemorySizes(belowFourGiB: 3 * 1024 * mib, aboveFourGiB: 1024 * mib))
        func word(_ i: Int) -> Int { Int(rtc[byte: i]) | Int(rtc[byte: i + 1]) << 8 }
        XCTAssertEqual(word(0x15), 640)
        XCTAssertEqual(word(0x17), 0xFFFF, "capped at 64 MiB - 1 KiB")
        XCTAssertEqual(word(0x30), 0xFFFF)
        XCTAssertEqual(word(0x34), Int((3 * 1024 - 16) * mib / 65536))
        XCTAssertEqual(Int(rtc[byte: 0x5B]) | Int(rtc[byte: 0x5C]) << 8 | Int(rtc[byte: 0x5D]) << 16, 16384)

        let small = CMOSRTC(memory: CMOSMemorySizes(belowFourGiB: 32 * mib, aboveFourGiB: 0))
        XCTAssertEqual(Int(small[byte: 0x17]) | Int(small[byte: 0x18]) << 8, 31 * 1024)
        XCTAssertEqual(Int(small[byte: 0x34]) | Int(small[byte: 0x35]) << 8, 256)
        XCTAssertEqual(small[byte: 0x5B], 0)
    }

    func testWideAccessWritesIndexThenData() {
        let rtc = CMOSRTC()
        rtc.out(0, width: 2, 0x5A_41) // index 0x41, data 0x5A
        XCTAssertEqual(cmos(rtc, 0x41), 0x5A)
        XCTAssertEqual(rtc.inb(0), 0xFF, "the index port is write-only")
    }
}
