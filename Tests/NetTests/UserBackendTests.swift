import Foundation
import Loop
@testable import Net
import XCTest

/// libslirp behind UserBackend, driven by hand-built guest frames (no guest needed).
final class UserBackendTests: XCTestCase {
    var loop: EventLoop!

    override func setUp() { loop = try! EventLoop() }
    override func tearDown() { loop = nil }

    /// A backend attached to a collector that answers slirp's ARP requests for the guest, as the
    /// guest's kernel would.
    func makeBackend(_ config: UserNetworkConfiguration = UserNetworkConfiguration()) throws -> (UserBackend, FrameCollector) {
        let backend = try UserBackend(config)
        let nic = FrameCollector()
        nic.onFrame = { [unowned backend] f in
            if let a = Packets.parseARP(f), a.op == 1, a.targetIP == Packets.ip("10.0.2.15") {
                _ = send(backend, Packets.arpReply(to: a.senderMAC, requesterIP: a.senderIP, from: "10.0.2.15"))
            }
        }
        try backend.attach(to: loop, receiver: nic)
        return (backend, nic)
    }

    func testDHCPDiscoverAndRequestGetOfferAndAckFor10_0_2_15() throws {
        let (backend, nic) = try makeBackend()
        XCTAssertEqual(backend.vnetHeaderLength, 0)
        XCTAssertTrue(backend.isLinkUp)
        XCTAssertEqual(send(backend, Packets.dhcp(type: 1, xid: 0x1234_5678)), .sent)
        var offer: Packets.DHCPReply?
        XCTAssertTrue(spin(loop) { offer = nic.frames.lazy.compactMap(Packets.parseDHCP).first { $0.type == 2 }; return offer != nil },
                      "no DHCPOFFER; frames: \(nic.frames.count)")
        XCTAssertEqual(offer?.yiaddr, Packets.ip("10.0.2.15"))
        XCTAssertEqual(offer?.router, Packets.ip("10.0.2.2"))
        XCTAssertEqual(offer?.dns, Packets.ip("10.0.2.3"))

        XCTAssertEqual(sendSplit(backend, Packets.dhcp(type: 3, xid: 0x1234_5679, requested: "10.0.2.15", server: "10.0.2.2"), pieces: 3), .sent)
        var ack: Packets.DHCPReply?
        XCTAssertTrue(spin(loop) { ack = nic.frames.lazy.compactMap(Packets.parseDHCP).first { $0.type == 5 }; return ack != nil }, "no DHCPACK")
        XCTAssertEqual(ack?.yiaddr, Packets.ip("10.0.2.15"))
        XCTAssertEqual(ack?.router, Packets.ip("10.0.2.2"))
        XCTAssertEqual(ack?.dns, Packets.ip("10.0.2.3"))
    }

    func testOtherNetworkFromNetOption() throws {
        var c = UserNetworkConfiguration()
        try c.setNetwork("192.168.76.0/24")
        let (backend, nic) = try makeBackend(c)
        _ = send(backend, Packets.dhcp(type: 1, xid: 7))
        var offer: Packets.DHCPReply?
        XCTAssertTrue(spin(loop) { offer = nic.frames.lazy.compactMap(Packets.parseDHCP).first; return offer != nil })
        XCTAssertEqual(offer?.yiaddr, Packets.ip("192.168.76.15"))
        XCTAssertEqual(offer?.router, Packets.ip("192.168.76.2"))
        XCTAssertEqual(offer?.dns, Packets.ip("192.168.76.3"))
    }

    func testARPForTheHostIsAnswered() throws {
        let (backend, nic) = try makeBackend()
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.2"))
        var reply: Packets.ARP?
        XCTAssertTrue(spin(loop) { reply = nic.frames.lazy.compactMap(Packets.parseARP).first { $0.op == 2 }; return reply != nil })
        XCTAssertEqual(reply?.senderIP, Packets.ip("10.0.2.2"))
        XCTAssertEqual(reply?.targetIP, Packets.ip("10.0.2.15"))
        // slirp's own MAC: 52:55 followed by the IPv4 address it answers for.
        XCTAssertEqual(reply?.senderMAC, [0x52, 0x55, 10, 0, 2, 2])
    }

