import Foundation
import XCTest

/// The guests whose work depends on interrupts, on `-M microvm`: kvm's split irqchip, where
/// the IOAPIC and PIT are Keel's and only the local APICs are in the kernel.
final class SplitIRQChipGuestTests: XCTestCase {
    var runner: KeelRunner!

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is absent: this host cannot run Keel's kvm accelerator")
        }
        runner = try KeelRunner.fromEnvironment()
        guard case .keel = runner.emulator else { throw XCTSkip("split irqchip is Keel's: QEMU runs are covered by KVMGuestTests") }
    }

    func boot(_ recipe: GuestRecipe, smp: Int = 1, append: String? = nil, input: String? = nil) throws -> RunResult {
        var o = MachineOptions(kernel: try GuestBuilder.shared.image(for: recipe))
        o.smp = smp
        o.append = append
        o.machine = "microvm"
        return try runner.run(o, timeout: 60, input: input.map { Data($0.utf8) }, inputAfter: input == nil ? nil : "echo: ready")
    }

    func testUARTInterruptsReachTheCPUThroughKeelsIOAPIC() throws {
        let r = try boot(.serialEcho, append: "irq", input: "split chip\n")
        XCTAssertTrue(r.lines.contains("SPLIT CHIP"), r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("echo: done, 10 bytes, "), r.stdout)
        XCTAssertFalse(r.stdout.contains(", 0 interrupts"), "no UART interrupt was delivered\n\(r.stdout)")
        XCTAssertEqual(r.status, KVMGuestTestsStatus.pass)
    }

    func testSMPStartsThroughTheKernelsLAPICs() throws {
        let r = try boot(.smp, smp: 3)
        XCTAssertTrue(r.lines.contains("smp: 3 of 3 cpus up"), r.stdout)
        XCTAssertEqual(r.status, KVMGuestTestsStatus.pass)
    }

    func testPowerOffAndRTC() throws {
        XCTAssertEqual(try boot(.poweroff).status, 0)
        let rtc = try boot(.rtc)
        XCTAssertTrue(rtc.stdout.contains("rtc: 20"), rtc.stdout)
        XCTAssertEqual(rtc.status, KVMGuestTestsStatus.pass)
    }
}

enum KVMGuestTestsStatus {
    static let pass: Int32 = (0x10 << 1) | 1
}
