import Foundation
import XCTest

/// What the kvm and tcg runs of Keel's own small guests share: booting a recipe, the
/// assertions, and the checks both accelerators must pass with the same guest output.
class OwnGuestTestCase: XCTestCase {
    var runner: KeelRunner!

    /// isa-debug-exit: the host sees (code << 1) | 1.
    static func debugExitStatus(_ code: Int32) -> Int32 { (code << 1) | 1 }
    static let pass = debugExitStatus(0x10)

    func boot(_ recipe: GuestRecipe, smp: Int = 1, append: String? = nil, noReboot: Bool = true,
              testdev: Bool = false, serial: SerialBackend = .stdio, timeout: TimeInterval = 60,
              input: String? = nil, inputAfter: String? = nil,
              whileRunning: (() throws -> Void)? = nil) throws -> RunResult {
        let image = try GuestBuilder.shared.image(for: recipe)
        var options = MachineOptions(kernel: image)
        options.smp = smp
        options.append = append
        options.noReboot = noReboot
        options.testdev = testdev
        options.serial = serial
        let result = try runner.run(options, timeout: timeout, input: input.map { Data($0.utf8) },
                                    inputAfter: inputAfter, whileRunning: whileRunning)
        XCTAssertFalse(result.timedOut, "\(recipe.name) timed out after \(timeout) s\n\(describe(result))")
        return result
    }

    func describe(_ r: RunResult) -> String {
        "[\(runner.emulator.name) -accel \(runner.keelAccel) status \(r.status)]\n--- stdout ---\n\(r.stdout)\n--- stderr ---\n\(r.stderr)"
    }

    func assertLine(_ r: RunResult, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(r.lines.contains(expected), "missing line \"\(expected)\"\n\(describe(r))", file: file, line: line)
    }

