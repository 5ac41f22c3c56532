import Foundation
import XCTest

/// Keel's own small guests under `keel -accel tcg` (Keel's x86-64 CPU emulator), as under kvm:
/// with the board's LocalAPICs, IOAPIC, PIC pair and PIT, including SMP bring-up by
/// INIT-SIPI-SIPI, the UART's interrupt through the IOAPIC, and the LAPIC timer waking a
/// halted vCPU.
final class TCGGuestTests: XCTestCase {
    private var runner: KeelRunner!

    override func setUpWithError() throws {
        runner = try KeelRunner.fromEnvironment(keelAccel: "tcg")
    }

    private func boot(_ recipe: GuestRecipe, smp: Int = 1, append: String? = nil, noReboot: Bool = true, testdev: Bool = false,
                      timeout: TimeInterval = 60, input: String? = nil, inputAfter: String? = nil) throws -> RunResult {
        let image = try GuestBuilder.shared.image(for: recipe)
        var options = MachineOptions(kernel: image)
        options.smp = smp
        options.append = append
        options.noReboot = noReboot
        options.testdev = testdev
        let result = try runner.run(options, timeout: timeout, input: input.map { Data($0.utf8) }, inputAfter: inputAfter)
        XCTAssertFalse(result.timedOut, "\(recipe.name) timed out after \(timeout) s\n\(describe(result))")
        return result
    }

    private func describe(_ r: RunResult) -> String {
        "[\(runner.emulator.name) -accel \(runner.keelAccel) status \(r.status)]\n--- stdout ---\n\(r.stdout)\n--- stderr ---\n\(r.stderr)"
    }

    private func assertLine(_ r: RunResult, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(r.lines.contains(expected), "missing line \"\(expected)\"\n\(describe(r))", file: file, line: line)
    }

