import Machine

/// -netdev, -nic and -device virtio-net-pci as QEMU spells them:
/// `-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=...`
/// or the shorthand `-nic tap,ifname=tap0,script=no,downscript=no,model=virtio-net-pci`.
enum NetCommandLine {
    static let deviceTypes = ["virtio-net-pci"]
    static let netdevTypes = "tap, user, socket, stream, dgram or vhost-user"

    static func parseNetdev(_ value: String, into c: inout MachineConfiguration) throws {
        var o = try OptionList(option: "-netdev", value, impliedKey: "type")
        guard let id = o.take("id"), !id.isEmpty else { throw ConfigurationErrorText("-netdev \(value): id= is required") }
        let backend = try parseBackend(&o, value, option: "-netdev")
        try o.rejectUnused(value)
        c.netdevs.append(NetdevConfiguration(id: id, backend: backend))
    }

    /// `-nic TYPE[,model=virtio-net-pci][,mac=][,...netdev options]`: a netdev and its NIC in one.
    static func parseNic(_ value: String, into c: inout MachineConfiguration) throws {
        var o = try OptionList(option: "-nic", value, impliedKey: "type")
        if o.implied == "none" { try o.rejectUnused(value); return }
        if let model = o.take("model"), model != "virtio-net-pci", model != "virtio" {
            throw ConfigurationErrorText("-nic \(value): model=\(model) is not available (Keel's NIC is virtio-net-pci)")
        }
        let mac = try o.take("mac").map { try parseMAC($0, option: "-nic") } ?? []
        let id = o.take("id") ?? "__nic\(c.netdevs.count)"
        let backend = try parseBackend(&o, value, option: "-nic")
        try o.rejectUnused(value)
        c.netdevs.append(NetdevConfiguration(id: id, backend: backend))
        var v = VirtioNetConfiguration(netdev: id, mac: mac)
        v.multiqueue = backend.queueCount > 1
        c.pciDevices.append(.virtioNet(v))
    }

    /// Returns false if `driver` is not a network device type.
    static func parseDevice(_ driver: String, _ o: inout OptionList, _ value: String, into c: inout MachineConfiguration) throws -> Bool {
        if driver == "vhost-vsock-pci" {
            try VhostKernel.parseVsock(&o, value, into: &c)
            return true
        }
        guard driver == "virtio-net-pci" else { return false }
        guard let netdev = o.take("netdev") else { throw ConfigurationErrorText("-device \(value): netdev= is required") }
        let mac = try o.take("mac").map { try parseMAC($0, option: "-device") } ?? []
        var v = VirtioNetConfiguration(netdev: netdev, mac: mac)
        if let mq = try o.takeBool("mq") { v.multiqueue = mq }
        if let n = o.take("vectors") { v.vectors = Int(try KeelCommandLine.checked(n, max: 2048, "-device", "vectors")) }
        if let s = o.take("rx_queue_size") ?? o.take("tx_queue_size") {
            let q = try KeelCommandLine.checked(s, max: 1024, "-device", "queue size")
            guard q >= 256, q.nonzeroBitCount == 1 else {
                throw ConfigurationErrorText("-device \(value): queue size \(s) is not a power of two from 256 to 1024")
            }
            v.queueSize = UInt16(q)
        }
        _ = o.take("rx_queue_size"); _ = o.take("tx_queue_size")
        _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr"); _ = o.take("romfile")
        try o.rejectUnused(value)
        c.pciDevices.append(.virtioNet(v))
        return true
    }

    /// NICs without mac= get QEMU's defaults in order: 52:54:00:12:34:56, :57, ...
    static func assignDefaultMACs(_ c: inout MachineConfiguration) {
        var next = 0
        for i in c.pciDevices.indices {
            guard case .virtioNet(var v) = c.pciDevices[i], v.mac.isEmpty else { continue }
            v.mac = VirtioNetConfiguration.defaultMAC(index: next)
            next += 1
            c.pciDevices[i] = .virtioNet(v)
        }
    }

    /// Six colon-separated two-digit hex bytes, or nil.
    static func macBytes(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return parts.count == 6 && bytes.count == 6 ? bytes : nil
    }

    static func parseMAC(_ text: String, option: String) throws -> [UInt8] {
        guard let bytes = macBytes(text) else { throw ConfigurationErrorText("\(option): mac=\(text): not a MAC address (xx:xx:xx:xx:xx:xx)") }
        guard bytes[0] & 1 == 0 else { throw ConfigurationErrorText("\(option): mac=\(text): a multicast address cannot be a NIC's") }
        return bytes
    }

    // MARK: backends

