import Foundation
import XCTest

/// Keel's own small guests under `keel -accel tcg` (Keel's x86-64 CPU emulator), as under kvm:
/// with the board's LocalAPICs, IOAPIC, PIC pair and PIT, including SMP bring-up by
/// INIT-SIPI-SIPI, the UART's interrupt through the IOAPIC, and the LAPIC timer waking a
/// halted vCPU.
final class TCGGuestTests: OwnGuestTestCase {
    override func setUpWithError() throws {
        runner = try KeelRunner.fromEnvironment(keelAccel: "tcg")
    }

    func testHelloUnderTCG() throws { try checkHello() }
    func testPVHEntryThenOwnSwitchToLongModeUnderTCG() throws { try checkPVHEntryThenOwnSwitchToLongMode() }
    func testLinux64BootProtocolUnderTCG() throws { try checkLinux64BootProtocol() }
    func testPortAndMMIOReadbackUnderTCG() throws { try checkPortAndMMIOReadback() }
    func testRTCMatchesHostUTCUnderTCG() throws { try checkRTCMatchesHostUTC() }
    func testACPIPoweroffUnderTCG() throws { try checkACPIPoweroffThroughS5() }
    func testResetRebootsUnderTCG() throws { try checkResetRebootsTheMachine() }
    func testResetWithNoRebootExitsUnderTCG() throws { try checkResetWithNoRebootExits() }
    func testSerialEchoPollingUnderTCG() throws { try checkSerialEchoPolling() }
    func testSerialEchoInterruptDrivenThroughIOAPICUnderTCG() throws { try checkSerialEchoInterruptDrivenThroughIOAPIC() }
    func testSMPBringsUpTwoCPUsUnderTCG() throws { try checkSMP(cpus: 2) }
    func testSMPBringsUpFourCPUsUnderTCG() throws { try checkSMP(cpus: 4) }

    // MARK: - LAPIC timer waking a halted vCPU

    /// CPU seconds (user + system) that finished child processes have used so far.
    private static func childCPUSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }

    /// Runs lapic-timer in `mode`: `count` interrupts of 10 ms, each ending a HLT. Checks the
    /// count, that the guest's TSC saw about the programmed time, and that Keel slept while the
    /// vCPU halted (its CPU time stays well below the wall time).
    private func lapicTimer(_ mode: String, count: Int = 50, file: StaticString = #filePath, line: UInt = #line) throws {
        let cpuBefore = Self.childCPUSeconds()
        let r = try boot(.lapicTimer, append: "mode=\(mode) count=\(count) ms=10")
        let cpu = Self.childCPUSeconds() - cpuBefore
        assertStatus(r, Self.pass, file: file, line: line)
        guard let result = r.lines.first(where: { $0.hasPrefix("lapic-timer: ") && $0.contains(" interrupts, ") }) else {
            return XCTFail("no result line\n\(describe(r))", file: file, line: line)
        }
        let numbers = result.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count >= 4 else { return XCTFail(result, file: file, line: line) }
        let (fired, halts, elapsedUs) = (numbers[0], numbers[1], numbers[2])
        XCTAssertEqual(fired, count, result, file: file, line: line)
        XCTAssertGreaterThanOrEqual(halts, count, "every interrupt should end a HLT: \(result)", file: file, line: line)
        let expectedUs = count * 10_000
        XCTAssertGreaterThanOrEqual(elapsedUs, expectedUs * 9 / 10, "timer fired early: \(result)", file: file, line: line)
        XCTAssertLessThan(elapsedUs, expectedUs * 3, "timer far too slow: \(result)", file: file, line: line)
        let wall = r.finished.timeIntervalSince(r.launched)
        XCTAssertLessThan(cpu, max(0.3, wall * 0.6), "Keel used \(cpu) s of CPU in \(wall) s: the halted vCPU must sleep\n\(result)",
                          file: file, line: line)
    }

    func testLAPICTimerPeriodicWakesHaltedVCPUUnderTCG() throws { try lapicTimer("periodic") }
    func testLAPICTimerOneShotWakesHaltedVCPUUnderTCG() throws { try lapicTimer("oneshot") }
    func testLAPICTimerTSCDeadlineWakesHaltedVCPUUnderTCG() throws { try lapicTimer("deadline") }
}
