import Foundation
import XCTest

/// The vhost-kernel data paths with Debian's kernel under -accel tcg: `-netdev tap,vhost=on`
/// (frames move between the rings and the tap inside the host kernel; Keel never reads the tap)
/// and `-device vhost-vsock-pci` (AF_VSOCK both ways between the host and the guest). They need
/// the host's /dev/vhost-net and /dev/vhost-vsock and skip, saying so, where those are missing.
final class VhostKernelLinuxTests: XCTestCase {
    static let vsockPeer = PackagePaths.root.appendingPathComponent("Tests/KeelTests/Scripts/vsock_peer.py").path
    static let vsockEcho = PackagePaths.root.appendingPathComponent("Tests/KeelTests/Scripts/vsock_echo.c").path

    /// As VhostUserNetLinuxTests, with the kernel's vhost-net in place of the back-end: ping both
    /// ways, 4 MiB each way with md5s compared, and the MAC from -device.
    func testVhostNetPingAndFourMiBEachWay() throws {
        guard access("/dev/vhost-net", R_OK | W_OK) == 0 else { throw XCTSkip("needs /dev/vhost-net (not on this host)") }
        let net = VirtioNetLinuxTests(name: "VirtioNetLinuxTests.helper", testClosure: { _ in })
        try net.setUpWithError()
        defer { try? net.tearDownWithError() }
        let ns = try net.makeNamespace()
        try net.checkPingTransferAndMAC(namespace: ns, arguments: [
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=on", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:ef",
        ])
    }

    /// The guest connects to the host (CID 2) and the host accepts; then the host connects to
    /// the guest's CID and 1 MiB comes back byte-identical from the guest's echo server.
    func testVsockBothWays() throws {
        guard access("/dev/vhost-vsock", R_OK | W_OK) == 0 else { throw XCTSkip("needs /dev/vhost-vsock (not on this host)") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/gcc") else { throw XCTSkip("gcc is needed to build the guest's vsock helper") }
        let guest = try DefaultGuest(scratchPrefix: "keel-vhost-vsock")
        defer { guest.removeScratch() }
        let helper = guest.scratch.appendingPathComponent("vsock_echo")
        let cc = try KeelRunner.runCommand(executable: "/usr/bin/gcc", arguments: ["-static", "-O2", "-o", helper.path, Self.vsockEcho], timeout: 120)
        guard cc.status == 0 else { throw XCTSkip("gcc -static cannot build the helper here (no static libc?): \(cc.stderr)") }
        let initrd = try guest.initramfs(adding: [("vsock_echo", try Data(contentsOf: helper))])

        let cid = UInt32.random(in: 1000...1_000_000)
        let echoPort = 5201, acceptPort = 5202, size = 1 << 20
        let peer = Process()
        peer.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        peer.arguments = [Self.vsockPeer, "\(cid)", "\(echoPort)", "\(acceptPort)", "\(size)", "240"]
        let peerOut = Pipe()
        peer.standardOutput = peerOut
        peer.standardError = peerOut
        try peer.run()
        defer { if peer.isRunning { peer.terminate() } }

        let r = try guest.runShell([
            "ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/ | grep -c virtio",
            "/vsock_echo listen \(echoPort) & sleep 1; /vsock_echo send 2 \(acceptPort) hello-from-guest; wait; echo vsock-done",
        ], extra: ["-device", "vhost-vsock-pci,guest-cid=\(cid)"], initrd: initrd, timeout: 300)
        peer.waitUntilExit()
        let peerText = String(decoding: peerOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let context = "\nguest:\n\(r.stdout.suffix(3000))\nkeel stderr: \(r.stderr)\nhost peer:\n\(peerText)"
        XCTAssertTrue(peerText.contains("ACCEPTED \(cid) hello-from-guest"), "host accepts from the guest's CID:\(context)")
        XCTAssertTrue(r.lines.contains("VSOCK-SENT host-ack"), "the guest reads the host's answer:\(context)")
        XCTAssertTrue(peerText.contains("ECHO-OK \(size)"), "host -> guest -> host, 1 MiB intact:\(context)")
        XCTAssertTrue(r.lines.contains("VSOCK-ECHOED \(size)"), context)
        XCTAssertTrue(r.lines.contains("vsock-done"), context)
    }
}