    static func parseBackend(_ o: inout OptionList, _ value: String, option: String) throws -> NetdevBackendConfiguration {
        switch o.implied ?? "" {
        case "tap": return .tap(try parseTap(&o, value, option: option))
        case "user": return .user(try parseUser(&o, value, option: option))
        case "socket": return .socket(try parseSocket(&o, value, option: option))
        case "stream": return .stream(try parseStream(&o, value, option: option))
        case "dgram": return .dgram(try parseDgram(&o, value, option: option))
        case "vhost-user":
            guard option == "-netdev" else { throw ConfigurationErrorText("\(option) \(value): vhost-user is a -netdev type") }
            return .vhostUser(try parseVhostUser(&o, value))
        case "": throw ConfigurationErrorText("\(option) \(value): no netdev type given (\(netdevTypes))")
        case let t: throw ConfigurationErrorText("\(option) \(value): netdev type '\(t)' is not supported (\(netdevTypes))")
        }
    }

    static func parseTap(_ o: inout OptionList, _ value: String, option: String) throws -> TapNetdevConfiguration {
        var t = TapNetdevConfiguration(ifname: o.take("ifname"))
        for key in ["script", "downscript"] {
            if let s = o.take(key), s != "no", !s.isEmpty {
                throw ConfigurationErrorText("\(option) \(value): \(key)=\(s): Keel does not run network scripts (use \(key)=no and configure the interface beforehand)")
            }
        }
        if let h = o.take("helper") {
            throw ConfigurationErrorText("\(option) \(value): helper=\(h): Keel does not run a bridge helper (create the tap beforehand and pass ifname= or fd=)")
        }
        if let b = o.take("br") { throw ConfigurationErrorText("\(option) \(value): br=\(b): bridge helpers are not supported") }
        if let fd = o.take("fd") { t.fds = [try parseFD(fd, option: option, key: "fd")] }
        if let fds = o.take("fds") {
            t.fds = try fds.split(separator: ":", omittingEmptySubsequences: false).map { try parseFD(String($0), option: option, key: "fds") }
        }
        if let q = o.take("queues") {
            let n = try KeelCommandLine.checked(q, max: 64, option, "queues")
            guard n >= 1 else { throw ConfigurationErrorText("\(option) \(value): queues=\(q): at least 1") }
            t.queues = Int(n)
        }
        if !t.fds.isEmpty {
            if o.take("queues") != nil, t.queues != t.fds.count {
                throw ConfigurationErrorText("\(option) \(value): queues=\(t.queues) but \(t.fds.count) fd(s)")
            }
            t.queues = t.fds.count
        }
        if let v = try o.takeBool("vnet_hdr") { t.vnetHeader = v }
        try VhostKernel.parseTapOptions(&o, &t, option: option)
        _ = o.take("sndbuf"); _ = o.take("poll-us")
        return t
    }

    static func parseFD(_ s: String, option: String, key: String) throws -> Int32 {
        guard let v = Int32(s), v >= 0 else { throw ConfigurationErrorText("\(option): \(key)=\(s): not a file descriptor number") }
        return v
    }

    static func parseUser(_ o: inout OptionList, _ value: String, option: String) throws -> UserNetdevConfiguration {
        var u = UserNetdevConfiguration()
        u.network = o.take("net")
        u.host = o.take("host")
        u.dns = o.take("dns")
        u.dhcpStart = o.take("dhcpstart")
        u.hostname = o.take("hostname")
        u.domainName = o.take("domainname")
        if let r = try o.takeBool("restrict") { u.restrict = r }
        u.hostForwards = try o.takeAll("hostfwd").map { try parseHostForward($0, option: option) }
        for key in ["smb", "tftp", "bootfile", "guestfwd"] {
            if let v = o.take(key) { throw ConfigurationErrorText("\(option) \(value): \(key)=\(v) is not supported") }
        }
        if let v = try o.takeBool("ipv4") { u.ipv4 = v }
        if let v = try o.takeBool("ipv6") { u.ipv6 = v }
        return u
    }

    /// `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
    static func parseHostForward(_ s: String, option: String) throws -> HostForward {
        func bad() -> Error { ConfigurationErrorText("\(option): hostfwd=\(s): expected [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport") }
        let halves = s.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard halves.count == 2 else { throw bad() }
        var host = halves[0].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let guest = halves[1].split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        var transport = HostForward.Transport.tcp
        if host.count == 3 {
            guard let t = HostForward.Transport(rawValue: host[0].isEmpty ? "tcp" : host[0]) else { throw bad() }
            transport = t
            host.removeFirst()
        }
        guard host.count == 2, guest.count == 2, let hp = UInt16(host[1]), let gp = UInt16(guest[1]), gp != 0 else { throw bad() }
        return HostForward(transport: transport, hostAddress: host[0], hostPort: hp, guestAddress: guest[0], guestPort: gp)
    }

