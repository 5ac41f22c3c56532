import Devices

/// A `-netdev` (or the backend half of a `-nic`): its id and what carries the frames on the host.
public struct NetdevConfiguration: Sendable, Equatable {
    public var id: String
    public var backend: NetdevBackendConfiguration
    public init(id: String, backend: NetdevBackendConfiguration) { self.id = id; self.backend = backend }

    /// Queue pairs the backend offers (tap `queues=`); the NIC gets one virtqueue pair each.
    public var queues: Int {
        if case .tap(let t) = backend { return t.queues }
        if case .vhostUser(let v) = backend { return v.queues }
        return 1
    }
}

/// The `-netdev` types, with their options as QEMU spells them.
public enum NetdevBackendConfiguration: Sendable, Equatable {
    case tap(TapNetdevConfiguration)
    case user(UserNetdevConfiguration)
    case socket(SocketNetdevConfiguration)
    case stream(StreamNetdevConfiguration)
    case dgram(DgramNetdevConfiguration)
    case vhostUser(VhostUserNetdevConfiguration)

    public var typeName: String {
        switch self {
        case .tap: return "tap"
        case .user: return "user"
        case .socket: return "socket"
        case .stream: return "stream"
        case .dgram: return "dgram"
        case .vhostUser: return "vhost-user"
        }
    }
}

/// `-netdev tap,id=,ifname=,script=no,downscript=no[,fd=|fds=][,queues=][,vnet_hdr=][,vhost=on[,vhostfd=]]`.
public struct TapNetdevConfiguration: Sendable, Equatable {
    /// The interface to create or attach to; nil lets the kernel choose (tapN).
    public var ifname: String?
    /// Already-open tap fds (`fd=N` or `fds=N:M:...`); when set, ifname is not used.
    public var fds: [Int32] = []
    public var queues = 1
    /// IFF_VNET_HDR (QEMU's vnet_hdr=; on by default when the kernel has it).
    public var vnetHeader = true
    /// vhost=on: the kernel's vhost-net data path (/dev/vhost-net moves the frames).
    public var vhost = false
    /// `vhostfd=N` / `vhostfds=N:M`: /dev/vhost-net already open, one per queue pair.
    public var vhostFDs: [Int32] = []
    public init(ifname: String? = nil) { self.ifname = ifname }
}

/// `-netdev vhost-user,id=,chardev=[,queues=]`: the rings live in a vhost-user-net back-end; the
/// NIC's config space (MAC) and control queue stay with Keel, as in QEMU.
public struct VhostUserNetdevConfiguration: Sendable, Equatable {
    public var chardev: String
    /// Resolved from the `-chardev`: the socket path, whether Keel listens, reconnect seconds.
    public var path = ""
    public var server = false
    public var reconnectSeconds: UInt64 = 0
    public var queues = 1
    public init(chardev: String) { self.chardev = chardev }
}

/// `-netdev user,...`: libslirp user-mode networking (QEMU's defaults: 10.0.2.0/24, host
/// 10.0.2.2, DNS 10.0.2.3, the guest 10.0.2.15 by DHCP). Addresses are kept as written; the
/// backend checks them.
public struct UserNetdevConfiguration: Sendable, Equatable {
    /// `net=ADDR[/MASK]`.
    public var network: String?
    public var host: String?
    public var dns: String?
    public var dhcpStart: String?
    public var hostname: String?
    public var domainName: String?
    /// `restrict=on`: the guest reaches only the host-forwarded connections.
    public var restrict = false
    /// `ipv4=`/`ipv6=` (both on by default, as in QEMU).
    public var ipv4 = true
    public var ipv6 = true
    public var hostForwards: [HostForward] = []
    public init() {}
}

/// `hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`; empty addresses mean QEMU's
/// defaults (any host address; the first DHCP address for the guest).
public struct HostForward: Sendable, Equatable {
    public enum Transport: String, Sendable { case tcp, udp }
    public var transport: Transport
    public var hostAddress: String
    public var hostPort: UInt16
    public var guestAddress: String
    public var guestPort: UInt16
    public init(transport: Transport, hostAddress: String, hostPort: UInt16, guestAddress: String, guestPort: UInt16) {
        self.transport = transport; self.hostAddress = hostAddress; self.hostPort = hostPort
        self.guestAddress = guestAddress; self.guestPort = guestPort
    }
}

