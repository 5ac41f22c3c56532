/// `-netdev stream` (and `-netdev socket,listen=|connect=`): frames over one TCP or unix-socket
/// byte stream, each behind a 4-byte big-endian length, as QEMU frames them.
public struct StreamNetworkConfiguration: Equatable, Sendable {
    /// `server=on` listens (one peer at a time); `server=off` connects.
    public var server: Bool
    public var address: NetSocketEndpoint
    /// `reconnect=`: seconds between connection attempts after the peer goes away (client only);
    /// 0 leaves the link down.
    public var reconnectSeconds: UInt32

    public init(server: Bool, address: NetSocketEndpoint, reconnectSeconds: UInt32 = 0) {
        self.server = server; self.address = address; self.reconnectSeconds = reconnectSeconds
    }
}

/// `-netdev dgram` (and `-netdev socket,udp=,localaddr=`): one frame per datagram, UDP or unix.
public struct DatagramNetworkConfiguration: Equatable, Sendable {
    /// Where frames from the peer arrive; nil binds an ephemeral port (inet only).
    public var local: NetSocketEndpoint?
    /// Where frames from the guest go.
    public var remote: NetSocketEndpoint

    public init(local: NetSocketEndpoint?, remote: NetSocketEndpoint) {
        self.local = local; self.remote = remote
    }
}
