import XCTest
@testable import Devices

final class InterruptClockTests: XCTestCase {
    func testTimeBaseCPUIDLeaves() {
        let t = TCGTimeBase()
        XCTAssertEqual(t.tscFrequencyHz, 2_000_000_000)
        XCTAssertEqual(t.apicTimerFrequencyHz, 1_000_000_000)
        let l15 = t.cpuid15
        XCTAssertEqual(l15.eax, 1); XCTAssertEqual(l15.ebx, 2); XCTAssertEqual(l15.ecx, 1_000_000_000)
        // Linux: tsc_khz = crystal_khz * EBX / EAX in 32-bit arithmetic must not overflow.
        XCTAssertLessThan(UInt64(l15.ecx / 1000) * UInt64(l15.ebx), 1 << 32)
        XCTAssertEqual(UInt64(l15.ecx / 1000) * UInt64(l15.ebx) / UInt64(l15.eax) * 1000, t.tscFrequencyHz)
        XCTAssertEqual(t.cpuid16.eax, 2000)
        XCTAssertEqual(t.cpuid16.ecx, 1000)
    }

    func testMulDivSaturatesInsteadOfTrapping() {
        XCTAssertEqual(mulDiv(3, 5, 2), 7)
        XCTAssertEqual(mulDivRoundingUp(3, 5, 2), 8)
        XCTAssertEqual(mulDiv(.max, .max, 1), .max)
        XCTAssertEqual(mulDiv(1, 1, 0), .max)
        XCTAssertEqual(mulDivRoundingUp(.max, 2, 2), .max)
        XCTAssertEqual(mulDiv(1 << 40, 1_000_000_000, 1 << 20), (1 << 20) * 1_000_000_000)
    }
}
