import Loop
import Memory

/// vhost-vsock-pci (virtio 1.2 §5.10, device ID 19; QEMU's hw/virtio/vhost-vsock*.c): the rx
/// and tx rings go to /dev/vhost-vsock, the event queue stays with Keel. Its only event,
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, follows a migration, which Keel does not do: the
/// driver's event buffers are just held.
extension VhostKernelDevice {
    public static let vsockDeviceType: UInt16 = 19
    /// VIRTIO_VSOCK_F_SEQPACKET (§5.10.3), offered where the kernel has it.
    public static let vsockSeqpacket: UInt64 = 1 << 1
    /// QEMU's VHOST_VSOCK_QUEUE_SIZE.
    public static let vsockQueueSize: UInt16 = 128
    /// CIDs 0-2 are the hypervisor, local and host; 2^32-1 is VMADDR_CID_ANY.
    public static let vsockGuestCIDs: ClosedRange<UInt64> = 3...(UInt64(UInt32.max) - 1)

    /// The config space: le64 guest_cid (§5.10.4).
    public static func vsockConfig(guestCID: UInt64) -> [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: guestCID >> (8 * UInt64($0))) }
    }

    /// Claims `guestCID` on `vhost` now (another VM holding it fails here, as QEMU's realize does).
    public static func vsock(vhost: VhostKernelFD, guestCID: UInt64, memory: GuestMemory, loop: EventLoop) throws -> VhostKernelDevice {
        guard vsockGuestCIDs.contains(guestCID) else {
            throw VhostKernelError("guest-cid=\(guestCID) is not from 3 to \(vsockGuestCIDs.upperBound)")
        }
        let kernel = try vhost.features()
        let hooks = Hooks(start: { _ throws(VhostKernelError) in try vhost.setVsockRunning(true) },
                          stop: { _ throws(VhostKernelError) in try vhost.setVsockRunning(false) })
        // PCI_CLASS_COMMUNICATION_OTHER, as QEMU's vhost-vsock-pci.
        let d = try VhostKernelDevice(deviceType: vsockDeviceType, pciClassCode: 0x07_80_00, deviceFeatures: kernel & vsockSeqpacket,
                                      config: vsockConfig(guestCID: guestCID), vhosts: [vhost], rings: [(0, 0), (0, 1)],
                                      keptQueueCount: 1, queueSize: vsockQueueSize, hooks: hooks, memory: memory, loop: loop)
        try vhost.setVsockGuestCID(guestCID)
        d.keptQueue = { _ in }
        return d
    }
}
