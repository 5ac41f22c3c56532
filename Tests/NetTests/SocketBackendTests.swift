import Foundation
import Loop
@testable import Net
import XCTest

/// Stream (QEMU's socket/stream framing) and datagram backends over loopback.
final class StreamBackendTests: XCTestCase {
    var loop: EventLoop!
    var errors: [String] = []

    override func setUp() { loop = try! EventLoop(); errors = [] }
    override func tearDown() { loop = nil }

    func quiet<B: AnyObject>(_ b: B) -> B {
        if let s = b as? StreamBackend { s.errorLog = { [unowned self] in self.errors.append($0) } }
        if let d = b as? DatagramBackend { d.errorLog = { [unowned self] in self.errors.append($0) } }
        return b
    }

    /// A listening and a connecting backend joined over 127.0.0.1, both links up.
    func connectedPair() throws -> (StreamBackend, FrameCollector, StreamBackend, FrameCollector) {
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
        let port = try XCTUnwrap(server.listeningPort)
        let serverNIC = FrameCollector()
        try server.attach(to: loop, receiver: serverNIC)
        XCTAssertFalse(server.isLinkUp)
        let client = quiet(try StreamBackend(.init(server: false, address: try NetSocketEndpoint(hostPort: "127.0.0.1:\(port)"))))
        let clientNIC = FrameCollector()
        try client.attach(to: loop, receiver: clientNIC)
        XCTAssertTrue(spin(loop) { server.isLinkUp && client.isLinkUp })
        XCTAssertEqual(serverNIC.links, [true])
        return (server, serverNIC, client, clientNIC)
    }

    /// Sends every frame, waiting for backendWritable after each .wouldBlock.
    func sendAll(_ backend: StreamBackend, _ nic: FrameCollector, _ frames: [[UInt8]], pieces: Int = 1) {
        var i = 0
        while i < frames.count {
            let w = nic.writable
            if sendSplit(backend, frames[i], pieces: pieces) == .sent { i += 1; continue }
            XCTAssertTrue(spin(loop) { nic.writable > w }, "blocked send never became writable")
        }
    }

    func testTwoBackendsExchangeFramesOfEverySize() throws {
        let (server, serverNIC, client, clientNIC) = try connectedPair()
        let sizes = [60, 61, 64, 1514, 1515, 4096, 9000, 16_383, 32_768, 65_535] + (0..<30).map { 60 + ($0 * 2179) % 65_476 }
        let toServer = sizes.enumerated().map { patternFrame(length: $1, tag: UInt8($0)) }
        let toClient = sizes.reversed().enumerated().map { patternFrame(length: $1, tag: UInt8(100 + $0)) }
        sendAll(client, clientNIC, toServer, pieces: 3)
        sendAll(server, serverNIC, toClient)
        XCTAssertTrue(spin(loop, timeout: 10) { serverNIC.frames.count == toServer.count && clientNIC.frames.count == toClient.count },
                      "got \(serverNIC.frames.count)/\(toServer.count) and \(clientNIC.frames.count)/\(toClient.count)")
        XCTAssertTrue(serverNIC.frames == toServer, "server received different frames")
        XCTAssertTrue(clientNIC.frames == toClient, "client received different frames")
        XCTAssertTrue(errors.isEmpty, "\(errors)")
    }

    func testFramesSplitAcrossArbitraryReadsAreReassembled() throws {
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
        let nic = FrameCollector()
        try server.attach(to: loop, receiver: nic)
        let peer = connectLoopback(port: try XCTUnwrap(server.listeningPort))
        defer { close(peer) }
        XCTAssertTrue(spin(loop) { server.isLinkUp })
        let frames = [60, 1514, 65_535, 70, 4096].enumerated().map { patternFrame(length: $1, tag: UInt8($0)) }
        // Two empty frames in between: QEMU's framing allows them; they carry nothing.
        let stream = frames.prefix(2).flatMap(lengthPrefixed) + [0, 0, 0, 0, 0, 0, 0, 0] + frames.dropFirst(2).flatMap(lengthPrefixed)
        // Odd chunk sizes cut through length prefixes and bodies.
        var at = 0
        for (i, chunk) in [1, 2, 3, 7, 100, 1, 1600, 5, 70_000, 3].cycled().enumerated() {
            guard at < stream.count else { break }
            let end = min(stream.count, at + chunk)
            writeAll(peer, Array(stream[at..<end]))
            at = end
            if i % 2 == 0 { idle(loop, seconds: 0.002) }
        }
        XCTAssertTrue(spin(loop) { nic.frames.count == frames.count }, "got \(nic.frames.count) frames")
        XCTAssertTrue(nic.frames == frames)
    }

