import Foundation
import XCTest

/// Keel's vhost-user-net front-end (`-netdev vhost-user`) against Keel's own back-end
/// (`keel vhost-user-net --tap=tap0`), with Debian's kernel under -accel tcg. As in
/// VirtioNetLinuxTests, everything runs in a network namespace the test creates: tap0 is
/// 10.0.3.1 on the host side, the guest 10.0.3.2. Needs root and the release keel.
final class VhostUserNetLinuxTests: XCTestCase {
    let net = VirtioNetLinuxTests(name: "VirtioNetLinuxTests.helper", testClosure: { _ in })
    var backend: Process?
    var scratch: URL!

    override func setUpWithError() throws {
        try net.setUpWithError()
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("keel-vhost-net-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let b = backend, b.isRunning { b.terminate(); b.waitUntilExit() }
        try net.tearDownWithError()
        if let s = scratch { try? FileManager.default.removeItem(at: s) }
    }

    func startBackend(namespace ns: String, socket: String) throws -> (Process, URL) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: VirtioNetLinuxTests.ip)
        p.arguments = ["netns", "exec", ns, net.keelPath, "vhost-user-net", "--socket-path=\(socket)", "--tap=tap0"]
        let log = scratch.appendingPathComponent("backend.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let h = try FileHandle(forWritingTo: log)
        p.standardOutput = h
        p.standardError = h
        try p.run()
        backend = p
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: socket) {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            guard Date() < deadline, p.isRunning else { XCTFail("keel vhost-user-net did not create \(socket): \(text)"); throw XCTSkip("no back-end") }
            usleep(50_000)
        }
        return (p, log)
    }

    /// ping both ways, then 4 MiB each way with busybox nc; md5s compared on both ends; the
    /// MAC comes from -device (the front-end's config space), not the back-end's default.
    func testPingAndFourMiBEachWayThroughKeelBackend() throws {
        let ns = try net.makeNamespace()
        let socket = scratch.appendingPathComponent("net.sock").path
        let (_, backendLog) = try startBackend(namespace: ns, socket: socket)
        let size = 4 << 20
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: VirtioNetLinuxTests.ip)
        peer.arguments = ["netns", "exec", ns, "/usr/bin/python3", VirtioNetLinuxTests.peer, "10.0.3.1", "10.0.3.2", "5001", "5002", "\(size)", "300"]
        let peerOut = Pipe()
        peer.standardOutput = peerOut
        peer.standardError = peerOut
        try peer.run()
        defer { if peer.isRunning { peer.terminate() } }

        var o = MachineOptions(kernel: net.guest.appendingPathComponent("vmlinuz"))
        o.initrd = net.guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
                            "-chardev", "socket,id=c0,path=\(socket)", "-netdev", "vhost-user,id=n0,chardev=c0",
                            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:ef"]
        let commands = [
            "ip addr add 10.0.3.2/24 dev eth0; ip link set eth0 up",
            "ping -c 3 10.0.3.1; cat /sys/class/net/eth0/address",
            "dd if=/dev/urandom of=/tmp/f bs=1M count=4 2>/dev/null",
            "echo f=$(md5sum < /tmp/f)",
            "nc 10.0.3.1 5001 < /tmp/f; echo nc1=$?",
            "nc -l -p 5002 < /dev/null > /tmp/g; echo nc2=$?",
            "echo g=$(md5sum < /tmp/g)",
            // VIRTIO_NET_CTRL_MAC_ADDR_SET over the control queue Keel keeps in the front-end.
            "ip link set dev eth0 address 52:54:00:ab:cd:01 && echo macset=$(cat /sys/class/net/eth0/address)",
            "poweroff -f",
        ]
        let input = commands.joined(separator: "\n") + "\n"
        let r = try KeelRunner.runCommand(executable: VirtioNetLinuxTests.ip,
                                          arguments: ["netns", "exec", ns, net.keelPath] + net.runner.arguments(for: o),
                                          timeout: 300, input: Data(input.utf8), inputAfter: "keel# ", inputLineDelay: 1.5)
        peer.waitUntilExit()
        let peerText = String(decoding: peerOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let backendText = (try? String(contentsOf: backendLog, encoding: .utf8)) ?? ""
        let context = "\nguest:\n\(r.stdout.suffix(3000))\nkeel stderr: \(r.stderr)\nhost peer:\n\(peerText)\nback-end:\n\(backendText)"
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)")
        XCTAssertEqual(r.status, 0, context)
        let lines = r.lines
        XCTAssertTrue(lines.contains("3 packets transmitted, 3 packets received, 0% packet loss"), "guest -> host ping:\(context)")
        XCTAssertTrue(lines.contains("52:54:00:ab:cd:ef"), "the -device mac=:\(context)")
        XCTAssertTrue(peerText.contains("PING-OK 3"), "host -> guest ping:\(context)")
        func md5(_ prefix: String, in text: [String]) -> String? {
            text.first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count).prefix(32)) }
        }
        let peerLines = peerText.split(separator: "\n").map(String.init)
        let guestFile = md5("f=", in: lines)
        XCTAssertNotNil(guestFile, context)
        XCTAssertEqual(guestFile, md5("RECV-MD5 ", in: peerLines), "guest -> host: 4 MiB must arrive intact:\(context)")
        XCTAssertTrue(lines.contains("nc1=0"), context)
        let hostSent = md5("SENT-MD5 ", in: peerLines)
        XCTAssertNotNil(hostSent, context)
        XCTAssertEqual(hostSent, md5("g=", in: lines), "host -> guest: 4 MiB must arrive intact:\(context)")
        XCTAssertTrue(lines.contains("nc2=0"), context)
        XCTAssertTrue(lines.contains("macset=52:54:00:ab:cd:01"), "MAC_ADDR_SET over the front-end's control queue:\(context)")
    }
}
