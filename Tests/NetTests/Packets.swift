/// Hand-built Ethernet/ARP/IPv4/UDP/TCP/DHCP frames for talking to libslirp as a guest would,
/// and parsers for what it answers. Byte layouts: RFC 826 (ARP), 791 (IPv4), 768 (UDP),
/// 793 (TCP), 2131/2132 (DHCP).
enum Packets {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]

    static func ip(_ s: String) -> [UInt8] { s.split(separator: ".").map { UInt8($0)! } }

    static func be16(_ v: Int) -> [UInt8] { [UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
    static func read16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) << 8 | Int(b[at + 1]) }

    static func checksum(_ bytes: [UInt8]) -> [UInt8] {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < bytes.count { sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.count { sum += UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return be16(Int(~sum & 0xffff))
    }

    static func ethernet(to dst: [UInt8], type: Int, _ payload: [UInt8]) -> [UInt8] {
        var f = dst + guestMAC + be16(type) + payload
        while f.count < 60 { f.append(0) }
        return f
    }

    static func arpRequest(from sender: String, for target: String) -> [UInt8] {
        ethernet(to: broadcast, type: 0x0806,
                 be16(1) + be16(0x0800) + [6, 4] + be16(1) + guestMAC + ip(sender) + [0, 0, 0, 0, 0, 0] + ip(target))
    }

    static func arpReply(to requester: [UInt8], requesterIP: [UInt8], from sender: String) -> [UInt8] {
        ethernet(to: requester, type: 0x0806,
                 be16(1) + be16(0x0800) + [6, 4] + be16(2) + guestMAC + ip(sender) + requester + requesterIP)
    }

    static func ipv4(from src: [UInt8], to dst: [UInt8], proto: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var h = [0x45, 0] + be16(20 + payload.count) + be16(0x1234) + [0x40, 0] + [64, proto] + [0, 0] + src + dst
        let c = checksum(h)
        h[10] = c[0]; h[11] = c[1]
        return h + payload
    }

    static func udp(from src: [UInt8], to dst: [UInt8], sport: Int, dport: Int, _ payload: [UInt8]) -> [UInt8] {
        var u = be16(sport) + be16(dport) + be16(8 + payload.count) + [0, 0] + payload
        let pseudo = src + dst + [0, 17] + be16(u.count)
        var c = checksum(pseudo + u)
        if c == [0, 0] { c = [0xff, 0xff] }
        u[6] = c[0]; u[7] = c[1]
        return ipv4(from: src, to: dst, proto: 17, u)
    }

    static func tcp(from src: [UInt8], to dst: [UInt8], sport: Int, dport: Int, seq: UInt32, ack: UInt32, flags: UInt8) -> [UInt8] {
        // A 24-byte header: the MSS option, as every SYN from Linux has.
        var t = be16(sport) + be16(dport) + be32(seq) + be32(ack) + [0x60, flags] + be16(64240) + [0, 0] + [0, 0]
            + [2, 4] + be16(1460)
        let pseudo = src + dst + [0, 6] + be16(t.count)
        let c = checksum(pseudo + t)
        t[16] = c[0]; t[17] = c[1]
        return ipv4(from: src, to: dst, proto: 6, t)
    }

    /// A DHCP DISCOVER (type 1) or REQUEST (type 3), padded to BOOTP's full 548-byte message.
    static func dhcp(type: UInt8, xid: UInt32, requested: String? = nil, server: String? = nil) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 236)
        b[0] = 1; b[1] = 1; b[2] = 6
        b.replaceSubrange(4..<8, with: be32(xid))
        b[10] = 0x80 // broadcast replies
        b.replaceSubrange(28..<34, with: guestMAC)
        var opts: [UInt8] = [99, 130, 83, 99, 53, 1, type]
        if let requested { opts += [50, 4] + ip(requested) }
        if let server { opts += [54, 4] + ip(server) }
        opts += [55, 3, 1, 3, 6, 255]
        b += opts
        while b.count < 548 { b.append(0) }
        let frame = udp(from: [0, 0, 0, 0], to: [255, 255, 255, 255], sport: 68, dport: 67, b)
        return ethernet(to: broadcast, type: 0x0800, frame)
    }

    struct IPv4Packet {
        var src: [UInt8], dst: [UInt8], proto: UInt8, payload: [UInt8]
    }

    static func parseIPv4(_ f: [UInt8]) -> IPv4Packet? {
        guard f.count >= 34, read16(f, 12) == 0x0800 else { return nil }
        let ihl = Int(f[14] & 0x0f) * 4
        let total = read16(f, 16)
        guard ihl >= 20, total >= ihl, f.count >= 14 + total else { return nil }
        return IPv4Packet(src: Array(f[26..<30]), dst: Array(f[30..<34]), proto: f[23], payload: Array(f[(14 + ihl)..<(14 + total)]))
    }

    struct DHCPReply { var type: UInt8; var yiaddr: [UInt8]; var router: [UInt8]?; var dns: [UInt8]?; var server: [UInt8]? }

    static func parseDHCP(_ f: [UInt8]) -> DHCPReply? {
        guard let p = parseIPv4(f), p.proto == 17, p.payload.count > 8 + 240,
              read16(p.payload, 0) == 67, read16(p.payload, 2) == 68 else { return nil }
        let b = Array(p.payload[8...])
        guard b[0] == 2, Array(b[236..<240]) == [99, 130, 83, 99] else { return nil }
        var r = DHCPReply(type: 0, yiaddr: Array(b[16..<20]))
        var at = 240
        while at < b.count, b[at] != 255 {
            if b[at] == 0 { at += 1; continue }
            guard at + 1 < b.count else { break }
            let code = b[at], len = Int(b[at + 1])
            guard at + 2 + len <= b.count else { break }
            let v = Array(b[(at + 2)..<(at + 2 + len)])
            switch code {
            case 53: r.type = v.first ?? 0
            case 3: r.router = Array(v.prefix(4))
            case 6: r.dns = Array(v.prefix(4))
            case 54: r.server = Array(v.prefix(4))
            default: break
            }
            at += 2 + len
        }
        return r
    }

    struct TCPSegment { var src: [UInt8], dst: [UInt8], sport: Int, dport: Int, seq: UInt32, ack: UInt32, flags: UInt8, payload: [UInt8] }

    static func parseTCP(_ f: [UInt8]) -> TCPSegment? {
        guard let p = parseIPv4(f), p.proto == 6, p.payload.count >= 20 else { return nil }
        let t = p.payload
        let off = Int(t[12] >> 4) * 4
        guard off >= 20, off <= t.count else { return nil }
        func r32(_ i: Int) -> UInt32 { UInt32(t[i]) << 24 | UInt32(t[i + 1]) << 16 | UInt32(t[i + 2]) << 8 | UInt32(t[i + 3]) }
        return TCPSegment(src: p.src, dst: p.dst, sport: read16(t, 0), dport: read16(t, 2), seq: r32(4), ack: r32(8),
                          flags: t[13], payload: Array(t[off...]))
    }

    struct ARP { var op: Int; var senderMAC: [UInt8]; var senderIP: [UInt8]; var targetIP: [UInt8] }

    static func parseARP(_ f: [UInt8]) -> ARP? {
        guard f.count >= 42, read16(f, 12) == 0x0806 else { return nil }
        return ARP(op: read16(f, 20), senderMAC: Array(f[22..<28]), senderIP: Array(f[28..<32]), targetIP: Array(f[38..<42]))
    }
}
