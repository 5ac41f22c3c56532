import Foundation
import XCTest

extension GuestRecipe {
    static let virtioNet = pvh("virtio-net", "virtio-net.gc")
}

/// Keel's virtio-net-pci under kvm, driven by the project's own guest driver (virtio-net.gc) over
/// a tap in a network namespace the test creates (host end 10.0.5.1, the guest 10.0.5.2): an ARP
/// round trip with the host kernel, then a hostile driver whose malformed chains and commands
/// Keel must survive. Needs /dev/kvm and root (namespaces, /dev/net/tun).
final class VirtioNetKVMGuestTests: XCTestCase {
    var runner: KeelRunner!
    var namespace: String?
    static let ip = "/usr/sbin/ip"

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is absent: this host cannot run Keel's kvm accelerator")
        }
        guard getuid() == 0 else { throw XCTSkip("network namespaces and tap devices need root") }
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else { throw XCTSkip("this host has no /dev/net/tun") }
        runner = try KeelRunner.fromEnvironment()
        guard case .keel = runner.emulator else { throw XCTSkip("the tap namespace set-up is Keel's run") }
    }

    override func tearDownWithError() throws {
        if let ns = namespace { _ = try? KeelRunner.runCommand(executable: Self.ip, arguments: ["netns", "del", ns], timeout: 30) }
    }

    func boot(append: String) throws -> RunResult {
        let ns = "keel-test-\(UInt32.random(in: 0...UInt32.max))"
        for args in [["netns", "add", ns], ["netns", "exec", ns, Self.ip, "link", "set", "lo", "up"],
                     ["netns", "exec", ns, Self.ip, "tuntap", "add", "dev", "tap0", "mode", "tap"],
                     ["netns", "exec", ns, Self.ip, "addr", "add", "10.0.5.1/24", "dev", "tap0"],
                     ["netns", "exec", ns, Self.ip, "link", "set", "tap0", "up"]] {
            let r = try KeelRunner.runCommand(executable: Self.ip, arguments: args, timeout: 30)
            XCTAssertEqual(r.status, 0, "ip \(args.joined(separator: " ")): \(r.stderr)")
            if args[1] == "add" { namespace = ns }
        }
        var o = MachineOptions(kernel: try GuestBuilder.shared.image(for: .virtioNet))
        o.append = append
        o.extraArguments = ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"]
        return try KeelRunner.runCommand(executable: Self.ip, arguments: ["netns", "exec", ns, runner.binary] + runner.arguments(for: o),
                                         timeout: 120)
    }

    func testARPRoundTripWithTheHostKernel() throws {
        let r = try boot(append: "")
        XCTAssertEqual(r.status, KVMGuestTestsStatus.pass, "\(r.stdout)\n\(r.stderr)")
        XCTAssertTrue(r.lines.contains("virtio-net: mac 52:54:00:12:34:56, link up"), r.stdout)
        XCTAssertTrue(r.lines.contains("virtio-net: ARP reply from 10.0.5.1 first"), r.stdout)
    }

    /// Malformed transmit/receive chains and control commands are answered (ERR or dropped) with
    /// the device still running; broken rings end in NEEDS_RESET and the device works after a
    /// reset. Keel must stay up throughout and exit with the guest's pass.
    func testHostileDriver() throws {
        let r = try boot(append: "hostile")
        XCTAssertEqual(r.status, KVMGuestTestsStatus.pass, "\(r.stdout)\n\(r.stderr)")
        for line in ["virtio-net: hostile bad control commands -> answered, still running",
                     "virtio-net: ARP reply from 10.0.5.1 to the new address, promiscuous off",
                     "virtio-net: hostile transmit descriptor loop -> NEEDS_RESET, reset, works again",
                     "virtio-net: hostile receive available index jump -> NEEDS_RESET, reset, works again",
                     "virtio-net: hostile: 4 cases recovered", "virtio-net: pass"] {
            XCTAssertTrue(r.lines.contains(line), "missing '\(line)':\n\(r.stdout)")
        }
    }
}
