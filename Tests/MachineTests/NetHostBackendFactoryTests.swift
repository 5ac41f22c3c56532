import Net
import XCTest
@testable import Machine

/// The -netdev user/socket/stream/dgram configurations become the Net target's backends, and
/// bad values fail naming the netdev and the value.
final class NetHostBackendFactoryTests: XCTestCase {
    func testUserOptionsBecomeTheSlirpConfiguration() throws {
        var u = UserNetdevConfiguration()
        u.network = "10.9.8.0/24"
        u.dns = "10.9.8.53"
        u.restrict = true
        u.ipv6 = false
        u.hostForwards = [HostForward(transport: .udp, hostAddress: "127.0.0.1", hostPort: 0, guestAddress: "", guestPort: 53)]
        let c = try userNetworkConfiguration(u)
        XCTAssertEqual(c.network, IPv4Address("10.9.8.0"))
        XCTAssertEqual(c.dns, IPv4Address("10.9.8.53"))
        XCTAssertTrue(c.restricted)
        XCTAssertFalse(c.ipv6)
        XCTAssertTrue(c.ipv4)
        XCTAssertEqual(c.hostForwards, [.init(udp: true, hostAddress: IPv4Address("127.0.0.1")!, hostPort: 0, guestAddress: nil, guestPort: 53)])
        let backends = try openHostNetBackends(NetdevConfiguration(id: "u0", backend: .user(u)))
        XCTAssertEqual(backends.count, 1)
        XCTAssertTrue(backends.first is UserBackend)
    }

    func testBadUserValuesNameTheNetdevAndTheValue() {
        var off = UserNetdevConfiguration()
        off.ipv4 = false
        off.ipv6 = false
        XCTAssertThrowsError(try openHostNetBackends(NetdevConfiguration(id: "u3", backend: .user(off)))) {
            XCTAssertTrue("\($0)".contains("ipv4=off and ipv6=off"), "\($0)")
        }
        var u = UserNetdevConfiguration()
        u.host = "10.0.3.2"
        XCTAssertThrowsError(try openHostNetBackends(NetdevConfiguration(id: "u1", backend: .user(u)))) {
            XCTAssertTrue("\($0)".contains("-netdev user,id=u1") && "\($0)".contains("host=10.0.3.2"), "\($0)")
        }
        u = UserNetdevConfiguration()
        u.hostForwards = [HostForward(transport: .tcp, hostAddress: "localhost", hostPort: 2222, guestAddress: "", guestPort: 22)]
        XCTAssertThrowsError(try openHostNetBackends(NetdevConfiguration(id: "u2", backend: .user(u)))) {
            XCTAssertTrue("\($0)".contains("localhost"), "\($0)")
        }
    }

    func testSocketAndStreamListenAndDgram() throws {
        let listen = try openHostNetBackends(NetdevConfiguration(id: "s0", backend: .socket(.init(mode: .listen(.init(host: "127.0.0.1", port: 0))))))
        XCTAssertTrue(listen.first is StreamBackend)
        XCTAssertEqual(listen.first?.isLinkUp, false)
        let stream = try openHostNetBackends(NetdevConfiguration(id: "s1", backend: .stream(.init(server: true, address: .inet(.init(host: "127.0.0.1", port: 0))))))
        XCTAssertTrue(stream.first is StreamBackend)
        let dgram = try openHostNetBackends(NetdevConfiguration(id: "d0", backend: .dgram(.init(
            local: .inet(.init(host: "127.0.0.1", port: 0)), remote: .inet(.init(host: "127.0.0.1", port: 9))))))
        XCTAssertTrue(dgram.first is DatagramBackend)
    }

    func testUnsupportedSocketFormsAreRefusedByName() {
        let cases: [(NetdevBackendConfiguration, String)] = [
            (.socket(.init(mode: .multicast(.init(host: "230.0.0.1", port: 1234), localAddress: nil))), "mcast="),
            (.socket(.init(mode: .fd(3))), "fd="),
            (.stream(.init(server: false, address: .fd("3"))), "addr.type=fd"),
            (.dgram(.init(local: .inet(.init(host: "127.0.0.1", port: 0)), remote: nil)), "remote.type="),
        ]
        for (backend, needle) in cases {
            XCTAssertThrowsError(try openHostNetBackends(NetdevConfiguration(id: "x", backend: backend))) {
                XCTAssertTrue("\($0)".contains(needle) && "\($0)".contains("id=x"), "\($0)")
            }
        }
    }
}