    func testGuestSYNTo10_0_2_2ReachesAHostLoopbackListener() throws {
        let listener = listenLoopback()
        defer { close(listener.fd) }
        let (backend, nic) = try makeBackend()
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.2"))
        XCTAssertTrue(spin(loop) { nic.frames.contains { Packets.parseARP($0)?.op == 2 } })
        let syn = Packets.tcp(from: Packets.ip("10.0.2.15"), to: Packets.ip("10.0.2.2"), sport: 40001, dport: Int(listener.port),
                              seq: 1000, ack: 0, flags: 0x02)
        XCTAssertEqual(send(backend, Packets.ethernet(to: [0x52, 0x55, 10, 0, 2, 2], type: 0x0800, syn)), .sent)
        var accepted: Int32 = -1
        XCTAssertTrue(spin(loop) { accepted = accept(listener.fd, nil, nil); return accepted >= 0 }, "slirp never connected to 127.0.0.1:\(listener.port)")
        defer { if accepted >= 0 { close(accepted) } }
        var synAck: Packets.TCPSegment?
        XCTAssertTrue(spin(loop) {
            synAck = nic.frames.lazy.compactMap(Packets.parseTCP).first { $0.flags & 0x12 == 0x12 }
            return synAck != nil
        })
        XCTAssertEqual(synAck?.src, Packets.ip("10.0.2.2"))
        XCTAssertEqual(synAck?.sport, Int(listener.port))
        XCTAssertEqual(synAck?.dport, 40001)
        XCTAssertEqual(synAck?.ack, 1001)
    }

    func testHostForwardTurnsAHostConnectIntoASYNToTheGuest() throws {
        let hostPort = freeLoopbackPort()
        var c = UserNetworkConfiguration()
        c.hostForwards = [try .init(parsing: "tcp:127.0.0.1:\(hostPort)-:2222")]
        let (backend, nic) = try makeBackend(c)
        defer { withExtendedLifetime(backend) {} }
        let client = connectLoopback(port: hostPort, nonBlocking: true)
        XCTAssertGreaterThanOrEqual(client, 0)
        defer { close(client) }
        var syn: Packets.TCPSegment?
        XCTAssertTrue(spin(loop) {
            syn = nic.frames.lazy.compactMap(Packets.parseTCP).first { $0.flags & 0x12 == 0x02 }
            return syn != nil
        }, "no SYN to the guest; frames: \(nic.frames.count)")
        XCTAssertEqual(syn?.dst, Packets.ip("10.0.2.15"))
        XCTAssertEqual(syn?.dport, 2222)
    }

    func testHostForwardOnABusyPortFailsAtStartNamingTheRule() throws {
        let listener = listenLoopback()
        defer { close(listener.fd) }
        var c = UserNetworkConfiguration()
        c.hostForwards = [try .init(parsing: "tcp:127.0.0.1:\(listener.port)-:22")]
        XCTAssertThrowsError(try UserBackend(c)) { e in
            XCTAssertTrue("\(e)".contains("hostfwd=tcp:127.0.0.1:\(listener.port)-:22"), "\(e)")
        }
    }

    func testRefusedFramesAreKeptAndDeliveredInOrderAfterReceiveIsEnabled() throws {
        let (backend, nic) = try makeBackend()
        nic.accepting = false
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.2"))
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.3"))
        XCTAssertTrue(spin(loop) { nic.refused > 0 })
        idle(loop, seconds: 0.1)
        XCTAssertEqual(nic.refused, 1, "after a refusal the backend must wait for setReceiveEnabled(true)")
        XCTAssertTrue(nic.frames.isEmpty)
        nic.accepting = true
        backend.setReceiveEnabled(true)
        let replies = nic.frames.compactMap(Packets.parseARP).filter { $0.op == 2 }
        XCTAssertEqual(replies.map(\.senderIP), [Packets.ip("10.0.2.2"), Packets.ip("10.0.2.3")])
    }

