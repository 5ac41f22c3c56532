@testable import Devices
import Foundation
import Loop
import XCTest

/// The back-end's ways to meet a front-end besides listening: connecting to a front-end that
/// listens (its chardev has server=on), reconnecting when that connection ends, and serving a
/// socket it was handed (`--fd`).
final class VhostUserBackendEndpointTests: XCTestCase {
    var loop: EventLoop!
    var server: VhostUserBackendServer?

    override func setUpWithError() throws {
        loop = try EventLoop()
        let l = loop!
        Thread { l.run() }.start()
    }

    override func tearDown() {
        let done = DispatchSemaphore(value: 0)
        loop.post { self.server?.stop(); done.signal() }
        done.wait()
        loop.stop()
        usleep(20_000)
    }

    func makeServer(_ endpoint: VhostUserBackendServer.Endpoint) throws -> VhostUserBackendServer {
        var c = VirtioBlock.Configuration(); c.queueSize = 64
        let s = try VhostUserBackendServer(device: VirtioBlock(backend: MemoryBlockDevice(size: 1 << 16), configuration: c,
                                                               executor: DeferredExecutor()), endpoint: endpoint, loop: loop)
        s.log = { _ in }
        server = s
        let done = DispatchSemaphore(value: 0)
        var failure: Error?
        loop.post { do { try s.start() } catch { failure = error }; done.signal() }
        done.wait()
        if let failure { throw failure }
        return s
    }

    func testConnectsToListeningFrontendAndAgainAfterItDrops() throws {
        let path = "/tmp/keel-vhu-client-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        // The back-end starts first and retries once a second until the front-end listens.
        _ = try makeServer(.connect(path))
        usleep(200_000)
        let frontend = VhostUserFrontend(endpoint: .listen(path))
        try frontend.connect()
        XCTAssertNotEqual(frontend.backendFeatures & Virtio.featureVersion1, 0)
        XCTAssertNotEqual(frontend.backendFeatures & VhostUser.featureProtocolFeatures, 0)
        frontend.disconnect()
        // A new connection arrives within the retry period.
        let started = Date()
        try frontend.connect()
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertNotEqual(frontend.backendFeatures & Virtio.featureVersion1, 0)
    }

    func testServesAHandedSocketAndReportsItsEnd() throws {
        var sv: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv), 0)
        let s = try makeServer(.connected(sv[0]))
        let ended = DispatchSemaphore(value: 0)
        loop.post { s.onDisconnect = { _ in ended.signal() } }
        let channel = VhostUserChannel(fd: sv[1])
        try channel.send(VhostUserMessage(.getFeatures))
        var reply: VhostUserMessage?
        let deadline = Date().addingTimeInterval(5)
        while reply == nil, Date() < deadline {
            if channel.hasInput() { reply = try channel.receive() } else { usleep(1_000) }
        }
        let features = try XCTUnwrap(reply).u64()
        XCTAssertNotEqual(features & Virtio.featureVersion1, 0)
        channel.close()
        XCTAssertEqual(ended.wait(timeout: .now() + 5), .success, "the back-end must notice the front-end's end")
    }

    func testRefusesAnFdThatIsNotAStreamSocket() throws {
        var p: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&p), 0)
        defer { close(p[0]); close(p[1]) }
        XCTAssertThrowsError(try makeServer(.connected(p[0]))) { error in
            XCTAssertTrue("\(error)".contains("--fd=\(p[0]) is not a stream socket"), "\(error)")
        }
        server = nil
    }
}
