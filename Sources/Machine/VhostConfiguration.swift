import Devices

/// `-object memory-backend-memfd,id=,size=,share=on` named by `-machine memory-backend=` (or
/// `-numa node,memdev=`): Keel's RAM is always one memfd mapped MAP_SHARED; `share` records
/// whether the user allowed other processes (vhost-user back-ends) to map it, as QEMU requires.
public struct MemoryBackendConfiguration: Sendable, Equatable {
    public var id: String
    public var size: UInt64
    public var share = false
    public init(id: String, size: UInt64, share: Bool = false) { self.id = id; self.size = size; self.share = share }
}

/// `-device vhost-user-blk-pci,chardev=ID[,num-queues=N][,queue-size=N]` with its `-chardev socket`.
public struct VhostUserBlockConfiguration: Sendable, Equatable {
    public var chardev: String
    /// Resolved from the `-chardev`: the socket path, whether Keel listens, reconnect seconds.
    public var path = ""
    public var server = false
    public var reconnectSeconds: UInt64 = 0
    public var queueCount = 1
    public var queueSize: UInt16 = 128
    public init(chardev: String) { self.chardev = chardev }
}

extension MachineConfiguration {
    /// QEMU's words when vhost-user meets private RAM.
    static let vhostUserNeedsSharedMemory = "Failed initializing vhost-user memory map, consider using -object memory-backend-memfd share=on"

    /// Every vhost-user front-end device with its -device name.
    var vhostUserDevices: [(String, VhostUserBlockConfiguration)] {
        pciDevices.compactMap {
            switch $0 {
            case .vhostUserBlock(let b): return ("vhost-user-blk-pci", b)
            case .vhostUserSCSI(let b): return ("vhost-user-scsi-pci", b)
            default: return nil
            }
        }
    }

    func validateVhost() throws {
        let vhost = !vhostUserDevices.isEmpty
            || netdevs.contains { if case .vhostUser = $0.backend { return true } else { return false } }
        if let m = memoryBackend, m.size != memorySize {
            throw ConfigurationError("memory-backend \(m.id): size=\(m.size >> 20)M differs from -m \(memorySize >> 20)M")
        }
        if vhost && memoryBackend?.share != true { throw ConfigurationError(Self.vhostUserNeedsSharedMemory) }
        for n in netdevs {
            guard case .vhostUser(let u) = n.backend else { continue }
            guard !u.path.isEmpty else { throw ConfigurationError("-netdev vhost-user,id=\(n.id),chardev=\(u.chardev): no socket path") }
        }
        for (name, b) in vhostUserDevices {
            guard !b.path.isEmpty else { throw ConfigurationError("-device \(name),chardev=\(b.chardev): no socket path") }
            guard (1...64).contains(b.queueCount) else {
                throw ConfigurationError("-device \(name),num-queues=\(b.queueCount): 1 to 64 queues")
            }
            guard b.queueSize >= 4, b.queueSize <= 1024, b.queueSize.nonzeroBitCount == 1 else {
                throw ConfigurationError("-device \(name),queue-size=\(b.queueSize): a power of two from 4 to 1024")
            }
        }
    }
}