    func testBackPressureWouldBlockThenWritable() throws {
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
        let nic = FrameCollector()
        try server.attach(to: loop, receiver: nic)
        let peer = connectLoopback(port: try XCTUnwrap(server.listeningPort), receiveBuffer: 4096)
        defer { close(peer) }
        XCTAssertTrue(spin(loop) { server.isLinkUp })
        // The peer reads nothing, so the socket fills and a send must block.
        var sent: [[UInt8]] = []
        var blocked = false
        for i in 0..<2000 {
            let f = patternFrame(length: 65_535, tag: UInt8(truncatingIfNeeded: i))
            if send(server, f) == .wouldBlock { blocked = true; break }
            sent.append(f)
        }
        XCTAssertTrue(blocked, "2000 frames of 64 KiB never blocked")
        XCTAssertEqual(nic.writable, 0)
        // Still blocked: nothing may be taken while the tail of the last frame waits.
        XCTAssertEqual(send(server, patternFrame(length: 60, tag: 1)), .wouldBlock)
        // Drain the peer; the backend finishes the partial frame and says writable.
        _ = fcntl(peer, F_SETFL, fcntl(peer, F_GETFL) | O_NONBLOCK)
        var received: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        XCTAssertTrue(spin(loop, timeout: 10) {
            while true {
                let n = buf.withUnsafeMutableBytes { read(peer, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                received += buf[0..<n]
            }
            return nic.writable > 0 && received.count >= sent.count * (65_535 + 4)
        }, "writable \(nic.writable), received \(received.count) of \(sent.count * 65_539)")
        let parsed = parseFramedStream(received)
        XCTAssertEqual(parsed?.count, sent.count)
        XCTAssertTrue(parsed == sent, "the stream the peer read differs from the frames sent")
        XCTAssertEqual(send(server, patternFrame(length: 60, tag: 2)), .sent)
    }

    func testPeerCloseTakesTheLinkDownAndTheServerAcceptsTheNextPeer() throws {
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
        let serverNIC = FrameCollector()
        try server.attach(to: loop, receiver: serverNIC)
        let port = try XCTUnwrap(server.listeningPort)
        let first = connectLoopback(port: port)
        XCTAssertTrue(spin(loop) { server.isLinkUp })
        // A second peer waits in the backlog: one peer at a time.
        let second = connectLoopback(port: port)
        defer { close(second) }
        idle(loop, seconds: 0.05)
        XCTAssertEqual(serverNIC.links, [true])
        close(first)
        XCTAssertTrue(spin(loop) { serverNIC.links.count >= 2 })
        XCTAssertEqual(Array(serverNIC.links.prefix(2)), [true, false])
        // Listening again: the waiting peer gets the link up.
        XCTAssertTrue(spin(loop) { server.isLinkUp })
        XCTAssertEqual(serverNIC.links, [true, false, true])
        writeAll(second, lengthPrefixed(patternFrame(length: 100, tag: 9)))
        XCTAssertTrue(spin(loop) { serverNIC.frames.count == 1 })
        XCTAssertTrue(errors.isEmpty, "a clean close is not an error: \(errors)")
    }

    func testSendWhileTheLinkIsDownIsDropped() throws {
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
        let nic = FrameCollector()
        try server.attach(to: loop, receiver: nic)
        XCTAssertFalse(server.isLinkUp)
        XCTAssertEqual(send(server, patternFrame(length: 60, tag: 0)), .sent)
        XCTAssertEqual(nic.writable, 0)
    }

    func testOversizedOrGarbageLengthDropsTheConnectionWithAnError() throws {
        for prefix: [UInt8] in [[0xff, 0xff, 0xff, 0xff], [0, 1, 0x10, 0x01]] {
            errors = []
            let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: 0))))
            let nic = FrameCollector()
            try server.attach(to: loop, receiver: nic)
            let raw = connectLoopback(port: try XCTUnwrap(server.listeningPort))
            defer { close(raw) }
            XCTAssertTrue(spin(loop) { server.isLinkUp })
            writeAll(raw, lengthPrefixed(patternFrame(length: 60, tag: 3)) + prefix + [1, 2, 3])
            XCTAssertTrue(spin(loop) { !server.isLinkUp }, "link stayed up after a bad length prefix")
            XCTAssertEqual(nic.frames.count, 1, "the good frame before the garbage is delivered")
            XCTAssertEqual(nic.links, [true, false])
            XCTAssertEqual(errors.count, 1)
            let length = UInt32(prefix[0]) << 24 | UInt32(prefix[1]) << 16 | UInt32(prefix[2]) << 8 | UInt32(prefix[3])
            XCTAssertTrue(server.lastError?.contains("\(length)-byte frame") ?? false, "\(server.lastError ?? "nil")")
            // The peer's end sees the close.
            var b = [UInt8](repeating: 0, count: 16)
            XCTAssertEqual(read(raw, &b, 16), 0)
        }
    }

    func testRefusedFrameIsKeptAndReadingPausesUntilReceiveIsEnabled() throws {
        let (server, serverNIC, client, clientNIC) = try connectedPair()
        _ = clientNIC
        serverNIC.accepting = false
        let frames = (0..<5).map { patternFrame(length: 500 + $0, tag: UInt8($0)) }
        for f in frames { XCTAssertEqual(send(client, f), .sent) }
        XCTAssertTrue(spin(loop) { serverNIC.refused > 0 })
        idle(loop, seconds: 0.05)
        XCTAssertEqual(serverNIC.refused, 1, "the backend kept offering after a refusal")
        serverNIC.accepting = true
        server.setReceiveEnabled(true)
        XCTAssertTrue(spin(loop) { serverNIC.frames.count == 5 })
        XCTAssertTrue(serverNIC.frames == frames)
    }

    func testUnixSocketStream() throws {
        let path = NSTemporaryDirectory() + "keel-net-\(getpid()).sock"
        let server = quiet(try StreamBackend(.init(server: true, address: .unix(path: path))))
        let serverNIC = FrameCollector()
        try server.attach(to: loop, receiver: serverNIC)
        let client = quiet(try StreamBackend(.init(server: false, address: .unix(path: path))))
        let clientNIC = FrameCollector()
        try client.attach(to: loop, receiver: clientNIC)
        XCTAssertTrue(spin(loop) { server.isLinkUp && client.isLinkUp })
        let f = patternFrame(length: 1514, tag: 4)
        XCTAssertEqual(send(client, f), .sent)
        XCTAssertEqual(send(server, f.reversed()), .sent)
        XCTAssertTrue(spin(loop) { serverNIC.frames.count == 1 && clientNIC.frames.count == 1 })
        XCTAssertEqual(serverNIC.frames.first, f)
        XCTAssertEqual(clientNIC.frames.first, f.reversed())
    }

    func testConnectRefusedFailsAtStartNamingTheAddress() throws {
        let port = freeLoopbackPort()
        XCTAssertThrowsError(try StreamBackend(.init(server: false, address: .inet(host: "127.0.0.1", port: port)))) { e in
            XCTAssertTrue("\(e)".contains("127.0.0.1:\(port)"), "\(e)")
        }
        XCTAssertThrowsError(try NetSocketEndpoint(hostPort: "127.0.0.1"))
        XCTAssertThrowsError(try NetSocketEndpoint(hostPort: "127.0.0.1:70000"))
        XCTAssertEqual(try NetSocketEndpoint(hostPort: ":1234"), .inet(host: "", port: 1234))
        XCTAssertEqual(try NetSocketEndpoint(hostPort: "[::1]:5"), .inet(host: "::1", port: 5))
    }

    func testClientReconnectsAfterTheServerComesBack() throws {
        let port = freeLoopbackPort()
        let client = quiet(try StreamBackend(.init(server: false, address: .inet(host: "127.0.0.1", port: port), reconnectSeconds: 1)))
        let clientNIC = FrameCollector()
        try client.attach(to: loop, receiver: clientNIC)
        XCTAssertFalse(client.isLinkUp)
        let server = quiet(try StreamBackend(.init(server: true, address: .inet(host: "127.0.0.1", port: port))))
        try server.attach(to: loop, receiver: FrameCollector())
        XCTAssertTrue(spin(loop, timeout: 5) { client.isLinkUp && server.isLinkUp })
        XCTAssertEqual(clientNIC.links, [true])
    }
}