    private func assertStatus(_ r: RunResult, _ status: Int32, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, status, "exit status\n\(describe(r))", file: file, line: line)
    }

    func testHelloUnderTCG() throws {
        let r = try boot(.hello, append: "exit=0x21 greeting=keel")
        assertLine(r, "hello from keel guest")
        assertLine(r, "cmdline: exit=0x21 greeting=keel")
        XCTAssertTrue(r.stdout.contains("magic 336ec578"), "PVH start_info magic\n\(describe(r))")
        assertStatus(r, KVMGuestTests.debugExitStatus(0x21))
    }

    func testPVHEntryThenOwnSwitchToLongModeUnderTCG() throws {
        let r = try boot(.longModePVH)
        XCTAssertTrue(r.stdout.contains("PE=1 PG=0 EFER.LMA=0"), "PVH entry state\n\(describe(r))")
        XCTAssertTrue(r.stdout.contains("LME=1 LMA=1 CR0.PG=1 CR4.PAE=1 CS=8"), describe(r))
        assertLine(r, "longmode ok")
        assertStatus(r, KVMGuestTests.pass)
    }

    func testLinux64BootProtocolUnderTCG() throws {
        let r = try boot(.linux64, append: "exit=0x15 console=ttyS0 keel.test=1")
        let entry = runner.emulator.isQEMU ? "32-bit" : "64-bit"
        XCTAssertTrue(r.stdout.contains("linux64: entry=\(entry) "), "expected the \(entry) entry\n\(describe(r))")
        XCTAssertTrue(r.stdout.contains("linux64: HdrS ok, protocol 2.0f"), describe(r))
        assertLine(r, "linux64: cmdline: exit=0x15 console=ttyS0 keel.test=1")
        XCTAssertTrue(r.lines.contains { $0.hasPrefix("linux64: e820 0000000000100000-") }, describe(r))
        assertStatus(r, KVMGuestTests.debugExitStatus(0x15))
    }

    func testPortAndMMIOReadbackUnderTCG() throws {
        let r = try boot(.pioMMIO, testdev: true)
        XCTAssertFalse(r.stdout.contains("FAIL"), describe(r))
        assertLine(r, "pio ok")
        assertLine(r, "pio: rep outsb ok")
        assertLine(r, "mmio ok")
        assertStatus(r, KVMGuestTests.pass)
    }

    func testRTCMatchesHostUTCUnderTCG() throws {
        let r = try boot(.rtc)
        assertStatus(r, KVMGuestTests.pass)
        guard let line = r.lines.first(where: { $0.hasPrefix("rtc: ") && $0.count == "rtc: YYYY-MM-DD HH:MM:SS".count }),
              let guestTime = KVMGuestTests.parseUTC(String(line.dropFirst(5)))
        else { return XCTFail("no rtc line\n\(describe(r))") }
        XCTAssertGreaterThanOrEqual(guestTime.timeIntervalSince(r.launched), -5, "\(line) vs launch \(r.launched)")
        XCTAssertLessThanOrEqual(guestTime.timeIntervalSince(r.finished), 5, "\(line) vs exit \(r.finished)")
    }

    func testACPIPoweroffUnderTCG() throws {
        let r = try boot(.poweroff)
        let lines = r.lines.filter { !$0.isEmpty }
        XCTAssertTrue(lines.last?.hasPrefix("poweroff: PM1a_CNT=") ?? false, describe(r))
        XCTAssertFalse(r.stdout.contains("poweroff failed"), describe(r))
        assertStatus(r, 0)
    }

    func testResetRebootsUnderTCG() throws {
        let r = try boot(.reboot, noReboot: false)
        assertLine(r, "reboot: boot 1")
        assertLine(r, "reboot: boot 2")
        XCTAssertLessThan(r.lines.firstIndex(of: "reboot: boot 1") ?? Int.max, r.lines.firstIndex(of: "reboot: boot 2") ?? -1, describe(r))
        XCTAssertFalse(r.stdout.contains("reset failed"), describe(r))
        assertStatus(r, KVMGuestTests.debugExitStatus(0x12))
    }

    func testResetWithNoRebootExitsUnderTCG() throws {
        let r = try boot(.reboot, noReboot: true)
        assertLine(r, "reboot: boot 1")
        XCTAssertFalse(r.stdout.contains("boot 2"), describe(r))
        assertStatus(r, 0)
    }

    func testSerialEchoPollingUnderTCG() throws {
        let r = try boot(.serialEcho, input: "hello keel, 42!\n", inputAfter: "echo: ready")
        assertLine(r, "echo: ready (polling)")
        assertLine(r, "HELLO KEEL, 42!")
        assertLine(r, "echo: done, 15 bytes, 0 interrupts")
        assertStatus(r, KVMGuestTests.pass)
    }

    func testSerialEchoInterruptDrivenThroughIOAPICUnderTCG() throws {
        let r = try boot(.serialEcho, append: "irq", input: "interrupts work\n", inputAfter: "echo: ready")
        assertLine(r, "echo: ready (irq)")
        assertLine(r, "INTERRUPTS WORK")
        XCTAssertTrue(r.stdout.contains("echo: done, 15 bytes, "), describe(r))
        XCTAssertFalse(r.stdout.contains(", 0 interrupts"), "no UART interrupt was delivered\n\(describe(r))")
        assertStatus(r, KVMGuestTests.pass)
    }

    func testSMPBringsUpTwoCPUsUnderTCG() throws {
        let r = try boot(.smp, smp: 2)
        assertLine(r, "smp: MADT lists 2 cpus, BSP APIC ID 0")
        assertLine(r, "smp: 2 of 2 cpus up")
        assertLine(r, "smp: AP APIC IDs: 1")
        assertStatus(r, KVMGuestTests.pass)
    }

    func testSMPBringsUpFourCPUsUnderTCG() throws {
        let r = try boot(.smp, smp: 4, timeout: 90)
        assertLine(r, "smp: MADT lists 4 cpus, BSP APIC ID 0")
        assertLine(r, "smp: 4 of 4 cpus up")
        let ids = r.lines.first { $0.hasPrefix("smp: AP APIC IDs:") }?
            .dropFirst("smp: AP APIC IDs:".count).split(separator: " ").compactMap { Int($0) }
        XCTAssertEqual(ids.map { Set($0) }, Set([1, 2, 3]), describe(r))
        assertStatus(r, KVMGuestTests.pass)
    }

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
        assertStatus(r, KVMGuestTests.pass, file: file, line: line)
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
