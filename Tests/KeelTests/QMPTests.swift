import Foundation
import XCTest

/// QMP and the human monitor, driven by QEMU's own Python client (`qemu.qmp` from PyPI, installed
/// by scripts/install-dependencies.sh) against Keel's test guests under kvm. Each test runs one
/// scenario of Scripts/qmp_driver.py, which prints "PASS <scenario>" or exits naming the check
/// that failed.
final class QMPTests: XCTestCase {
    static let driver = PackagePaths.root.appendingPathComponent("Tests/KeelTests/Scripts/qmp_driver.py").path

    /// The first python3 that can import qemu.qmp (pyenv's or the system's).
    static let python: String? = {
        var candidates: [String] = []
        if let p = KeelRunner.which("python3") { candidates.append(p) }
        candidates += ["/usr/local/bin/python3", "/usr/bin/python3"]
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) {
            if let r = try? KeelRunner.runCommand(executable: c, arguments: ["-c", "import qemu.qmp"], timeout: 30), r.status == 0 {
                return c
            }
        }
        return nil
    }()

    private func run(_ scenario: String, file: StaticString = #filePath, line: UInt = #line) throws {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { throw XCTSkip("no /dev/kvm: the kvm accelerator cannot run here") }
        let keel = try KeelRunner.fromEnvironment()
        guard case .keel(let binary) = keel.emulator else {
            throw XCTSkip("KEEL_TEST_EMULATOR names QEMU: the QMP tests drive Keel itself")
        }
        guard let python = Self.python else {
            return XCTFail("the qemu.qmp Python package is missing: run scripts/install-dependencies.sh", file: file, line: line)
        }
        let ticker = try GuestBuilder.shared.image(for: .ticker)
        let pwrbtn = try GuestBuilder.shared.image(for: .powerButton)
        let r = try KeelRunner.runCommand(executable: python,
                                          arguments: [Self.driver, scenario, binary, ticker.path, pwrbtn.path],
                                          timeout: 150)
        XCTAssertFalse(r.timedOut, "\(scenario) timed out\n\(r.stdout)\n\(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, 0, "\(scenario): \(r.stderr.suffix(3000))\n\(r.stdout.suffix(2000))", file: file, line: line)
        XCTAssertTrue(r.lines.contains("PASS \(scenario)"), r.stdout, file: file, line: line)
    }

    /// Greeting, negotiation, every query's result shape, human-monitor-command, quit + SHUTDOWN.
    func testNegotiationAndQueryShapes() throws { try run("queries") }
    /// stop/cont: STOP/RESUME, query-status, and the guest's console pausing and resuming.
    func testStopPausesTheGuestAndContResumesIt() throws { try run("stop-cont") }
    /// system_powerdown: POWERDOWN, the guest's ACPI power-button handler, S5, SHUTDOWN guest-shutdown.
    func testSystemPowerdownEndsInACPIPowerOff() throws { try run("powerdown") }
    /// system_reset: RESET, the guest boots again, the connection stays; a stopped machine stays stopped.
    func testSystemResetKeepsTheConnection() throws { try run("reset") }
    /// Malformed JSON, unknown commands, wrong argument types, nesting and size bombs, clients
    /// leaving mid-message: right error classes, and the VM keeps running.
    func testBadInputIsAnsweredAndTheVMKeepsRunning() throws { try run("errors") }
    /// Several QMP clients (unix and TCP via -chardev/-mon) and a human monitor socket at once.
    func testSeveralClientsEachNegotiate() throws { try run("multi") }
    /// -monitor stdio: info status/cpus, stop, cont, quit.
    func testHumanMonitorOnStdio() throws { try run("hmp-stdio") }
    /// -nographic: Ctrl-A c switches between the console and the human monitor.
    func testCtrlACSwitchesToTheMonitor() throws { try run("mux-console") }
    /// -S: prelaunch until cont.
    func testStartPausedWithS() throws { try run("prelaunch") }
}
