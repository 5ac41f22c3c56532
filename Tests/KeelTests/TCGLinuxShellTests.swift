import Foundation
import XCTest

/// The default guest (Debian's stock cloud kernel + the project's initramfs) under -accel tcg:
/// an interactive shell on the serial console, SMP, and reboot with -no-reboot. These boots need
/// the release keel (the debug build is ~10x slower); scripts/test.sh builds it before the tests.
final class TCGLinuxShellTests: XCTestCase {
    struct NoReleaseKeel: Error, CustomStringConvertible {
        var description: String {
            "these Linux boots need a current release keel: run `swift build -c release --product keel` first (scripts/test.sh does)"
        }
    }

    var runner: KeelRunner!
    let guest = PackagePaths.root.appendingPathComponent("guest")

    override func setUpWithError() throws {
        let keel = try TCGLinuxBootTests.keel()
        guard keel.release else { throw NoReleaseKeel() }
        let fetch = try KeelRunner.runCommand(executable: PackagePaths.root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        runner = KeelRunner(emulator: .keel(binary: keel.path), keelAccel: "tcg")
    }

    func options(kernel: String, append: String, smp: Int = 1) -> MachineOptions {
        var o = MachineOptions(kernel: guest.appendingPathComponent(kernel))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.smp = smp
        o.append = "console=ttyS0 " + append
        return o
    }

    func testShellRoundTripOnTwoCPUs() throws {
        let input = "echo $((6*7))\necho cpus=$(grep -c ^processor /proc/cpuinfo)\npoweroff -f\n"
        let r = try runner.run(options(kernel: "vmlinuz", append: "keel.init=shell", smp: 2), timeout: 240,
                               input: Data(input.utf8), inputAfter: "keel# ")
        XCTAssertTrue(r.stdout.contains("KEEL-GUEST-READY"), r.stdout.suffix(3000).description)
        XCTAssertTrue(r.lines.contains("42"), "the shell did not answer 42:\n\(r.stdout.suffix(3000))")
        XCTAssertTrue(r.lines.contains("cpus=2"), "/proc/cpuinfo must list 2 CPUs:\n\(r.stdout.suffix(3000))")
        XCTAssertEqual(r.status, 0, "poweroff must end keel with status 0:\n\(r.stdout.suffix(2000))")
    }

    func testRebootWithNoRebootEndsKeel() throws {
        let r = try runner.run(options(kernel: "vmlinux", append: "keel.init=reboot"), timeout: 240)
        XCTAssertTrue(r.stdout.contains("KEEL-GUEST-READY"), r.stdout.suffix(3000).description)
        XCTAssertTrue(r.stdout.contains("reboot: Restarting system"), r.stdout.suffix(2000).description)
        XCTAssertEqual(r.status, 0, "-no-reboot: a guest reboot ends keel with status 0")
    }
}
