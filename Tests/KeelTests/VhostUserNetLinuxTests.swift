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

    func startBackend(namespace ns: String, socket: String, extra: [String] = []) throws -> (Process, URL) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: VirtioNetLinuxTests.ip)
        p.arguments = ["netns", "exec", ns, net.keelPath, "vhost-user-net", "--socket-path=\(socket)", "--tap=tap0"] + extra
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

    /// ping both ways, then 4 MiB each way; the MAC comes from -device (the front-end's config
    /// space), not the back-end's default, and changes over the front-end's control queue.
    func testPingAndFourMiBEachWayThroughKeelBackend() throws {
        let ns = try net.makeNamespace()
        let socket = scratch.appendingPathComponent("net.sock").path
        let (_, backendLog) = try startBackend(namespace: ns, socket: socket)
        try net.checkPingTransferAndMAC(namespace: ns, arguments: [
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
            "-chardev", "socket,id=c0,path=\(socket)", "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:ef",
        ]) { "back-end:\n" + ((try? String(contentsOf: backendLog, encoding: .utf8)) ?? "") }
    }

    /// queues=2 on both sides and mq=on, two vCPUs: VQ_PAIRS_SET reaches the back-end as
    /// SET_VRING_ENABLE, and the second pair carries the second CPU's traffic.
    func testMultiqueueTwoPairsThroughKeelBackend() throws {
        let ns = try net.makeNamespace(multiqueue: true)
        let socket = scratch.appendingPathComponent("net.sock").path
        let (_, backendLog) = try startBackend(namespace: ns, socket: socket, extra: ["--queues=2"])
        try net.checkMultiqueueTwoPairs(namespace: ns, arguments: [
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
            "-chardev", "socket,id=c0,path=\(socket)", "-netdev", "vhost-user,id=n0,chardev=c0,queues=2",
            "-device", "virtio-net-pci,netdev=n0,mq=on",
        ]) { "back-end:\n" + ((try? String(contentsOf: backendLog, encoding: .utf8)) ?? "") }
    }
}