    func assertStatus(_ r: RunResult, _ status: Int32, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, status, "exit status\n\(describe(r))", file: file, line: line)
    }

    static func parseUTC(_ text: String) -> Date? {
        let parts = text.split(whereSeparator: { $0 == "-" || $0 == " " || $0 == ":" }).compactMap { Int($0) }
        guard parts.count == 6 else { return nil }
        var components = DateComponents()
        (components.year, components.month, components.day) = (parts[0], parts[1], parts[2])
        (components.hour, components.minute, components.second) = (parts[3], parts[4], parts[5])
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar.date(from: components)
    }

    // MARK: - Checks both accelerators run

    func checkHello() throws {
        let r = try boot(.hello, append: "exit=0x21 greeting=keel")
        assertLine(r, "hello from keel guest")
        assertLine(r, "cmdline: exit=0x21 greeting=keel")
        XCTAssertTrue(r.stdout.contains("magic 336ec578"), "PVH start_info magic\n\(describe(r))")
        assertStatus(r, Self.debugExitStatus(0x21))
    }

    func checkPVHEntryThenOwnSwitchToLongMode() throws {
        let r = try boot(.longModePVH)
        XCTAssertTrue(r.stdout.contains("PE=1 PG=0 EFER.LMA=0"), "PVH entry state\n\(describe(r))")
        XCTAssertTrue(r.stdout.contains("LME=1 LMA=1 CR0.PG=1 CR4.PAE=1 CS=8"), describe(r))
        assertLine(r, "longmode ok")
        assertStatus(r, Self.pass)
    }

    func checkLinux64BootProtocol() throws {
        let r = try boot(.linux64, append: "exit=0x15 console=ttyS0 keel.test=1")
        // QEMU enters through its real-mode option ROM and our setup (32-bit entry); Keel must use
        // the 64-bit entry at load address + 0x200.
        let entry = runner.emulator.isQEMU ? "32-bit" : "64-bit"
        XCTAssertTrue(r.stdout.contains("linux64: entry=\(entry) "), "expected the \(entry) entry\n\(describe(r))")
        XCTAssertTrue(r.stdout.contains("linux64: HdrS ok, protocol 2.0f"), describe(r))
        assertLine(r, "linux64: cmdline: exit=0x15 console=ttyS0 keel.test=1")
        let count = r.lines.first { $0.hasPrefix("linux64: e820 entries: ") }
            .flatMap { Int($0.dropFirst("linux64: e820 entries: ".count)) }
        XCTAssertNotNil(count, describe(r))
        XCTAssertGreaterThan(count ?? 0, 0, "e820 table is empty\n\(describe(r))")
        XCTAssertEqual(r.lines.filter { $0.hasPrefix("linux64: e820 0") }.count, count ?? -1, describe(r))
        XCTAssertTrue(r.lines.contains { $0.hasPrefix("linux64: e820 0000000000100000-") }, describe(r))
        assertStatus(r, Self.debugExitStatus(0x15))
    }

    func checkPortAndMMIOReadback() throws {
        let r = try boot(.pioMMIO, testdev: true)
        XCTAssertFalse(r.stdout.contains("FAIL"), describe(r))
        assertLine(r, "pio ok")
        assertLine(r, "pio: rep outsb ok")
        assertLine(r, "mmio ok")
        assertStatus(r, Self.pass)
    }

    func checkSMP(cpus: Int) throws {
        let r = try boot(.smp, smp: cpus, timeout: cpus > 2 ? 90 : 60)
        assertLine(r, "smp: MADT lists \(cpus) cpus, BSP APIC ID 0")
        assertLine(r, "smp: \(cpus) of \(cpus) cpus up")
        let ids = r.lines.first { $0.hasPrefix("smp: AP APIC IDs:") }?
            .dropFirst("smp: AP APIC IDs:".count).split(separator: " ").compactMap { Int($0) }
        XCTAssertEqual(ids.map { Set($0) }, Set(1..<cpus), describe(r))
        assertStatus(r, Self.pass)
    }

    func checkRTCMatchesHostUTC() throws {
        let r = try boot(.rtc)
        assertStatus(r, Self.pass)
        guard let line = r.lines.first(where: { $0.hasPrefix("rtc: ") && $0.count == "rtc: YYYY-MM-DD HH:MM:SS".count }),
              let guestTime = Self.parseUTC(String(line.dropFirst(5)))
        else { return XCTFail("no rtc line\n\(describe(r))") }
        // The guest read the clock somewhere between launch and exit; allow ±5 s around that.
        XCTAssertGreaterThanOrEqual(guestTime.timeIntervalSince(r.launched), -5, "\(line) vs launch \(r.launched)")
        XCTAssertLessThanOrEqual(guestTime.timeIntervalSince(r.finished), 5, "\(line) vs exit \(r.finished)")
    }

    func checkACPIPoweroffThroughS5() throws {
        let r = try boot(.poweroff)
        let lines = r.lines.filter { !$0.isEmpty }
        XCTAssertTrue(lines.last?.hasPrefix("poweroff: PM1a_CNT=") ?? false,
                      "the PM1a_CNT write must be the last thing the guest did\n\(describe(r))")
        XCTAssertFalse(r.stdout.contains("poweroff failed"), describe(r))
        assertStatus(r, 0)
    }

    func checkResetRebootsTheMachine() throws {
        let r = try boot(.reboot, noReboot: false)
        assertLine(r, "reboot: boot 1")
        assertLine(r, "reboot: boot 2")
        let first = r.lines.firstIndex(of: "reboot: boot 1") ?? Int.max
        let second = r.lines.firstIndex(of: "reboot: boot 2") ?? -1
        XCTAssertLessThan(first, second, describe(r))
        XCTAssertFalse(r.stdout.contains("reset failed"), describe(r))
        assertStatus(r, Self.debugExitStatus(0x12))
    }

    func checkResetWithNoRebootExits() throws {
        let r = try boot(.reboot, noReboot: true)
        assertLine(r, "reboot: boot 1")
        XCTAssertFalse(r.stdout.contains("boot 2"), describe(r))
        XCTAssertFalse(r.stdout.contains("reset failed"), describe(r))
        assertStatus(r, 0)
    }

    func checkSerialEchoPolling() throws {
        let r = try boot(.serialEcho, input: "hello keel, 42!\n", inputAfter: "echo: ready")
        assertLine(r, "echo: ready (polling)")
        assertLine(r, "HELLO KEEL, 42!")
        assertLine(r, "echo: done, 15 bytes, 0 interrupts")
        assertStatus(r, Self.pass)
    }

    func checkSerialEchoInterruptDrivenThroughIOAPIC() throws {
        let r = try boot(.serialEcho, append: "irq", input: "interrupts work\n", inputAfter: "echo: ready")
        assertLine(r, "echo: ready (irq)")
        assertLine(r, "INTERRUPTS WORK")
        XCTAssertTrue(r.stdout.contains("echo: done, 15 bytes, "), describe(r))
        XCTAssertFalse(r.stdout.contains(", 0 interrupts"), "no UART interrupt was delivered\n\(describe(r))")
        assertStatus(r, Self.pass)
    }
}