/// A host and port as written (`HOST:PORT`, host may be empty or a bracketed IPv6 address).
public struct NetInetAddress: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public init(host: String, port: UInt16) { self.host = host; self.port = port }
}

/// `-netdev socket,id=,listen=[HOST]:PORT | connect=HOST:PORT | mcast=ADDR:PORT[,localaddr=] | udp=HOST:PORT,localaddr=HOST:PORT`.
public struct SocketNetdevConfiguration: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        case listen(NetInetAddress)
        case connect(NetInetAddress)
        case multicast(NetInetAddress, localAddress: String?)
        case udp(remote: NetInetAddress, local: NetInetAddress)
        case fd(Int32)
    }
    public var mode: Mode
    public init(mode: Mode) { self.mode = mode }
}

/// QAPI SocketAddress as `-netdev stream`/`dgram` take it (`addr.type=inet,addr.host=,addr.port=`,
/// `addr.type=unix,addr.path=`, `addr.type=fd,addr.str=`).
public enum NetSocketAddress: Sendable, Equatable {
    case inet(NetInetAddress)
    case unix(path: String)
    case fd(String)
}

/// `-netdev stream,id=,server=on|off,addr.type=...[,reconnect=SECONDS]` (QEMU 7.2+).
public struct StreamNetdevConfiguration: Sendable, Equatable {
    public var server: Bool
    public var address: NetSocketAddress
    public var reconnectSeconds: UInt32?
    public init(server: Bool, address: NetSocketAddress) { self.server = server; self.address = address }
}

/// `-netdev dgram,id=,local.type=...,remote.type=...` (one frame per datagram).
public struct DgramNetdevConfiguration: Sendable, Equatable {
    public var local: NetSocketAddress?
    public var remote: NetSocketAddress?
    public init(local: NetSocketAddress? = nil, remote: NetSocketAddress? = nil) { self.local = local; self.remote = remote }
}

/// `-device virtio-net-pci,netdev=,mac=[,mq=on][,vectors=]` (or a `-nic`).
public struct VirtioNetConfiguration: Sendable, Equatable {
    /// The `-netdev id=` behind it.
    public var netdev: String
    /// Six bytes; the command line fills in QEMU's 52:54:00:12:34:56 (+ NIC index) when unset.
    public var mac: [UInt8]
    /// `mq=on`: VIRTIO_NET_F_MQ with one virtqueue pair per backend queue.
    public var multiqueue = false
    /// `vectors=`: accepted as QEMU's; Keel gives one MSI-X vector per queue plus one.
    public var vectors: Int?
    public var queueSize: UInt16 = 256
    public init(netdev: String, mac: [UInt8]) { self.netdev = netdev; self.mac = mac }

    public static let defaultMACPrefix: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34]
    /// QEMU's default for the `index`th NIC without `mac=`: 52:54:00:12:34:56, :57, ...
    public static func defaultMAC(index: Int) -> [UInt8] {
        defaultMACPrefix + [UInt8(truncatingIfNeeded: 0x56 + index)]
    }
}

extension MachineConfiguration {
    /// Checks netdevs and the NICs using them; errors name the bad value.
    func validateNetwork() throws {
        var ids: Set<String> = []
        for n in netdevs {
            guard ids.insert(n.id).inserted else { throw ConfigurationError("-netdev id=\(n.id): duplicate netdev id") }
            guard (1...64).contains(n.queues) else { throw ConfigurationError("-netdev \(n.backend.typeName),id=\(n.id),queues=\(n.queues): 1 to 64 queues") }
            if case .tap(let t) = n.backend, t.vhost { try t.validateVhost(id: n.id) }
        }
        var used: Set<String> = []
        for case .virtioNet(let v) in pciDevices {
            guard netdevs.contains(where: { $0.id == v.netdev }) else {
                throw ConfigurationError("-device virtio-net-pci,netdev=\(v.netdev): no -netdev with id=\(v.netdev)")
            }
            guard used.insert(v.netdev).inserted else {
                throw ConfigurationError("-device virtio-net-pci,netdev=\(v.netdev): netdev is already in use")
            }
            guard v.mac.count == 6, v.mac[0] & 1 == 0 else {
                throw ConfigurationError("-device virtio-net-pci,netdev=\(v.netdev): mac=\(formatMAC(v.mac)) is not a unicast address")
            }
        }
    }
}

/// aa:bb:cc:dd:ee:ff.
public func formatMAC(_ mac: [UInt8]) -> String {
    mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
}
