import Devices
import Foundation
import Loop
import XCTest

/// Plain client/server socket helpers for the other end of a unix chardev.
enum Peer {
    static func address(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in path.utf8.enumerated() { dst[i] = b }
        }
        return addr
    }

    static func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = address(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r != 0 { close(fd); return -1 }
        setTimeout(fd)
        return fd
    }

    static func listen(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = address(path)
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        Glibc.listen(fd, 4)
        return fd
    }

    static func setTimeout(_ fd: Int32) {
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func send(_ fd: Int32, _ s: String) {
        let bytes = Array(s.utf8)
        XCTAssertEqual(bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bytes.count)
    }

    /// Reads until `count` bytes arrived or the receive timeout passes.
    static func receive(_ fd: Int32, count: Int) -> String {
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while got.count < count {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min($0.count, count - got.count), 0) }
            if n <= 0 { break }
            got.append(contentsOf: buf[0..<n])
        }
        return String(decoding: got, as: UTF8.self)
    }
}

final class ChardevTests: XCTestCase {
    var loop: LoopThread!
    var cleanup: [() -> Void] = []

    override func setUpWithError() throws {
        loop = try LoopThread()
    }

    override func tearDown() {
        loop.stop()
        for c in cleanup.reversed() { c() }
        cleanup = []
    }

    func write(_ chardev: Chardev, _ s: String) {
        loop.lock.withLock {
            var s = s
            s.withUTF8 { chardev.write(UnsafeRawBufferPointer($0)) }
        }
    }

    func received(_ f: RecordingFrontend) -> String {
        loop.lock.withLock { String(decoding: f.received, as: UTF8.self) }
    }

    func testFileChardevWritesAndTruncates() throws {
        let path = temporaryPath("serial.log")
        cleanup.append { unlink(path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data("old contents".utf8))
        let chardev = try openChardev(.file(path: path), loop: loop.loop, muxEscape: false, onQuit: {})
        write(chardev, "hello\r\n")
        write(chardev, "world")
        chardev.close()
        chardev.close()
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "hello\r\nworld")
    }

    func testFileChardevErrorNamesThePath() {
        XCTAssertThrowsError(try openChardev(.file(path: "/nonexistent-dir/x.log"), loop: loop.loop, muxEscape: false, onQuit: {})) {
            XCTAssertEqual("\($0)", "-serial file:/nonexistent-dir/x.log: cannot open: No such file or directory")
        }
    }

    func testUnixClientErrorNamesThePath() {
        let path = temporaryPath("absent.sock")
        XCTAssertThrowsError(try openChardev(.unixSocket(path: path, server: false, wait: false), loop: loop.loop,
                                             muxEscape: false, onQuit: {})) {
            XCTAssertEqual("\($0)", "-serial unix:\(path): cannot connect: No such file or directory")
        }
    }

