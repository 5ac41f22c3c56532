import Net

/// user (libslirp) and socket/stream/dgram backends. Each returns exactly one backend (these
/// netdevs have one queue). Errors name the netdev and the bad value.
func openHostNetBackends(_ netdev: NetdevConfiguration) throws -> [NetBackend] {
    let what = "-netdev \(netdev.backend.typeName),id=\(netdev.id)"
    do {
        switch netdev.backend {
        case .tap:
            throw ConfigurationError("\(what): tap is opened by openTapBackends")
        case .vhostUser:
            throw ConfigurationError("\(what): the rings belong to the vhost-user back-end")
        case .user(let u):
            return [try UserBackend(try userNetworkConfiguration(u))]
        case .socket(let s):
            switch s.mode {
            case .listen(let a):
                return [try StreamBackend(StreamNetworkConfiguration(server: true, address: endpoint(a)))]
            case .connect(let a):
                return [try StreamBackend(StreamNetworkConfiguration(server: false, address: endpoint(a)))]
            case .udp(let remote, let local):
                return [try DatagramBackend(DatagramNetworkConfiguration(local: endpoint(local), remote: endpoint(remote)))]
            case .multicast:
                throw ConfigurationError("\(what): mcast= is not supported (use udp=/localaddr= or -netdev dgram)")
            case .fd:
                throw ConfigurationError("\(what): fd= is not supported (use listen= or connect=)")
            }
        case .stream(let s):
            let address = try endpoint(s.address, what: what, key: "addr")
            if s.server, s.reconnectSeconds != nil {
                throw ConfigurationError("\(what): reconnect= applies only to server=off")
            }
            return [try StreamBackend(StreamNetworkConfiguration(server: s.server, address: address,
                                                                 reconnectSeconds: s.reconnectSeconds ?? 0))]
        case .dgram(let d):
            guard let remote = d.remote else {
                throw ConfigurationError("\(what): remote.type= is required (multicast is not supported)")
            }
            return [try DatagramBackend(DatagramNetworkConfiguration(local: try d.local.map { try endpoint($0, what: what, key: "local") },
                                                                     remote: try endpoint(remote, what: what, key: "remote")))]
        }
    } catch let e as NetBackendError {
        throw ConfigurationError("\(what): \(e.description)")
    }
}

private func endpoint(_ a: NetInetAddress) -> NetSocketEndpoint { .inet(host: a.host, port: a.port) }

private func endpoint(_ a: NetSocketAddress, what: String, key: String) throws -> NetSocketEndpoint {
    switch a {
    case .inet(let i): return .inet(host: i.host, port: i.port)
    case .unix(let path): return .unix(path: path)
    case .fd(let s): throw ConfigurationError("\(what): \(key).type=fd (\(key).str=\(s)) is not supported (use inet or unix)")
    }
}

/// The command line's strings turned into the backend's checked addresses (QEMU's defaults for
/// what is not given).
func userNetworkConfiguration(_ u: UserNetdevConfiguration) throws -> UserNetworkConfiguration {
    var c = UserNetworkConfiguration()
    func address(_ text: String?, _ key: String) throws -> IPv4Address? {
        guard let text else { return nil }
        guard let a = IPv4Address(text) else { throw NetBackendError("\(key)=\(text) is not an IPv4 address") }
        return a
    }
    if let n = u.network { try c.setNetwork(n) }
    c.host = try address(u.host, "host")
    c.dns = try address(u.dns, "dns")
    c.dhcpStart = try address(u.dhcpStart, "dhcpstart")
    c.hostname = u.hostname
    c.domainName = u.domainName
    c.restricted = u.restrict
    c.ipv4 = u.ipv4
    c.ipv6 = u.ipv6
    c.hostForwards = try u.hostForwards.map { f in
        let rule = "hostfwd=\(f.transport.rawValue):\(f.hostAddress):\(f.hostPort)-\(f.guestAddress):\(f.guestPort)"
        let host = f.hostAddress.isEmpty ? IPv4Address(0) : try address(f.hostAddress, rule + ": host address")
        let guest = f.guestAddress.isEmpty ? nil : try address(f.guestAddress, rule + ": guest address")
        return UserNetworkConfiguration.HostForward(udp: f.transport == .udp, hostAddress: host ?? IPv4Address(0), hostPort: f.hostPort,
                                                    guestAddress: guest, guestPort: f.guestPort)
    }
    _ = try c.resolved()
    return c
}