final class DatagramBackendTests: XCTestCase {
    var loop: EventLoop!
    override func setUp() { loop = try! EventLoop() }
    override func tearDown() { loop = nil }

    func testUDPPairExchangesOneFramePerDatagram() throws {
        let pa = freeLoopbackPort(udp: true), pb = freeLoopbackPort(udp: true)
        let a = try DatagramBackend(.init(local: .inet(host: "127.0.0.1", port: pa), remote: .inet(host: "127.0.0.1", port: pb)))
        let b = try DatagramBackend(.init(local: .inet(host: "127.0.0.1", port: pb), remote: .inet(host: "127.0.0.1", port: pa)))
        let na = FrameCollector(), nb = FrameCollector()
        try a.attach(to: loop, receiver: na)
        try b.attach(to: loop, receiver: nb)
        XCTAssertTrue(a.isLinkUp)
        let sizes = [60, 1514, 9000, 65_507]
        for (i, n) in sizes.enumerated() {
            XCTAssertEqual(sendSplit(a, patternFrame(length: n, tag: UInt8(i)), pieces: 2), .sent)
            XCTAssertEqual(send(b, patternFrame(length: n, tag: UInt8(50 + i))), .sent)
        }
        XCTAssertTrue(spin(loop) { na.frames.count == sizes.count && nb.frames.count == sizes.count })
        XCTAssertTrue(nb.frames == sizes.enumerated().map { patternFrame(length: $1, tag: UInt8($0)) })
        XCTAssertTrue(na.frames == sizes.enumerated().map { patternFrame(length: $1, tag: UInt8(50 + $0)) })
    }