    func testDisabledReceiveStopsPollingHostSockets() throws {
        let listener = listenLoopback()
        defer { close(listener.fd) }
        let (backend, nic) = try makeBackend()
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.2"))
        XCTAssertTrue(spin(loop) { nic.frames.contains { Packets.parseARP($0)?.op == 2 } })
        backend.setReceiveEnabled(false)
        let syn = Packets.tcp(from: Packets.ip("10.0.2.15"), to: Packets.ip("10.0.2.2"), sport: 40002, dport: Int(listener.port),
                              seq: 5, ack: 0, flags: 0x02)
        _ = send(backend, Packets.ethernet(to: [0x52, 0x55, 10, 0, 2, 2], type: 0x0800, syn))
        idle(loop, seconds: 0.2)
        XCTAssertFalse(nic.frames.contains { Packets.parseTCP($0) != nil }, "a SYN-ACK arrived while receive was disabled")
        backend.setReceiveEnabled(true)
        XCTAssertTrue(spin(loop) { nic.frames.contains { (Packets.parseTCP($0)?.flags ?? 0) & 0x12 == 0x12 } })
        let fd = accept(listener.fd, nil, nil)
        XCTAssertGreaterThanOrEqual(fd, 0)
        if fd >= 0 { close(fd) }
    }

    func testDetachAndReattach() throws {
        let (backend, nic) = try makeBackend()
        backend.detach()
        let nic2 = FrameCollector()
        try backend.attach(to: loop, receiver: nic2)
        _ = send(backend, Packets.arpRequest(from: "10.0.2.15", for: "10.0.2.2"))
        XCTAssertTrue(spin(loop) { nic2.frames.contains { Packets.parseARP($0)?.op == 2 } })
        XCTAssertFalse(nic.frames.contains { Packets.parseARP($0)?.op == 2 })
    }

    func testGarbageFramesFromTheGuestDoNotCrash() throws {
        let (backend, _) = try makeBackend()
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 13, 14, 20, 34, 60, 1514, 9000, 65_535, 70_000] {
            var f = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n >= 14 { f[12] = 0x08; f[13] = 0x00 }
            if n >= 15 { f[14] = 0x45 }
            _ = send(backend, f)
        }
        idle(loop, seconds: 0.05)
    }
}

final class UserNetworkConfigurationTests: XCTestCase {
    func testQEMUDefaults() throws {
        let r = try UserNetworkConfiguration().resolved()
        XCTAssertEqual(r.network.description, "10.0.2.0")
        XCTAssertEqual(r.netmask.description, "255.255.255.0")
        XCTAssertEqual(r.host.description, "10.0.2.2")
        XCTAssertEqual(r.dns.description, "10.0.2.3")
        XCTAssertEqual(r.dhcpStart.description, "10.0.2.15")
    }

    func testNetForms() throws {
        var c = UserNetworkConfiguration()
        try c.setNetwork("10.9.0.0/255.255.0.0")
        XCTAssertEqual(c.prefixLength, 16)
        XCTAssertEqual(try c.resolved().dhcpStart.description, "10.9.0.15")
        try c.setNetwork("172.16.5.77")
        XCTAssertEqual(c.network.description, "172.16.5.0")
        XCTAssertThrowsError(try c.setNetwork("10.0.2.0/33"))
        XCTAssertThrowsError(try c.setNetwork("10.0.2.0/255.0.255.0"))
        XCTAssertThrowsError(try c.setNetwork("ten.0.2.0/24"))
        c = UserNetworkConfiguration()
        c.host = IPv4Address("10.0.3.2")
        XCTAssertThrowsError(try c.resolved()) { XCTAssertTrue("\($0)".contains("host=10.0.3.2"), "\($0)") }
    }

    func testHostForwardParsing() throws {
        let a = try UserNetworkConfiguration.HostForward(parsing: "tcp::5555-:22")
        XCTAssertEqual(a, .init(udp: false, hostAddress: IPv4Address(0), hostPort: 5555, guestAddress: nil, guestPort: 22))
        let b = try UserNetworkConfiguration.HostForward(parsing: "udp:127.0.0.1:6000-10.0.2.20:53")
        XCTAssertEqual(b, .init(udp: true, hostAddress: IPv4Address("127.0.0.1")!, hostPort: 6000, guestAddress: IPv4Address("10.0.2.20"), guestPort: 53))
        let c = try UserNetworkConfiguration.HostForward(parsing: "::2222-:22")
        XCTAssertFalse(c.udp)
        XCTAssertEqual(c.hostPort, 2222)
        for bad in ["sctp::1-:2", "tcp::99999-:22", "tcp::22", "tcp::22-:0", "tcp:1.2.3:22-:22", "tcp::x-:22"] {
            XCTAssertThrowsError(try UserNetworkConfiguration.HostForward(parsing: bad), bad) {
                XCTAssertTrue("\($0)".contains(bad), "\($0)")
            }
        }
    }
}
