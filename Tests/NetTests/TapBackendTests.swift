import Foundation
import Loop
@testable import Net
import XCTest

/// TapBackend against the host kernel's tun driver. The tap is created (down, silent) and moved
/// at once into a network namespace the test makes, where its host end is 10.0.4.1; nothing is
/// sent outside that namespace. Needs root and /dev/net/tun.
final class TapBackendTests: XCTestCase {
    static let ip = "/usr/sbin/ip"
    var namespace: String?

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("tap devices and namespaces need root") }
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else { throw XCTSkip("this host has no /dev/net/tun") }
        guard FileManager.default.isExecutableFile(atPath: Self.ip) else { throw XCTSkip("iproute2's ip is not installed") }
    }

    override func tearDown() {
        if let ns = namespace { _ = try? Self.run(Self.ip, ["netns", "del", ns]) }
    }

    @discardableResult
    static func run(_ path: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "\(path) \(args.joined(separator: " ")): \(text)")
        return text
    }

    func inNamespace(_ args: [String]) throws -> String { try Self.run(Self.ip, ["netns", "exec", namespace!, Self.ip] + args) }

    /// Opens tap `name` with `queues` queues and moves it into a fresh namespace, up at 10.0.4.1/24.
    func openTap(queues: Int = 1) throws -> [TapBackend] {
        let tag = UInt32.random(in: 0...UInt32.max)
        let name = "kt\(String(tag, radix: 16))"
        let taps = try TapBackend.open(ifname: name, queues: queues)
        let ns = "keel-test-\(tag)"
        try Self.run(Self.ip, ["netns", "add", ns])
        namespace = ns
        try Self.run(Self.ip, ["link", "set", name, "netns", ns])
        _ = try inNamespace(["link", "set", "lo", "up"])
        _ = try inNamespace(["addr", "add", "10.0.4.1/24", "dev", name])
        _ = try inNamespace(["link", "set", name, "up"])
        return taps
    }

    final class Receiver: NetReceiver {
        let lock = NSLock()
        var frames: [[UInt8]] = []
        var refuse = false
        var refused = 0
        var writable = 0
        let arrived = DispatchSemaphore(value: 0)
        func receive(_ frame: UnsafeRawBufferPointer) -> Bool {
            lock.lock(); defer { lock.unlock() }
            if refuse { refused += 1; return false }
            frames.append(Array(frame))
            arrived.signal()
            return true
        }
        func backendWritable() { writable += 1 }
        func take() -> [[UInt8]] { lock.lock(); defer { lock.unlock() }; return frames }
    }

    /// Runs `loop` on a thread until the test's end.
    func start(_ loop: EventLoop) -> Thread {
        let t = Thread { loop.run() }
        t.start()
        addTeardownBlock { loop.stop() }
        return t
    }

    /// Waits for an ARP request for `target` (ethertype 0x0806, opcode 1) after the vnet header.
    func waitForARP(_ r: Receiver, target: [UInt8], timeout: TimeInterval = 10) -> [UInt8]? {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end {
            if let f = r.take().first(where: { $0.count >= 12 + 42 && $0[24] == 0x08 && $0[25] == 0x06 && $0[32] == 0 && $0[33] == 1 && Array($0[50..<54]) == target }) {
                return f
            }
            _ = r.arrived.wait(timeout: .now() + 0.2)
        }
        return nil
    }

    func testOpenReceiveSendAndOffloads() throws {
        let taps = try openTap()
        let tap = try XCTUnwrap(taps.first)
        XCTAssertEqual(tap.vnetHeaderLength, 12)
        XCTAssertTrue(tap.supportedOffloads.isSuperset(of: [.checksum, .tso4, .tso6, .tsoECN]), "\(tap.supportedOffloads)")
        XCTAssertNoThrow(try tap.setOffloads([.checksum, .tso4, .tso6]))
        XCTAssertNoThrow(try tap.setOffloads([]))
        let loop = try EventLoop()
        let r = Receiver()
        try tap.attach(to: loop, receiver: r)
        _ = start(loop)
        // The namespace's stack ARPs for 10.0.4.2 when asked to reach it.
        let pinger = Process()
        pinger.executableURL = URL(fileURLWithPath: Self.ip)
        pinger.arguments = ["netns", "exec", namespace!, "/usr/bin/python3", "-c",
                            "import socket\nfor i in range(20):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',('10.0.4.2',9)); import time; time.sleep(0.25)"]
        try pinger.run()
        defer { pinger.terminate() }
        let arp = try XCTUnwrap(waitForARP(r, target: [10, 0, 4, 2]), "no ARP request for 10.0.4.2 came out of the tap")
        XCTAssertEqual(Array(arp[0..<12]), [UInt8](repeating: 0, count: 12), "a plain frame has a zeroed vnet header")
        let hostMAC = Array(arp[18..<24])
        // Answer it: the kernel then lists 10.0.4.2 at our address.
        let ours: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x99]
        var reply = [UInt8](repeating: 0, count: 12) + hostMAC + ours + [0x08, 0x06]
        reply += [0, 1, 8, 0, 6, 4, 0, 2] + ours + [10, 0, 4, 2] + hostMAC + [10, 0, 4, 1]
        let result = reply.withUnsafeBytes { b -> NetSendResult in
            let seg = [NetSegment(base: b.baseAddress! , count: 30), NetSegment(base: b.baseAddress! + 30, count: b.count - 30)]
            return seg.withUnsafeBufferPointer { tap.send($0) }
        }
        XCTAssertEqual(result, .sent)
        var neighbours = ""
        for _ in 0..<20 {
            neighbours = try inNamespace(["neigh", "show", "10.0.4.2"])
            if neighbours.contains("52:54:00:12:34:99") { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertTrue(neighbours.contains("52:54:00:12:34:99"), "the ARP reply written to the tap reached the stack: \(neighbours)")
        tap.detach()
    }

    func testRefusedFrameIsKeptAndOfferedAgain() throws {
        let tap = try XCTUnwrap(try openTap().first)
        let loop = try EventLoop()
        let r = Receiver()
        r.refuse = true
        try tap.attach(to: loop, receiver: r)
        _ = start(loop)
        let sender = Process()
        sender.executableURL = URL(fileURLWithPath: Self.ip)
        sender.arguments = ["netns", "exec", namespace!, "/usr/bin/python3", "-c",
                            "import socket,time\nfor i in range(20):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',('10.0.4.2',9)); time.sleep(0.25)"]
        try sender.run()
        defer { sender.terminate() }
        let end = Date().addingTimeInterval(10)
        while Date() < end && r.refused == 0 { Thread.sleep(forTimeInterval: 0.05) }
        XCTAssertEqual(r.refused, 1, "one refusal stops reading (no polling while the NIC has no room)")
        Thread.sleep(forTimeInterval: 0.6)
        XCTAssertEqual(r.refused, 1, "still not polled")
        r.lock.lock(); r.refuse = false; r.lock.unlock()
        loop.post { tap.setReceiveEnabled(true) }
        XCTAssertNotNil(waitForARP(r, target: [10, 0, 4, 2]), "the held frame and the rest arrive after re-enabling")
        tap.detach()
    }

    func testMultiqueueAndAdoptedFD() throws {
        let taps = try openTap(queues: 2)
        XCTAssertEqual(taps.count, 2)
        XCTAssertEqual(taps[0].interfaceName, taps[1].interfaceName)
        let copy = dup(taps[1].fd)
        let adopted = try TapBackend.adopt(fd: copy)
        XCTAssertEqual(adopted.interfaceName, taps[0].interfaceName)
        XCTAssertEqual(adopted.vnetHeaderLength, 12)
        let notTap = open("/dev/null", O_RDWR)
        XCTAssertThrowsError(try TapBackend.adopt(fd: notTap)) { XCTAssertTrue("\($0)".contains("fd=\(notTap)"), "\($0)") }
        close(notTap)
        XCTAssertThrowsError(try TapBackend.open(ifname: "much-too-long-name")) { XCTAssertTrue("\($0)".contains("much-too-long-name")) }
    }
}
