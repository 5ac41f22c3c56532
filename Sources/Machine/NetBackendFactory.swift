import Net

/// The seam between a `-netdev` and the Net target's backends: one backend per queue pair the
/// NIC uses. Tap lives here; user (libslirp) and socket/stream/dgram are built by
/// `openHostNetBackends` (NetBackendFactoryHost.swift).
func openNetBackends(_ netdev: NetdevConfiguration, queuePairs: Int) throws -> [NetBackend] {
    switch netdev.backend {
    case .tap(let t):
        return try openTapBackends(t, id: netdev.id, queuePairs: queuePairs)
    case .user, .socket, .stream, .dgram:
        return try openHostNetBackends(netdev)
    case .vhostUser:
        throw ConfigurationError("-netdev vhost-user,id=\(netdev.id): the rings belong to the vhost-user back-end")
    }
}

func openTapBackends(_ t: TapNetdevConfiguration, id: String, queuePairs: Int) throws -> [NetBackend] {
    do {
        if !t.fds.isEmpty {
            guard t.fds.count >= queuePairs else {
                throw ConfigurationError("-netdev tap,id=\(id): \(t.fds.count) fd(s) for \(queuePairs) queue(s)")
            }
            return try t.fds.prefix(queuePairs).map { try TapBackend.adopt(fd: $0) }
        }
        return try TapBackend.open(ifname: t.ifname, queues: queuePairs, vnetHeader: t.vnetHeader)
    } catch let e as NetBackendError {
        throw ConfigurationError("-netdev tap,id=\(id): \(e.description)")
    }
}
