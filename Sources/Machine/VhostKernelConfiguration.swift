import Devices
import Net

/// `-device vhost-vsock-pci,guest-cid=N[,vhostfd=N]`: the guest's AF_VSOCK address, served by
/// the host kernel's vhost-vsock.
public struct VhostVsockConfiguration: Sendable, Equatable {
    /// 3 to 2^32-2 (0-2 are reserved, 2^32-1 is VMADDR_CID_ANY).
    public var guestCID: UInt64
    /// /dev/vhost-vsock already open (a management tool's), instead of opening it.
    public var vhostFD: Int32?
    public init(guestCID: UInt64, vhostFD: Int32? = nil) { self.guestCID = guestCID; self.vhostFD = vhostFD }

    /// The one-line complaint about a guest CID, or nil when it is usable.
    public static func guestCIDProblem(_ cid: UInt64) -> String? {
        VhostKernelDevice.vsockGuestCIDs.contains(cid) ? nil
            : "guest-cid=\(cid): must be from 3 to \(VhostKernelDevice.vsockGuestCIDs.upperBound)"
    }
}

/// Where the kernel's vhost devices live.
public enum VhostKernelPaths {
    public static let net = "/dev/vhost-net"
    public static let vsock = "/dev/vhost-vsock"
}

extension TapNetdevConfiguration {
    func validateVhost(id: String) throws {
        // Several pairs need VQ_PAIRS_SET to attach and detach tap queues (TUNSETQUEUE): not yet.
        guard queues == 1 else {
            throw ConfigurationError("-netdev tap,id=\(id),vhost=on,queues=\(queues): Keel's vhost-net takes 1 queue pair")
        }
        guard vhostFDs.count <= 1 else {
            throw ConfigurationError("-netdev tap,id=\(id),vhost=on: \(vhostFDs.count) vhostfds for 1 queue pair")
        }
    }
}

extension MachineConfiguration {
    func validateVhostKernel() throws {
        var cids: Set<UInt64> = []
        for case .vhostVsock(let v) in pciDevices {
            if let p = VhostVsockConfiguration.guestCIDProblem(v.guestCID) { throw ConfigurationError("-device vhost-vsock-pci,\(p)") }
            guard cids.insert(v.guestCID).inserted else {
                throw ConfigurationError("-device vhost-vsock-pci,guest-cid=\(v.guestCID): two devices with one CID")
            }
        }
    }
}

/// Opens a vhost device, or adopts `fd`; the error is one line naming the option and the node.
func openVhostKernel(_ path: String, fd: Int32?, option: String) throws -> VhostKernelFD {
    if let fd { return VhostKernelFD(adopting: fd, path: "\(path) (vhostfd=\(fd))") }
    do {
        return try VhostKernelFD(path: path)
    } catch {
        throw ConfigurationError("\(option): \(error)")
    }
}

extension PCIBusDevices {
    /// The tap opened as for vhost=off (Keel never reads it), /dev/vhost-net moving its frames.
    static func vhostKernelNet(_ t: TapNetdevConfiguration, id: String, nic: VirtioNetConfiguration, board: PCBoard) throws -> VirtioDevice {
        let option = "-netdev tap,id=\(id),vhost=on"
        var plain = t
        plain.vhost = false
        let taps = try openTapBackends(plain, id: id, queuePairs: 1)
        guard let tap = taps.first as? TapBackend else { throw ConfigurationError("\(option): the tap did not open") }
        let vhost = try openVhostKernel(VhostKernelPaths.net, fd: t.vhostFDs.first, option: option)
        do {
            return try VhostKernelDevice.net(tap: tap, vhost: vhost, mac: nic.mac, queueSize: nic.queueSize, memory: board.memory, loop: board.loop)
        } catch {
            throw ConfigurationError("\(option): \(error)")
        }
    }

    static func vhostVsock(_ v: VhostVsockConfiguration, board: PCBoard) throws -> VirtioDevice {
        let option = "-device vhost-vsock-pci,guest-cid=\(v.guestCID)"
        let vhost = try openVhostKernel(VhostKernelPaths.vsock, fd: v.vhostFD, option: option)
        do {
            return try VhostKernelDevice.vsock(vhost: vhost, guestCID: v.guestCID, memory: board.memory, loop: board.loop)
        } catch {
            throw ConfigurationError("\(option): \(error)")
        }
    }
}