    func testUnixDatagramsAndRefusal() throws {
        let dir = NSTemporaryDirectory()
        let pa = dir + "keel-dg-a-\(getpid())", pb = dir + "keel-dg-b-\(getpid())"
        let a = try DatagramBackend(.init(local: .unix(path: pa), remote: .unix(path: pb)))
        let b = try DatagramBackend(.init(local: .unix(path: pb), remote: .unix(path: pa)))
        let na = FrameCollector(), nb = FrameCollector()
        try a.attach(to: loop, receiver: na)
        try b.attach(to: loop, receiver: nb)
        nb.accepting = false
        XCTAssertEqual(send(a, patternFrame(length: 100, tag: 1)), .sent)
        XCTAssertEqual(send(a, patternFrame(length: 200, tag: 2)), .sent)
        XCTAssertTrue(spin(loop) { nb.refused == 1 })
        idle(loop, seconds: 0.05)
        XCTAssertEqual(nb.refused, 1)
        nb.accepting = true
        b.setReceiveEnabled(true)
        XCTAssertTrue(spin(loop) { nb.frames.count == 2 })
        XCTAssertEqual(nb.frames.map(\.count), [100, 200])
    }
}

extension Array {
    /// The elements repeated endlessly (for chunk-size patterns).
    func cycled() -> AnySequence<Element> {
        AnySequence { () -> AnyIterator<Element> in
            var i = 0
            return AnyIterator { defer { i += 1 }; return self.isEmpty ? nil : self[i % self.count] }
        }
    }
}