    func testUnixServerRoundTripsAndAcceptsTheNextClient() throws {
        let path = temporaryPath("server.sock")
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: false), loop: loop.loop,
                                      muxEscape: false, onQuit: {})
        let server = try XCTUnwrap(chardev as? UnixSocketChardev)
        cleanup.append { chardev.close() } // after the loop stopped
        let frontend = RecordingFrontend()
        chardev.frontend = frontend
        write(chardev, "dropped: nobody is connected")
        loop.start()

        let c1 = Peer.connect(path)
        XCTAssertGreaterThanOrEqual(c1, 0)
        XCTAssertTrue(waitUntil(loop.lock) { server.isConnected })
        Peer.send(c1, "from client 1")
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 13 })
        XCTAssertEqual(received(frontend), "from client 1")
        write(chardev, "to client 1")
        XCTAssertEqual(Peer.receive(c1, count: 11), "to client 1")

        // A second client waits in the backlog until the first leaves.
        let c2 = Peer.connect(path)
        XCTAssertGreaterThanOrEqual(c2, 0)
        Peer.send(c2, "early")
        usleep(50_000)
        XCTAssertEqual(received(frontend), "from client 1", "only one client at a time")
        close(c1)
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 18 })
        XCTAssertEqual(received(frontend), "from client 1early")
        write(chardev, "to client 2")
        XCTAssertEqual(Peer.receive(c2, count: 11), "to client 2")
        close(c2)
        XCTAssertTrue(waitUntil(loop.lock) { !server.isConnected })
        write(chardev, "dropped again")
        loop.stop()
        chardev.close()
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "the socket file is removed at close")
    }

    func testUnixServerWaitBlocksUntilAClientConnects() throws {
        let path = temporaryPath("wait.sock")
        let connected = expectation(description: "client connected")
        final class Box: @unchecked Sendable { var fd: Int32 = -1 }
        let box = Box()
        DispatchQueue.global().async {
            for _ in 0..<300 where box.fd < 0 {
                usleep(10_000)
                box.fd = Peer.connect(path)
            }
            connected.fulfill()
        }
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: true), loop: loop.loop,
                                      muxEscape: false, onQuit: {})
        wait(for: [connected], timeout: 5)
        let clientFD = box.fd
        XCTAssertGreaterThanOrEqual(clientFD, 0)
        XCTAssertTrue((chardev as? UnixSocketChardev)?.isConnected ?? false)
        write(chardev, "hi")
        XCTAssertEqual(Peer.receive(clientFD, count: 2), "hi")
        close(clientFD)
        chardev.close()
    }

    func testUnixClientRoundTrip() throws {
        let path = temporaryPath("client.sock")
        let listener = Peer.listen(path)
        cleanup.append { close(listener); unlink(path) }
        let chardev = try openChardev(.unixSocket(path: path, server: false, wait: true), loop: loop.loop,
                                      muxEscape: false, onQuit: {})
        cleanup.append { chardev.close() }
        let peer = accept(listener, nil, nil)
        XCTAssertGreaterThanOrEqual(peer, 0)
        Peer.setTimeout(peer)
        let frontend = RecordingFrontend()
        chardev.frontend = frontend
        loop.start()
        write(chardev, "guest says hi")
        XCTAssertEqual(Peer.receive(peer, count: 13), "guest says hi")
        Peer.send(peer, "host says hi")
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 12 })
        XCTAssertEqual(received(frontend), "host says hi")
        close(peer)
        XCTAssertTrue(waitUntil(loop.lock) { !((chardev as? UnixSocketChardev)?.isConnected ?? true) })
        write(chardev, "dropped")
        loop.stop()
    }

    func testInputPausesAtCapacityAndResumes() throws {
        let path = temporaryPath("flow.sock")
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: false), loop: loop.loop,
                                      muxEscape: false, onQuit: {})
        cleanup.append { chardev.close() } // after the loop stopped
        let frontend = RecordingFrontend(capacity: 4)
        chardev.frontend = frontend
        loop.start()
        let c = Peer.connect(path)
        defer { close(c) }
        Peer.send(c, "0123456789")
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 4 })
        usleep(50_000)
        XCTAssertEqual(received(frontend), "0123", "no more than the frontend can take")
        loop.lock.withLock {
            frontend.drain()
            chardev.frontendCanReceive()
        }
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 8 })
        loop.lock.withLock {
            frontend.drain()
            chardev.frontendCanReceive()
        }
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 10 })
        XCTAssertEqual(received(frontend), "0123456789")
    }

    /// The serial port and a unix chardev together: the UART takes 16 bytes into its FIFO,
    /// input pauses, and the guest's reads let the rest in.
    func testSerialReceivesThroughUnixSocketWithFlowControl() throws {
        let path = temporaryPath("uart.sock")
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: false), loop: loop.loop,
                                      muxEscape: false, onQuit: {})
        cleanup.append { chardev.close() } // after the loop stopped
        let irq = RecordingInterruptLine()
        let uart = Serial16550(interrupt: irq, chardev: chardev)
        uart.outb(2, 0x01) // FIFOs on
        uart.outb(1, 0x01) // received-data interrupt
        loop.start()
        let c = Peer.connect(path)
        defer { close(c) }
        let text = "The quick brown fox jumps over the lazy dog"
        Peer.send(c, text)
        var got: [UInt8] = []
        let deadline = Date().addingTimeInterval(5)
        while got.count < text.utf8.count && Date() < deadline {
            loop.lock.withLock {
                XCTAssertLessThanOrEqual(uart.receiveFIFOCount, 16)
                while uart.inb(5) & 0x01 != 0 { got.append(uart.inb(0)) }
            }
            usleep(1000)
        }
        XCTAssertEqual(String(decoding: got, as: UTF8.self), text)
        loop.lock.withLock { uart.outb(0, 0x21) }
        XCTAssertEqual(Peer.receive(c, count: 1), "!")
    }

    func testMuxEscapeQuitOverUnixSocket() throws {
        let path = temporaryPath("mux.sock")
        var quits = 0
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: false), loop: loop.loop,
                                      muxEscape: true, onQuit: { quits += 1 })
        cleanup.append { chardev.close() } // after the loop stopped
        let frontend = RecordingFrontend(capacity: 3)
        chardev.frontend = frontend
        loop.start()
        let c = Peer.connect(path)
        defer { close(c) }
        // The frontend takes 3 bytes; with the escapes on, input keeps being read (held or
        // dropped) so that C-a x still works while the guest reads nothing.
        Peer.send(c, "abcdef\u{1}\u{1}\u{1}h")
        XCTAssertEqual(Peer.receive(c, count: MuxEscape.helpText.utf8.count), MuxEscape.helpText)
        Peer.send(c, "\u{1}x")
        XCTAssertEqual(Peer.receive(c, count: MuxEscape.terminatedText.utf8.count), MuxEscape.terminatedText)
        XCTAssertTrue(waitUntil(loop.lock) { quits == 1 })
        XCTAssertEqual(received(frontend), "abc")
        loop.lock.withLock {
            frontend.drain()
            chardev.frontendCanReceive()
        }
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 6 })
        loop.lock.withLock {
            frontend.drain()
            chardev.frontendCanReceive()
        }
        XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == 7 })
        XCTAssertEqual(received(frontend), "abcdef\u{1}", "held input arrives in order, C-a C-a as one C-a")
    }

    func testMuxedInputLargerThanTheGuestTakesIsNotDropped() throws {
        // A script pasted into `-nographic`'s console while the guest reads 16 bytes at a time
        // (a UART FIFO): every byte arrives, in order.
        let path = temporaryPath("paste.sock")
        let chardev = try openChardev(.unixSocket(path: path, server: true, wait: false), loop: loop.loop,
                                      muxEscape: true, onQuit: {})
        cleanup.append { chardev.close() }
        let frontend = RecordingFrontend(capacity: 16)
        chardev.frontend = frontend
        loop.start()
        let c = Peer.connect(path)
        defer { close(c) }
        let text = (0..<400).map { "line \($0): echo $((6*7))\n" }.joined()
        Peer.send(c, text)
        let total = text.utf8.count
        while loop.lock.withLock({ frontend.received.count }) < total {
            let before = loop.lock.withLock { () -> Int in
                frontend.drain()
                chardev.frontendCanReceive()
                return frontend.received.count
            }
            guard waitUntil(loop.lock, { frontend.received.count > before }) else {
                XCTFail("input stalled after \(before) of \(total) bytes")
                break
            }
        }
        XCTAssertEqual(received(frontend), text)
    }

    func testPipedStdinIsDeliveredAfterItEnds() throws {
        // `printf 'hello' | keel -nographic ...`: more than the guest can take at once, then end
        // of file. Everything piped is still delivered as the guest reads.
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        let savedStdin = dup(0)
        dup2(fds[0], 0)
        close(fds[0])
        defer {
            dup2(savedStdin, 0)
            close(savedStdin)
        }
        let chardev = try openChardev(.stdio, loop: loop.loop, muxEscape: true, onQuit: {})
        let frontend = RecordingFrontend(capacity: 1)
        chardev.frontend = frontend
        loop.start()
        XCTAssertEqual(Glibc.write(fds[1], "hello", 5), 5)
        close(fds[1])
        for expected in 1...5 {
            XCTAssertTrue(waitUntil(loop.lock) { frontend.received.count == expected }, "byte \(expected) never arrived")
            loop.lock.withLock {
                frontend.drain()
                chardev.frontendCanReceive()
            }
        }
        XCTAssertEqual(received(frontend), "hello")
        loop.stop()
        chardev.close()
    }

    func testStdioReadsStdinWithEscapes() throws {
        // Put a pipe on fd 0 for the duration of the test.
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        let savedStdin = dup(0)
        dup2(fds[0], 0)
        close(fds[0])
        defer {
            dup2(savedStdin, 0)
            close(savedStdin)
        }
        var quits = 0
        let chardev = try openChardev(.stdio, loop: loop.loop, muxEscape: true, onQuit: { quits += 1 })
        let frontend = RecordingFrontend()
        chardev.frontend = frontend
        loop.start()
        let input = Array("ls\r".utf8) + [0x01, 0x78]
        XCTAssertEqual(input.withUnsafeBytes { Glibc.write(fds[1], $0.baseAddress, $0.count) }, input.count)
        XCTAssertTrue(waitUntil(loop.lock) { quits == 1 })
        XCTAssertEqual(received(frontend), "ls\r")
        close(fds[1])
        loop.stop()
        chardev.close()
        StdioChardev.restoreTerminal() // a no-op here (stdin is no terminal), and must not crash
    }

    func testStdioWithStdinFromDevNull() throws {
        let savedStdin = dup(0)
        let devnull = open("/dev/null", O_RDONLY)
        dup2(devnull, 0)
        close(devnull)
        defer {
            dup2(savedStdin, 0)
            close(savedStdin)
        }
        // epoll cannot watch /dev/null (EPERM): the chardev opens anyway, without input.
        let chardev = try openChardev(.stdio, loop: loop.loop, muxEscape: false, onQuit: {})
        chardev.frontendCanReceive()
        loop.start()
        loop.stop()
        chardev.close()
    }

    func testNullChardevAcceptsEverything() throws {
        let chardev = try openChardev(.null, loop: loop.loop, muxEscape: false, onQuit: {})
        write(chardev, "into the void")
        chardev.frontendCanReceive()
        chardev.close()
        XCTAssertTrue(try openChardev(.disabled, loop: loop.loop, muxEscape: false, onQuit: {}) is NullChardev)
    }
}
