import Foundation
import XCTest

extension VirtioNetLinuxTests {
    /// The NIC tests' common round in namespace `ns` (tap0 10.0.3.1, the guest 10.0.3.2): keel
    /// with `arguments` (the -netdev/-device pair and what it needs), ping both ways, `size`
    /// bytes each way with busybox nc and md5s compared on both ends, `mac` seen by the guest,
    /// and with `setsMAC` a new MAC set over the control queue (VIRTIO_NET_CTRL_MAC_ADDR_SET).
    /// `otherLog` adds another process's output to the failure messages.
    func checkPingTransferAndMAC(namespace ns: String, arguments: [String], size: Int = 4 << 20, mac: String = "52:54:00:ab:cd:ef",
                                 setsMAC: Bool = true, timeout: TimeInterval = 300, otherLog: () -> String = { "" }) throws {
        let mib = size >> 20
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: Self.ip)
        peer.arguments = ["netns", "exec", ns, "/usr/bin/python3", Self.peer, "10.0.3.1", "10.0.3.2", "5001", "5002", "\(size)", "\(Int(timeout))"]
        let peerOut = Pipe()
        peer.standardOutput = peerOut
        peer.standardError = peerOut
        try peer.run()
        defer { if peer.isRunning { peer.terminate() } }

        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = arguments
        let commands = [
            "ip addr add 10.0.3.2/24 dev eth0; ip link set eth0 up",
            "ping -c 3 10.0.3.1; cat /sys/class/net/eth0/address",
            "dd if=/dev/urandom of=/tmp/f bs=1M count=\(mib) 2>/dev/null",
            "echo f=$(md5sum < /tmp/f)",
            "nc 10.0.3.1 5001 < /tmp/f; echo nc1=$?",
            "nc -l -p 5002 < /dev/null > /tmp/g; echo nc2=$?",
            "echo g=$(md5sum < /tmp/g)",
        ] + (setsMAC ? ["ip link set dev eth0 address 52:54:00:ab:cd:01 && echo macset=$(cat /sys/class/net/eth0/address)"] : []) + [
            "poweroff -f",
        ]
        let input = commands.joined(separator: "\n") + "\n"
        let r = try KeelRunner.runCommand(executable: Self.ip, arguments: ["netns", "exec", ns, keelPath] + runner.arguments(for: o),
                                          timeout: timeout, input: Data(input.utf8), inputAfter: "keel# ")
        peer.waitUntilExit()
        let peerText = String(decoding: peerOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let context = "\nguest:\n\(r.stdout.suffix(3000))\nkeel stderr: \(r.stderr)\nhost peer:\n\(peerText)\n\(otherLog())"
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)")
        XCTAssertEqual(r.status, 0, context)
        let lines = r.lines
        XCTAssertTrue(lines.contains("3 packets transmitted, 3 packets received, 0% packet loss"), "guest -> host ping:\(context)")
        XCTAssertTrue(lines.contains(mac), "the MAC \(mac):\(context)")
        XCTAssertTrue(peerText.contains("PING-OK 3"), "host -> guest ping:\(context)")
        func md5(_ prefix: String, in text: [String]) -> String? {
            text.first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count).prefix(32)) }
        }
        let peerLines = peerText.split(separator: "\n").map(String.init)
        let guestFile = md5("f=", in: lines)
        XCTAssertNotNil(guestFile, context)
        XCTAssertEqual(guestFile, md5("RECV-MD5 ", in: peerLines), "guest -> host: \(mib) MiB must arrive intact:\(context)")
        XCTAssertTrue(lines.contains("nc1=0"), context)
        let hostSent = md5("SENT-MD5 ", in: peerLines)
        XCTAssertNotNil(hostSent, context)
        XCTAssertEqual(hostSent, md5("g=", in: lines), "host -> guest: \(mib) MiB must arrive intact:\(context)")
        XCTAssertTrue(lines.contains("nc2=0"), context)
        if setsMAC {
            XCTAssertTrue(lines.contains("macset=52:54:00:ab:cd:01"), "MAC_ADDR_SET over the control queue:\(context)")
        }
        XCTAssertFalse(r.stderr.contains("keel: vhost"), "no vhost error:\(context)")
    }
}