    /// `HOST:PORT` (host may be empty, or an IPv6 address in brackets).
    static func parseInet(_ s: String, option: String, key: String) throws -> NetInetAddress {
        guard let colon = s.lastIndex(of: ":"), let port = UInt16(s[s.index(after: colon)...]) else {
            throw ConfigurationErrorText("\(option): \(key)=\(s): expected host:port")
        }
        var host = String(s[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return NetInetAddress(host: host, port: port)
    }

    static func parseSocket(_ o: inout OptionList, _ value: String, option: String) throws -> SocketNetdevConfiguration {
        let listen = o.take("listen"), connect = o.take("connect"), mcast = o.take("mcast"), udp = o.take("udp"), fd = o.take("fd")
        let local = o.take("localaddr")
        guard [listen, connect, mcast, udp, fd].compactMap({ $0 }).count == 1 else {
            throw ConfigurationErrorText("\(option) \(value): exactly one of listen=, connect=, mcast=, udp= or fd= is needed")
        }
        if let l = listen { return SocketNetdevConfiguration(mode: .listen(try parseInet(l, option: option, key: "listen"))) }
        if let c = connect { return SocketNetdevConfiguration(mode: .connect(try parseInet(c, option: option, key: "connect"))) }
        if let m = mcast { return SocketNetdevConfiguration(mode: .multicast(try parseInet(m, option: option, key: "mcast"), localAddress: local)) }
        if let f = fd { return SocketNetdevConfiguration(mode: .fd(try parseFD(f, option: option, key: "fd"))) }
        guard let l = local else { throw ConfigurationErrorText("\(option) \(value): udp= needs localaddr=host:port") }
        return SocketNetdevConfiguration(mode: .udp(remote: try parseInet(udp ?? "", option: option, key: "udp"),
                                                    local: try parseInet(l, option: option, key: "localaddr")))
    }

    /// A QAPI SocketAddress under `prefix` (addr., local., remote.); nil when none of it is given.
    static func parseSocketAddress(_ o: inout OptionList, _ prefix: String, option: String) throws -> NetSocketAddress? {
        let type = o.take(prefix + ".type")
        let host = o.take(prefix + ".host"), port = o.take(prefix + ".port")
        let path = o.take(prefix + ".path"), str = o.take(prefix + ".str")
        for k in ["numeric", "to", "ipv4", "ipv6", "keep-alive", "abstract", "tight", "mptcp"] { _ = o.take(prefix + "." + k) }
        switch type {
        case nil:
            return nil
        case "inet":
            guard let port, let p = UInt16(port) else {
                throw ConfigurationErrorText("\(option): \(prefix).port=\(port ?? ""): a port number is required")
            }
            return .inet(NetInetAddress(host: host ?? "", port: p))
        case "unix":
            guard let path, !path.isEmpty else { throw ConfigurationErrorText("\(option): \(prefix).type=unix needs \(prefix).path=") }
            return .unix(path: path)
        case "fd":
            guard let str else { throw ConfigurationErrorText("\(option): \(prefix).type=fd needs \(prefix).str=") }
            return .fd(str)
        case let t?:
            throw ConfigurationErrorText("\(option): \(prefix).type=\(t): expected inet, unix or fd")
        }
    }

    static func parseStream(_ o: inout OptionList, _ value: String, option: String) throws -> StreamNetdevConfiguration {
        guard let address = try parseSocketAddress(&o, "addr", option: option) else {
            throw ConfigurationErrorText("\(option) \(value): addr.type= is required")
        }
        var s = StreamNetdevConfiguration(server: try o.takeBool("server") ?? false, address: address)
        if let r = o.take("reconnect") {
            s.reconnectSeconds = UInt32(try KeelCommandLine.checked(r, max: UInt64(UInt32.max), option, "reconnect"))
        }
        return s
    }

    static func parseVhostUser(_ o: inout OptionList, _ value: String) throws -> VhostUserNetdevConfiguration {
        guard let chardev = o.take("chardev"), !chardev.isEmpty else { throw ConfigurationErrorText("-netdev \(value): chardev= is required") }
        var v = VhostUserNetdevConfiguration(chardev: chardev)
        if let q = o.take("queues") {
            let n = try KeelCommandLine.checked(q, max: 64, "-netdev", "queues")
            guard n >= 1 else { throw ConfigurationErrorText("-netdev \(value): queues=\(q): at least 1") }
            v.queues = Int(n)
        }
        _ = o.take("vhostforce")
        return v
    }

    static func parseDgram(_ o: inout OptionList, _ value: String, option: String) throws -> DgramNetdevConfiguration {
        let local = try parseSocketAddress(&o, "local", option: option)
        let remote = try parseSocketAddress(&o, "remote", option: option)
        guard local != nil || remote != nil else {
            throw ConfigurationErrorText("\(option) \(value): local.type= or remote.type= is required")
        }
        return DgramNetdevConfiguration(local: local, remote: remote)
    }
}

extension NetdevBackendConfiguration {
    var queueCount: Int {
        if case .tap(let t) = self { return t.queues }
        if case .vhostUser(let v) = self { return v.queues }
        return 1
    }
}
