import Foundation
import XCTest

/// Debian's stock cloud kernel booting to the initramfs marker under -enable-kvm. Needs hardware
/// virtualization: on PVM (this project's development hosts) stock Linux cannot run.
final class LinuxBootKVMTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    override func setUpWithError() throws {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let words = Set(flags.split(separator: " ").map(String.init))
        guard words.contains("vmx") || words.contains("svm") else {
            throw XCTSkip("no hardware virtualization (VMX/SVM) on this host: /dev/kvm here is a software hypervisor (PVM) that cannot run stock Linux kernels")
        }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { throw XCTSkip("no /dev/kvm on this host") }
    }

    func boot(kernel: String) throws {
        let fetch = Process()
        fetch.executableURL = Self.root.appendingPathComponent("scripts/fetch-default-guest.sh")
        fetch.standardOutput = FileHandle.nullDevice
        try fetch.run(); fetch.waitUntilExit()
        XCTAssertEqual(fetch.terminationStatus, 0, "fetch-default-guest.sh failed")
        let guest = Self.root.appendingPathComponent("guest")
        let p = Process()
        p.executableURL = Self.root.appendingPathComponent(".build/debug/keel")
        p.arguments = ["-enable-kvm", "-m", "512", "-smp", "2", "-kernel", guest.appendingPathComponent(kernel).path,
                       "-initrd", guest.appendingPathComponent("initrd.img").path,
                       "-append", "console=ttyS0 keel.init=poweroff", "-nographic", "-no-reboot"]
        let out = Pipe()
        p.standardOutput = out
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let deadline = DispatchTime.now() + 120
        DispatchQueue.global().asyncAfter(deadline: deadline) { if p.isRunning { p.terminate() } }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertTrue(text.contains("KEEL-GUEST-READY"), "no marker in:\n\(text.suffix(3000))")
        XCTAssertEqual(p.terminationStatus, 0, "the guest's poweroff must end Keel with status 0")
    }

    func testBzImageBootsToMarker() throws { try boot(kernel: "vmlinuz") }
    func testPVHVmlinuxBootsToMarker() throws { try boot(kernel: "vmlinux") }
}
