import Net

/// user (libslirp) and socket/stream/dgram backends: filled in by the net-backends work. Each
/// returns exactly one backend (these netdevs have one queue).
func openHostNetBackends(_ netdev: NetdevConfiguration) throws -> [NetBackend] {
    throw ConfigurationError("-netdev \(netdev.backend.typeName),id=\(netdev.id): this netdev type is not built yet")
}
