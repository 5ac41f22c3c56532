import Foundation
import XCTest

/// The QMP scenarios that depend on the guest's interrupts and timers, under `keel -accel tcg`:
/// stop/cont (the ticker guest's ACPI PM timer pauses with the vCPU), system_powerdown (the power
/// button's SCI through the IOAPIC to a halted vCPU), system_reset and -S. Driven by
/// Scripts/qmp_driver.py with QEMU's qemu.qmp client, as QMPTests does under kvm.
final class TCGMonitorTests: XCTestCase {
    private func run(_ scenario: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let keel = try KeelRunner.fromEnvironment(keelAccel: "tcg")
        guard case .keel(let binary) = keel.emulator else {
            throw XCTSkip("KEEL_TEST_EMULATOR names QEMU: the QMP tests drive Keel itself")
        }
        guard let python = QMPTests.python else {
            return XCTFail("the qemu.qmp Python package is missing: run scripts/install-dependencies.sh", file: file, line: line)
        }
        let ticker = try GuestBuilder.shared.image(for: .ticker)
        let pwrbtn = try GuestBuilder.shared.image(for: .powerButton)
        let r = try KeelRunner.runCommand(executable: python,
                                          arguments: [QMPTests.driver, scenario, binary, ticker.path, pwrbtn.path, "tcg"],
                                          timeout: 150)
        XCTAssertFalse(r.timedOut, "\(scenario) timed out\n\(r.stdout)\n\(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, 0, "\(scenario): \(r.stderr.suffix(3000))\n\(r.stdout.suffix(2000))", file: file, line: line)
        XCTAssertTrue(r.lines.contains("PASS \(scenario)"), r.stdout, file: file, line: line)
    }

    func testStopPausesTheGuestAndContResumesItUnderTCG() throws { try run("stop-cont") }
    func testSystemPowerdownEndsInACPIPowerOffUnderTCG() throws { try run("powerdown") }
    func testSystemResetKeepsTheConnectionUnderTCG() throws { try run("reset") }
    func testStartPausedWithSUnderTCG() throws { try run("prelaunch") }
}
