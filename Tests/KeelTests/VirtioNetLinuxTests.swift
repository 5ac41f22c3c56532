import Foundation
import XCTest

/// Debian's kernel under -accel tcg drives virtio-net-pci over a tap device. Everything happens
/// in a network namespace the test creates (and deletes): the tap's host end is 10.0.3.1, the
/// guest 10.0.3.2; no packet leaves the namespace. Needs root (namespaces, /dev/net/tun) and the
/// release keel.
final class VirtioNetLinuxTests: XCTestCase {
    var runner: KeelRunner!
    var keelPath = ""
    let guest = PackagePaths.root.appendingPathComponent("guest")
    var namespace: String?
    static let ip = "/usr/sbin/ip"
    static let peer = PackagePaths.root.appendingPathComponent("Tests/KeelTests/Scripts/tap_peer.py").path

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("network namespaces and tap devices need root") }
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else { throw XCTSkip("this host has no /dev/net/tun") }
        guard FileManager.default.isExecutableFile(atPath: Self.ip) else { throw XCTSkip("iproute2's ip is not installed") }
        let keel = try TCGLinuxBootTests.keel()
        guard keel.release else { throw TCGLinuxShellTests.NoReleaseKeel() }
        keelPath = keel.path
        let fetch = try KeelRunner.runCommand(executable: PackagePaths.root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        runner = KeelRunner(emulator: .keel(binary: keel.path), keelAccel: "tcg")
    }

    override func tearDownWithError() throws {
        if let ns = namespace { _ = try? Self.ipCommand(["netns", "del", ns]) }
    }

    @discardableResult
    static func ipCommand(_ args: [String]) throws -> RunResult {
        let r = try KeelRunner.runCommand(executable: ip, arguments: args, timeout: 30)
        XCTAssertEqual(r.status, 0, "ip \(args.joined(separator: " ")): \(r.stderr)")
        return r
    }

    /// A fresh namespace with loopback up and tap0 at 10.0.3.1/24 (created before Keel opens it).
    func makeNamespace(multiqueue: Bool = false) throws -> String {
        let ns = "keel-test-\(UInt32.random(in: 0...UInt32.max))"
        try Self.ipCommand(["netns", "add", ns])
        namespace = ns
        for args in [["link", "set", "lo", "up"], ["tuntap", "add", "dev", "tap0", "mode", "tap"] + (multiqueue ? ["multi_queue"] : []),
                     ["addr", "add", "10.0.3.1/24", "dev", "tap0"], ["link", "set", "tap0", "up"]] {
            try Self.ipCommand(["netns", "exec", ns, Self.ip] + args)
        }
        return ns
    }

    /// ping both ways, then 32 MiB each way with busybox nc; md5s compared on both ends.
    func testTapPingAndThirtyTwoMiBEachWay() throws {
        let ns = try makeNamespace()
        try checkPingTransferAndMAC(namespace: ns, arguments: ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"],
                                    size: 32 << 20, mac: "52:54:00:12:34:56", setsMAC: false, timeout: 420)
    }

    /// mq=on with a two-queue tap and two vCPUs: Linux sets two queue pairs over the control
    /// queue and transmits on the second from the second CPU.
    func testMultiqueueTwoPairs() throws {
        let ns = try makeNamespace(multiqueue: true)
        try checkMultiqueueTwoPairs(namespace: ns, arguments: ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,queues=2",
                                                               "-device", "virtio-net-pci,netdev=n0,mq=on"])
    }

    /// Boots two vCPUs with `arguments` (a two-pair NIC, eth0 on tap0 in `ns`): both pairs exist,
    /// a ping from the second CPU works, and the second transmit queue raised interrupts.
    func checkMultiqueueTwoPairs(namespace ns: String, arguments: [String], otherLog: () -> String = { "" },
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.smp = 2
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = arguments
        let commands = [
            "ip addr add 10.0.3.2/24 dev eth0; ip link set eth0 up",
            "echo q=$(ls /sys/class/net/eth0/queues)",
            "taskset 2 ping -c 3 10.0.3.1",
            "grep virtio0-output.1 /proc/interrupts",
            "poweroff -f",
        ]
        let input = commands.joined(separator: "\n") + "\n"
        let r = try KeelRunner.runCommand(executable: Self.ip, arguments: ["netns", "exec", ns, keelPath] + runner.arguments(for: o),
                                          timeout: 300, input: Data(input.utf8), inputAfter: "keel# ", inputLineDelay: 1.5)
        let context = "\n\(r.stdout.suffix(3000))\n\(r.stderr)\n\(otherLog())"
        XCTAssertFalse(r.timedOut, context, file: file, line: line)
        XCTAssertEqual(r.status, 0, context, file: file, line: line)
        XCTAssertTrue(r.lines.contains("q=rx-0 rx-1 tx-0 tx-1"), context, file: file, line: line)
        XCTAssertTrue(r.lines.contains("3 packets transmitted, 3 packets received, 0% packet loss"), context, file: file, line: line)
        // "NN:  c0  c1  PCI-MSI ...  virtio0-output.1": the second pair's transmit interrupts.
        let irq = try XCTUnwrap(r.lines.first { $0.hasSuffix("virtio0-output.1") && !$0.contains("grep") }, context, file: file, line: line)
        let counts = irq.split(separator: " ").dropFirst().prefix(2).compactMap { Int($0) }
        XCTAssertEqual(counts.count, 2, irq, file: file, line: line)
        XCTAssertGreaterThan(counts.reduce(0, +), 0, "the second transmit queue was never used: \(irq)", file: file, line: line)
    }

    /// Options the tap netdev refuses name the problem in one line, and Keel exits before booting.
    func testTapOptionErrors() throws {
        let ns = try makeNamespace()
        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        for (netdev, message) in [("tap,id=n0,ifname=tap0,script=/etc/qemu-ifup", "does not run network scripts"),
                                  ("tap,id=n0,ifname=this-name-is-too-long", "1 to 15 bytes"),
                                  ("tap,id=n0,fd=999", "fd=999")]
            + (access("/dev/vhost-net", F_OK) != 0 ? [("tap,id=n0,ifname=tap0,vhost=on", "/dev/vhost-net is not available")] : []) {
            o.extraArguments = ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
            let r = try KeelRunner.runCommand(executable: Self.ip, arguments: ["netns", "exec", ns, keelPath] + runner.arguments(for: o), timeout: 30)
            XCTAssertNotEqual(r.status, 0, netdev)
            XCTAssertTrue(r.stderr.contains(message), "\(netdev): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one line: \(r.stderr)")
        }
    }
}
