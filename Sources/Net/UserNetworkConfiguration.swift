import Glibc

/// `-netdev user` (QEMU's user-mode networking through libslirp): the guest's virtual network,
/// with QEMU's defaults — 10.0.2.0/24, gateway/host 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15,
/// and IPv6 on fec0::/64 with the host at ::2 and DNS at ::3.
public struct UserNetworkConfiguration: Equatable, Sendable {
    public var ipv4 = true
    public var network = IPv4Address(0x0A00_0200)
    public var prefixLength = 24
    /// nil: the network's .2 (QEMU's `host=` default).
    public var host: IPv4Address?
    /// nil: the network's .3.
    public var dns: IPv4Address?
    /// nil: the network's .15.
    public var dhcpStart: IPv4Address?
    public var ipv6 = true
    public var ipv6Prefix = "fec0::"
    public var ipv6PrefixLength = 64
    /// nil: the prefix's ::2 / ::3.
    public var ipv6Host: String?
    public var ipv6DNS: String?
    /// `restrict=on`: the guest reaches nothing outside but what hostfwd/guestfwd open.
    public var restricted = false
    public var hostname: String?
    public var domainName: String?
    public var hostForwards: [HostForward] = []

    public init() {}

    /// `net=` as QEMU takes it: `addr[/prefixlen]` or `addr/dotted-mask`; no mask means /24.
    public mutating func setNetwork(_ text: String) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let address = IPv4Address(parts[0]) else { throw NetBackendError("net=\(text): '\(parts[0])' is not an IPv4 address") }
        var length = 24
        if parts.count == 2 {
            if let n = Int(parts[1]), (0...32).contains(n) {
                length = n
            } else if let mask = IPv4Address(parts[1]), (~mask.value &+ 1).nonzeroBitCount <= 1, mask.value != 0 {
                length = mask.value.nonzeroBitCount
            } else {
                throw NetBackendError("net=\(text): '\(parts[1])' is neither a prefix length nor a netmask")
            }
        }
        guard (8...30).contains(length) else { throw NetBackendError("net=\(text): prefix length \(length) outside 8...30") }
        network = IPv4Address(address.value & Self.mask(length))
        prefixLength = length
    }

    static func mask(_ length: Int) -> UInt32 { length == 0 ? 0 : ~UInt32(0) << UInt32(32 - length) }

    /// The addresses after defaults, each checked to lie inside the network.
    public struct Resolved: Equatable, Sendable {
        public var network: IPv4Address, netmask: IPv4Address, host: IPv4Address, dns: IPv4Address, dhcpStart: IPv4Address
        public var ipv6Prefix: in6_addr, ipv6Host: in6_addr, ipv6DNS: in6_addr

        public static func == (a: Resolved, b: Resolved) -> Bool {
            a.network == b.network && a.netmask == b.netmask && a.host == b.host && a.dns == b.dns && a.dhcpStart == b.dhcpStart
                && withUnsafeBytes(of: a.ipv6Prefix) { x in withUnsafeBytes(of: b.ipv6Prefix) { x.elementsEqual($0) } }
                && withUnsafeBytes(of: a.ipv6Host) { x in withUnsafeBytes(of: b.ipv6Host) { x.elementsEqual($0) } }
                && withUnsafeBytes(of: a.ipv6DNS) { x in withUnsafeBytes(of: b.ipv6DNS) { x.elementsEqual($0) } }
        }
    }

    public func resolved() throws -> Resolved {
        guard ipv4 || ipv6 else { throw NetBackendError("-netdev user: ipv4=off and ipv6=off leave no network") }
        let m = Self.mask(prefixLength)
        func inside(_ a: IPv4Address?, _ offset: UInt32, _ key: String) throws -> IPv4Address {
            let v = a ?? IPv4Address(network.value | offset)
            guard v.value & m == network.value, v.value != network.value, v.value != network.value | ~m else {
                throw NetBackendError("-netdev user: \(key)=\(v) is not a host address in \(network)/\(prefixLength)")
            }
            return v
        }
        let host = try inside(host, 2, "host"), dns = try inside(dns, 3, "dns"), start = try inside(dhcpStart, 15, "dhcpstart")
        guard host != dns else { throw NetBackendError("-netdev user: host and dns are both \(host)") }

        guard (1...126).contains(ipv6PrefixLength) else {
            throw NetBackendError("-netdev user: ipv6-prefixlen=\(ipv6PrefixLength) outside 1...126")
        }
        let prefix = try Self.parse6(ipv6Prefix, "ipv6-prefix")
        func derived(_ text: String?, _ last: UInt8, _ key: String) throws -> in6_addr {
            if let text { return try Self.parse6(text, key) }
            var a = prefix
            withUnsafeMutableBytes(of: &a) { $0[15] = last }
            return a
        }
        return Resolved(network: network, netmask: IPv4Address(m), host: host, dns: dns, dhcpStart: start,
                        ipv6Prefix: prefix, ipv6Host: try derived(ipv6Host, 2, "ipv6-host"),
                        ipv6DNS: try derived(ipv6DNS, 3, "ipv6-dns"))
    }

    static func parse6(_ text: String, _ key: String) throws -> in6_addr {
        var a = in6_addr()
        guard inet_pton(AF_INET6, text, &a) == 1 else { throw NetBackendError("-netdev user: \(key)=\(text) is not an IPv6 address") }
        return a
    }

    /// One `hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport` rule.
    public struct HostForward: Equatable, Sendable, CustomStringConvertible {
        public var udp: Bool
        /// 0.0.0.0 (QEMU's default for an empty host address) binds every host address.
        public var hostAddress: IPv4Address
        public var hostPort: UInt16
        /// nil: the DHCP start address (the first guest's 10.0.2.15).
        public var guestAddress: IPv4Address?
        public var guestPort: UInt16

        public init(udp: Bool = false, hostAddress: IPv4Address = IPv4Address(0), hostPort: UInt16,
                    guestAddress: IPv4Address? = nil, guestPort: UInt16) {
            self.udp = udp; self.hostAddress = hostAddress; self.hostPort = hostPort
            self.guestAddress = guestAddress; self.guestPort = guestPort
        }

        public init(parsing text: String) throws {
            func bad(_ why: String) -> NetBackendError { NetBackendError("hostfwd=\(text): \(why)") }
            var rest = Substring(text)
            udp = false
            // The protocol is optional in QEMU ("::2222-:22" is tcp).
            if let colon = rest.firstIndex(of: ":"), !rest[..<colon].contains("-") {
                switch rest[..<colon] {
                case "tcp", "": udp = false
                case "udp": udp = true
                default: throw bad("protocol '\(rest[..<colon])' is not tcp or udp")
                }
                rest = rest[rest.index(after: colon)...]
            }
            let sides = rest.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            guard sides.count == 2 else { throw bad("expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport") }
            func split(_ side: Substring, _ which: String) throws -> (IPv4Address?, UInt16) {
                guard let colon = side.lastIndex(of: ":") else { throw bad("\(which) side '\(side)' lacks ':port'") }
                let addrText = String(side[..<colon]), portText = String(side[side.index(after: colon)...])
                var addr: IPv4Address?
                if !addrText.isEmpty {
                    guard let a = IPv4Address(addrText) else { throw bad("\(which) address '\(addrText)' is not an IPv4 address") }
                    addr = a
                }
                guard let port = UInt16(portText) else { throw bad("\(which) port '\(portText)' is not a number from 0 to 65535") }
                return (addr, port)
            }
            let (h, hp) = try split(sides[0], "host")
            let (g, gp) = try split(sides[1], "guest")
            guard gp != 0 else { throw bad("guest port 0") }
            hostAddress = h ?? IPv4Address(0); hostPort = hp; guestAddress = g; guestPort = gp
        }

        public var description: String {
            "\(udp ? "udp" : "tcp"):\(hostAddress.value == 0 ? "" : "\(hostAddress)"):\(hostPort)-\(guestAddress.map { "\($0)" } ?? ""):\(guestPort)"
        }
    }
}
