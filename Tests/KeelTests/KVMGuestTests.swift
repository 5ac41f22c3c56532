import Foundation
import XCTest

/// Keel's own small guests under `keel -accel kvm` (or, with KEEL_TEST_EMULATOR=qemu / qemu-kvm,
/// under qemu-system-x86_64 -accel tcg / kvm, which proves the guests and the harness against QEMU).
final class KVMGuestTests: OwnGuestTestCase {
    override func setUpWithError() throws {
        if KeelRunner.requestedEmulator != "qemu" {
            guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
                throw XCTSkip("/dev/kvm is absent: this host cannot run Keel's kvm accelerator")
            }
        }
        runner = try KeelRunner.fromEnvironment()
    }

    // MARK: - Guests

    func testHelloPrintsCommandLineAndExitsWithChosenCode() throws { try checkHello() }
    func testPVHEntryThenOwnSwitchToLongMode() throws { try checkPVHEntryThenOwnSwitchToLongMode() }
    func testLinux64BootProtocol() throws { try checkLinux64BootProtocol() }
    func testPortAndMMIOReadbackThroughPCTestdev() throws { try checkPortAndMMIOReadback() }
    func testSMPBringsUpTwoCPUs() throws { try checkSMP(cpus: 2) }
    func testSMPBringsUpFourCPUs() throws { try checkSMP(cpus: 4) }
    func testRTCMatchesHostUTC() throws { try checkRTCMatchesHostUTC() }
    func testACPIPoweroffThroughS5() throws { try checkACPIPoweroffThroughS5() }
    func testResetRebootsTheMachine() throws { try checkResetRebootsTheMachine() }
    func testResetWithNoRebootExits() throws { try checkResetWithNoRebootExits() }
    func testSerialEchoPolling() throws { try checkSerialEchoPolling() }
    func testSerialEchoInterruptDrivenThroughIOAPIC() throws { try checkSerialEchoInterruptDrivenThroughIOAPIC() }

    // MARK: - Serial backends

    func testSerialFileBackend() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-serial-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try boot(.hello, append: "via-file", serial: .file(path))
        assertStatus(r, Self.pass)
        let written = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let lines = RunResult.consoleLines(written)
        XCTAssertTrue(lines.contains("hello from keel guest"), "serial file: \(written)\n\(describe(r))")
        XCTAssertTrue(lines.contains("cmdline: via-file"), "serial file: \(written)")
        XCTAssertFalse(r.stdout.contains("hello from keel guest"), "guest output leaked to stdout\n\(describe(r))")
    }

    func testSerialUnixSocketBackend() throws {
        // sun_path is short: keep the socket in /tmp.
        let path = "/tmp/keel-serial-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        var received = ""
        let r = try boot(.serialEcho, serial: .unixServer(path), timeout: 60) {
            let client = try UnixSocketClient(path: path, timeout: 30)
            // wait=off drops output sent before we connected; the guest repeats "ready" each second
            // until its first byte, and input sent before it is ready could meet firmware.
            received = client.receive(until: "echo: ready", timeout: 30)
            try client.send(Data("over a socket\n".utf8))
            received += client.receive(until: " interrupts", timeout: 30)
        }
        let lines = RunResult.consoleLines(received)
        XCTAssertTrue(lines.contains("OVER A SOCKET"), "socket received: \(received)\n\(describe(r))")
        XCTAssertTrue(received.contains("echo: done, 13 bytes"), "socket received: \(received)")
        assertStatus(r, Self.pass)
    }

    // MARK: - Benchmark guest

    func testPioLoopBenchmarkGuestRuns() throws {
        let r = try boot(.pioLoop, append: "count=2000", testdev: true)
        assertLine(r, "pio-loop: 2000 pio writes from ring 3")
        // Ring 3 where IOPL 3 is honoured (QEMU, hardware KVM); PVM faults and falls back to ring 0.
        XCTAssertTrue(r.stdout.contains("pio-loop: done 2000 pio writes in ring "), describe(r))
        assertStatus(r, Self.pass)
    }

    func testPioLoopBenchmarkGuestMMIOFromRing3() throws {
        let r = try boot(.pioLoop, append: "count=2000 access=mmio", testdev: true)
        XCTAssertTrue(r.stdout.contains("pio-loop: done 2000 mmio writes in ring 3"), describe(r))
        assertStatus(r, Self.pass)
    }
}
