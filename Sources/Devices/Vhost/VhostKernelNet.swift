import Loop
import Memory
import Net

/// virtio-net-pci over `-netdev tap,vhost=on` (QEMU's hw/net/vhost_net.c): /dev/vhost-net moves
/// frames between the guest's receive/transmit rings (its rings 0 and 1) and the tap; the
/// control queue and config space stay with Keel (`VhostNetDevice`).
extension VhostKernelDevice {
    /// vhost-net's ring numbers (drivers/vhost/net.c: VHOST_NET_VQ_RX, VHOST_NET_VQ_TX).
    static let netRings: [UInt32] = [0, 1]

    /// The device bits virtio-net offers with vhost-net: the station address, link status,
    /// mergeable buffers where the kernel has them, and the checksum/segmentation offloads the
    /// tap takes (the tap, not vhost, carries them: they are never in SET_FEATURES).
    public static func netDeviceFeatures(kernel: UInt64, tapOffloads: NetOffloads, tapHeaderLength: Int) -> UInt64 {
        var f = VirtioNetFeature.mac | VirtioNetFeature.status
        f |= kernel & VirtioNetFeature.mergeableRxBuffers
        if tapHeaderLength == VirtioNetHeader.length { f |= VirtioNetFeature.offloadFeatures(tapOffloads) }
        return f
    }

    /// The config space (§5.1.4): mac, status (link up), max_virtqueue_pairs 1, mtu 0.
    public static func netConfig(mac: [UInt8]) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: VirtioNetConfig.size)
        VirtioNetConfig.setStationAddress(mac, in: &c)
        c[VirtioNetConfig.statusOffset] = UInt8(VirtioNetConfig.statusLinkUp)
        c[VirtioNetConfig.maxPairsOffset] = 1
        return c
    }

    /// One queue pair on `vhost` with `tap`. A tap without a vnet header gets one from vhost
    /// (VHOST_NET_F_VIRTIO_NET_HDR), as QEMU asks with vnet_hdr=off.
    public static func net(tap: TapBackend, vhost: VhostKernelFD, mac: [UInt8], queueSize: UInt16,
                           memory: GuestMemory, loop: EventLoop) throws -> VhostNetDevice {
        let kernel = try vhost.features()
        let hasHeader = tap.vnetHeaderLength == VirtioNetHeader.length
        let backend = hasHeader ? 0 : VhostFeature.netVirtioNetHeader
        guard hasHeader || kernel & VhostFeature.netVirtioNetHeader != 0 else {
            throw VhostKernelError("\(vhost.path) cannot add the virtio-net header the tap lacks (use vnet_hdr=on)")
        }
        let hooks = Hooks(start: { d throws(VhostKernelError) in
            // What the driver agreed to receive becomes the tap's offloads (TUNSETOFFLOAD).
            do { try tap.setOffloads(VirtioNetFeature.guestOffloads(d.driverFeatures)) } catch {
                throw VhostKernelError("\(error)")
            }
            for r in netRings { try vhost.setNetBackend(r, fd: tap.fd) }
        }, stop: { _ throws(VhostKernelError) in
            for r in netRings { try vhost.setNetBackend(r, fd: -1) }
        })
        let rings = try VhostKernelDevice(deviceType: 1, pciClassCode: 0x02_00_00,
                                          deviceFeatures: netDeviceFeatures(kernel: kernel, tapOffloads: tap.supportedOffloads, tapHeaderLength: tap.vnetHeaderLength),
                                          config: netConfig(mac: mac), vhosts: [vhost], rings: netRings.map { (0, $0) },
                                          queueSize: queueSize, backendFeatures: backend, hooks: hooks, memory: memory, loop: loop)
        return VhostNetDevice(rings: rings, mac: mac)
    }
}
