import Foundation
import XCTest

/// Debian's stock cloud kernel booting to the initramfs marker under -enable-kvm. Needs hardware
/// virtualization: on PVM (this project's development hosts) stock Linux cannot run.
final class LinuxBootKVMTests: XCTestCase {
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
        let root = PackagePaths.root
        let fetch = try KeelRunner.runCommand(executable: root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        let guest = root.appendingPathComponent("guest")
        let r = try KeelRunner.runCommand(
            executable: root.appendingPathComponent(".build/debug/keel").path,
            arguments: ["-enable-kvm", "-m", "512", "-smp", "2", "-kernel", guest.appendingPathComponent(kernel).path,
                        "-initrd", guest.appendingPathComponent("initrd.img").path,
                        "-append", "console=ttyS0 keel.init=poweroff", "-nographic", "-no-reboot"],
            timeout: 120)
        XCTAssertTrue(r.stdout.contains("KEEL-GUEST-READY"), "no marker in:\n\(r.stdout.suffix(3000))")
        XCTAssertEqual(r.status, 0, "the guest's poweroff must end Keel with status 0")
    }

    func testBzImageBootsToMarker() throws { try boot(kernel: "vmlinuz") }
    func testPVHVmlinuxBootsToMarker() throws { try boot(kernel: "vmlinux") }
}
