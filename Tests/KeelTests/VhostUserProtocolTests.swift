import Foundation
import XCTest

/// Malformed vhost-user messages, both directions: Keel's back-end ends that connection with a
/// one-line error and keeps serving; Keel's front-end refuses a back-end that answers garbage
/// with a one-line error instead of crashing.
final class VhostUserProtocolTests: XCTestCase {
    var scratch: URL!
    var keel: String!
    var backend: Process?
    var backendLog: URL!

    override func setUpWithError() throws {
        keel = try TCGLinuxBootTests.keel().path
        scratch = URL(fileURLWithPath: "/tmp/keel-vhp-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        signal(SIGPIPE, SIG_IGN)
    }

    override func tearDownWithError() throws {
        if let b = backend, b.isRunning { kill(b.processIdentifier, SIGKILL); b.waitUntilExit() }
        try? FileManager.default.removeItem(at: scratch)
    }

    func startKeelBackend() throws -> String {
        let disk = scratch.appendingPathComponent("d.img")
        try Data(count: 1 << 20).write(to: disk)
        let socket = scratch.appendingPathComponent("b.sock").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: keel)
        p.arguments = ["vhost-user-blk", "--socket-path=\(socket)", "--blk-file=\(disk.path)"]
        backendLog = scratch.appendingPathComponent("b.log")
        FileManager.default.createFile(atPath: backendLog.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: backendLog)
        try p.run()
        backend = p
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: socket) {
            XCTAssertTrue(Date() < deadline && p.isRunning, "the back-end did not start")
            if !(Date() < deadline && p.isRunning) { break }
            usleep(20_000)
        }
        return socket
    }

    static func connect(_ path: String) -> Int32 {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(r, 0, "connect \(path)")
        return s
    }

    static func header(_ request: UInt32, flags: UInt32 = 1, size: UInt32) -> [UInt8] {
        var b: [UInt8] = []
        for v in [request, flags, size] { for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        return b
    }

    /// Reads until EOF or `seconds`; returns the bytes and whether the peer closed.
    static func drain(_ fd: Int32, seconds: Int32) -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, seconds * 1000) > 0 else { return (out, false) }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return (out, true) }
            out += buf[0..<n]
        }
    }

    func sendAndExpectClose(_ socket: String, _ bytes: [UInt8], _ what: String) {
        let fd = Self.connect(socket)
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let r = Self.drain(fd, seconds: 8)
        XCTAssertTrue(r.closed, "\(what): the back-end must end the connection")
        XCTAssertTrue(backend?.isRunning == true, "\(what): the back-end must live")
    }

    func testBackendEndsMalformedConnectionsAndKeepsServing() throws {
        let socket = try startKeelBackend()
        sendAndExpectClose(socket, Self.header(1, flags: 2, size: 0), "protocol version 2")
        sendAndExpectClose(socket, Self.header(1, size: 0x10_0000), "a 1 MiB payload")
        sendAndExpectClose(socket, Self.header(99, size: 0), "unknown request 99")
        sendAndExpectClose(socket, Self.header(12, size: 8) + [0, 0, 0, 0, 0, 0, 0, 0], "SET_VRING_KICK without its fd")
        sendAndExpectClose(socket, Self.header(5, size: 8) + [1, 0, 0, 0, 0, 0, 0, 0], "SET_MEM_TABLE with a short table")
        sendAndExpectClose(socket, Self.header(2, size: 4) + [0, 0, 0, 0], "SET_FEATURES with 4 bytes")
        sendAndExpectClose(socket, Self.header(8, size: 8) + [0x40, 0, 0, 0, 3, 0, 0, 0], "SET_VRING_NUM for queue 64, size 3")
        sendAndExpectClose(socket, Self.header(1, size: 8) + [1, 2, 3], "a payload cut short (the back-end times out)")
        sendAndExpectClose(socket, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] + [UInt8](repeating: 0xFF, count: 100), "garbage")

        // Still serving: GET_FEATURES gets its 20-byte reply with VERSION_1 and PROTOCOL_FEATURES.
        let fd = Self.connect(socket)
        defer { close(fd) }
        let h = Self.header(1, size: 0)
        _ = h.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var reply = [UInt8](repeating: 0, count: 20)
        let n = recv(fd, &reply, 20, Int32(MSG_WAITALL))
        XCTAssertEqual(n, 20)
        XCTAssertEqual(Array(reply[0..<12]), Self.header(1, flags: 5, size: 8))
        let features = reply[12..<20].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        XCTAssertNotEqual(features & (1 << 32), 0, "VIRTIO_F_VERSION_1")
        XCTAssertNotEqual(features & (1 << 30), 0, "VHOST_USER_F_PROTOCOL_FEATURES")
        let log = (try? String(contentsOf: backendLog)) ?? ""
        XCTAssertTrue(log.contains("unknown request 99"), log)
        XCTAssertTrue(log.contains("SET_MEM_TABLE"), log)
    }

    /// A fake back-end answers Keel's first request with `reply`; Keel must exit with one line.
    func frontendAgainst(_ reply: [UInt8], _ what: String) throws {
        let socket = scratch.appendingPathComponent("fake-\(UUID().uuidString.prefix(4)).sock").path
        let listener = socket.withCString { _ in Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { $0.copyBytes(from: Array(socket.utf8)) }
        let b = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        XCTAssertEqual(b, 0)
        XCTAssertEqual(listen(listener, 1), 0)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let c = accept(listener, nil, nil)
            var h = [UInt8](repeating: 0, count: 12)
            _ = recv(c, &h, 12, Int32(MSG_WAITALL))
            _ = reply.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            _ = VhostUserProtocolTests.drain(c, seconds: 10)
            close(c)
            done.signal()
        }
        let r = try KeelRunner.runCommand(executable: keel, arguments: [
            "-accel", "tcg", "-m", "64", "-kernel", PackagePaths.root.appendingPathComponent("guest/vmlinuz").path, "-nographic",
            "-object", "memory-backend-memfd,id=mem,size=64M,share=on", "-machine", "memory-backend=mem",
            "-chardev", "socket,id=c0,path=\(socket)", "-device", "vhost-user-blk-pci,chardev=c0"], timeout: 30)
        _ = done.wait(timeout: .now() + 15)
        close(listener)
        XCTAssertFalse(r.timedOut, what)
        XCTAssertEqual(r.status, 1, "\(what): \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "\(what): one line: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("vhost-user-blk-pci,chardev=c0"), "\(what): \(r.stderr)")
    }

    func testFrontendRefusesMalformedReplies() throws {
        try frontendAgainst(Self.header(1, flags: 1, size: 8) + [0, 0, 0, 0, 0, 0, 0, 0], "a reply without the REPLY flag")
        try frontendAgainst(Self.header(2, flags: 5, size: 8) + [0, 0, 0, 0, 0, 0, 0, 0], "a reply to another request")
        try frontendAgainst(Self.header(1, flags: 5, size: 0x7FFF_FFFF), "a 2 GiB payload")
        try frontendAgainst(Self.header(1, flags: 5, size: 4) + [0, 0, 0, 0], "a 4-byte features reply")
        try frontendAgainst(Self.header(1, flags: 6, size: 8), "protocol version 2")
        try frontendAgainst([], "the back-end hanging up")
    }

    func testVhostUserNeedsSharedMemory() throws {
        let r = try KeelRunner.runCommand(executable: keel, arguments: [
            "-accel", "tcg", "-m", "64", "-kernel", PackagePaths.root.appendingPathComponent("guest/vmlinuz").path, "-nographic",
            "-chardev", "socket,id=c0,path=/tmp/none.sock", "-device", "vhost-user-blk-pci,chardev=c0"], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "keel: Failed initializing vhost-user memory map, consider using -object memory-backend-memfd share=on\n")
    }
}
