import Foundation
import XCTest

/// Debian's kernel under -accel tcg drives virtio-net over the user (libslirp) and socket
/// backends. Everything stays on the host's loopback. These boots need the release keel.
final class NetBackendLinuxTests: XCTestCase {
    var runner: KeelRunner!
    let guest = PackagePaths.root.appendingPathComponent("guest")

    override func setUpWithError() throws {
        let keel = try TCGLinuxBootTests.keel()
        guard keel.release else { throw TCGLinuxShellTests.NoReleaseKeel() }
        let fetch = try KeelRunner.runCommand(executable: PackagePaths.root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        runner = KeelRunner(emulator: .keel(binary: keel.path), keelAccel: "tcg")
    }

    func options(_ extra: [String]) -> MachineOptions {
        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 256
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = extra
        return o
    }

    func runShell(_ commands: [String], extra: [String], timeout: TimeInterval = 300,
                  whileRunning: (() throws -> Void)? = nil) throws -> RunResult {
        let input = (commands + ["poweroff -f"]).joined(separator: "\n") + "\n"
        let r = try runner.run(options(extra), timeout: timeout, input: Data(input.utf8), inputAfter: "keel# ",
                               inputLineDelay: 1.5, whileRunning: whileRunning)
        XCTAssertFalse(r.timedOut, "the guest did not power off:\n\(r.stdout.suffix(3000))")
        XCTAssertEqual(r.status, 0, "poweroff must end keel with status 0:\n\(r.stdout.suffix(2000))\n\(r.stderr)")
        return r
    }

    /// busybox udhcpc runs a script for each lease event; this one configures eth0 from it.
    /// Short lines: the serial console's input is typed a line at a time.
    static let dhcpCommands = [
        "echo '#!/bin/sh' >/tmp/d.sh",
        "echo '[ \"$1\" = bound ] || exit 0' >>/tmp/d.sh",
        "echo 'ifconfig $interface $ip netmask $subnet' >>/tmp/d.sh",
        "echo 'route add default gw $router' >>/tmp/d.sh",
        "chmod +x /tmp/d.sh; ifconfig eth0 up",
        "udhcpc -i eth0 -s /tmp/d.sh -q -n -t 10 -T 3",
        "ifconfig eth0 | grep 'inet addr'",
    ]

    /// user: DHCP gives 10.0.2.15; the guest reaches a host server on 127.0.0.1 through 10.0.2.2;
    /// a host client reaches a guest server through hostfwd.
    func testUserNetworkingDHCPHostLoopbackAndHostForward() throws {
        let server = LoopbackServer()
        let forwardPort = Self.freePort()
        let extra = ["-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:\(forwardPort)-:7777",
                     "-device", "virtio-net-pci,netdev=n0"]
        // The guest's server starts first; its greeting to the host server says it listens, so the
        // host client connects only then (an earlier attempt would leave slirp a half-closed
        // connection for the guest's one-shot nc to accept).
        let commands = Self.dhcpCommands + [
            "(echo GUEST-FWD-REPLY | timeout 120 nc -l -p 7777 >/tmp/fwd) &",
            "sleep 2; echo GUEST-HELLO | timeout 60 nc 10.0.2.2 \(server.port)",
            "wait; cat /tmp/fwd",
        ]
        server.start(reply: "HOST-REPLY\n", after: "GUEST-HELLO")
        var forwarded = ""
        let r = try runShell(commands, extra: extra, whileRunning: {
            guard server.greeted.wait(timeout: .now() + 240) == .success else { return }
            forwarded = Self.forwardClient(port: forwardPort, expect: "GUEST-FWD-REPLY", send: "HOST-FWD-DATA\n", deadline: 60)
        })
        let context = "\n" + r.stdout.suffix(4000) + "\n" + r.stderr
        XCTAssertTrue(r.lines.contains { $0.contains("inet addr:10.0.2.15") }, "no DHCP lease of 10.0.2.15:\(context)")
        XCTAssertTrue(server.received().contains("GUEST-HELLO"), "the host server got \(server.received().debugDescription):\(context)")
        XCTAssertTrue(r.lines.contains("HOST-REPLY"), "the host's reply did not reach the guest:\(context)")
        XCTAssertTrue(forwarded.contains("GUEST-FWD-REPLY"), "hostfwd did not reach the guest server (got \(forwarded.debugDescription)):\(context)")
        XCTAssertTrue(r.lines.contains("HOST-FWD-DATA"), "the host's data did not reach the guest through hostfwd:\(context)")
    }

    /// socket: one guest listens on 127.0.0.1:P, the other connects; they ping each other.
    func testTwoGuestsOverASocketNetdevPingEachOther() throws {
        let port = Self.freePort()
        func commands(me: String, peer: String) -> [String] {
            // Wait for the peer to answer (the guests boot at their own pace), ping it, and stay
            // up a while so the peer's pings are answered too.
            ["ifconfig eth0 192.168.77.\(me) netmask 255.255.255.0 up",
             "for i in $(seq 90); do ping -c1 -W2 192.168.77.\(peer) && break; done",
             "ping -c 3 192.168.77.\(peer) | grep 'packets received'",
             "sleep 20"]
        }
        var b: RunResult?
        let a = try runShell(commands(me: "1", peer: "2"),
                             extra: ["-netdev", "socket,id=n0,listen=127.0.0.1:\(port)",
                                     "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:01"],
                             timeout: 420, whileRunning: {
            // The listener exists once keel has set up its devices; connect= fails at start otherwise.
            Thread.sleep(forTimeInterval: 2)
            b = try self.runShell(commands(me: "2", peer: "1"),
                                  extra: ["-netdev", "socket,id=n0,connect=127.0.0.1:\(port)",
                                          "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:02"],
                                  timeout: 400)
        })
        let bOut = b.map { "\n--- B ---\n" + $0.stdout.suffix(2500) + $0.stderr } ?? ""
        let context = "\n--- A ---\n" + a.stdout.suffix(2500) + a.stderr + bOut
        XCTAssertTrue(a.lines.contains { $0.contains("3 packets received") }, "A's pings to B:\(context)")
        XCTAssertTrue(b?.lines.contains { $0.contains("3 packets received") } ?? false, "B's pings to A:\(context)")
    }

    // MARK: - Host side

    static func freePort() -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = loopback(port: 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(fd, $0, len); _ = getsockname(fd, $0, &len)
        } }
        return UInt16(bigEndian: a.sin_port)
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    /// Reads from `fd` until `marker` arrives, the peer closes or `timeout` passes.
    static func read(_ fd: Int32, until marker: String, timeout: TimeInterval) -> String {
        var got = Data()
        let end = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < end, !(String(decoding: got, as: UTF8.self).contains(marker)) {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 200) >= 0 else { break }
            if p.revents == 0 { continue }
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { break }
            got.append(contentsOf: buf[0..<n])
        }
        return String(decoding: got, as: UTF8.self)
    }

    /// Connects to the hostfwd port until the guest's server answers with `expect` (a guest that
    /// does not listen yet refuses slirp's connection and the host side closes), then sends.
    static func forwardClient(port: UInt16, expect: String, send text: String, deadline: TimeInterval) -> String {
        let end = Date().addingTimeInterval(deadline)
        while Date() < end {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            // A connect that may wait: until the guest's NIC takes frames, slirp does not poll
            // its sockets and the connection sits in the listener's backlog.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var a = loopback(port: port)
            var rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            if rc != 0, errno == EINPROGRESS {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                var err: Int32 = 0
                var len = socklen_t(4)
                if poll(&p, 1, 3000) == 1, getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 { rc = 0 }
            }
            if rc == 0 {
                let got = read(fd, until: expect, timeout: 3)
                if got.contains(expect) {
                    _ = text.withCString { write(fd, $0, strlen($0)) }
                    Thread.sleep(forTimeInterval: 1)
                    close(fd)
                    return got
                }
            }
            close(fd)
            Thread.sleep(forTimeInterval: 1)
        }
        return ""
    }
}

/// A TCP server on 127.0.0.1 that takes one connection, reads until a marker, replies, closes.
final class LoopbackServer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    private let lock = NSLock()
    private var got = ""
    /// Signalled once the marker has arrived.
    let greeted = DispatchSemaphore(value: 0)

    init() {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = NetBackendLinuxTests.loopback(port: 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(s, $0, len); _ = getsockname(s, $0, &len)
        } }
        listen(s, 4)
        fd = s
        port = UInt16(bigEndian: a.sin_port)
    }

    deinit { close(fd) }

    func start(reply: String, after marker: String) {
        Thread.detachNewThread { [self] in
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 280_000) == 1 else { return }
            let c = accept(fd, nil, nil)
            guard c >= 0 else { return }
            let text = NetBackendLinuxTests.read(c, until: marker, timeout: 60)
            lock.lock(); got = text; lock.unlock()
            if text.contains(marker) { greeted.signal() }
            _ = reply.withCString { write(c, $0, strlen($0)) }
            close(c)
        }
    }

    func received() -> String { lock.lock(); defer { lock.unlock() }; return got }
}
