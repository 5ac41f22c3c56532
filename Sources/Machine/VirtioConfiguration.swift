import Devices

/// A `-drive`: a host image and how it is opened (QEMU's blockdev options, the subset Keel has).
public struct DriveConfiguration: Sendable, Equatable {
    public enum Interface: String, Sendable { case virtio, none }
    public enum Cache: String, Sendable { case writeback, none, unsafe, writethrough, directsync }
    public enum AIO: String, Sendable { case threads, native, io_uring }

    public var id: String
    public var file: String
    /// raw or qcow2; nil probes the file as QEMU does (a qcow2 header is never taken for raw).
    public var format: String?
    public var interface: Interface = .virtio
    public var cache: Cache = .writeback
    public var aio: AIO = .threads
    public var readOnly = false

    public init(id: String, file: String) { self.id = id; self.file = file }
}

/// A PCI device on bus 0 (`-device ...-pci`, or implied by `-drive if=virtio`).
public enum PCIDeviceConfiguration: Sendable, Equatable {
    case virtioBlock(VirtioBlockConfiguration)
    case virtioRNG
    /// `-device virtio-serial-pci` with its `-device virtconsole,chardev=` ports.
    case virtioSerial(VirtioSerialConfiguration)
    /// `-device virtio-net-pci,netdev=` (or `-nic`), backed by the `-netdev` it names.
    case virtioNet(VirtioNetConfiguration)
    /// `-device virtio-scsi-pci` with its `-device scsi-hd` disks.
    case virtioSCSI(VirtioSCSIConfiguration)
    /// `-device vhost-user-blk-pci,chardev=`: virtio-blk served by a vhost-user back-end.
    case vhostUserBlock(VhostUserBlockConfiguration)
    /// `-device vhost-user-scsi-pci,chardev=`: virtio-scsi served by a vhost-user back-end
    /// (queueCount counts request queues, as num_queues does).
    case vhostUserSCSI(VhostUserBlockConfiguration)
    /// `-device vhost-vsock-pci,guest-cid=`: virtio-vsock served by /dev/vhost-vsock.
    case vhostVsock(VhostVsockConfiguration)
}

/// A virtio-serial controller and its console ports (port 0 becomes the guest's hvc0).
public struct VirtioSerialConfiguration: Sendable, Equatable {
    public struct Port: Sendable, Equatable {
        /// The `-chardev id=` the port is attached to.
        public var chardev: String
        /// Resolved from the `-chardev` options once the command line is read.
        public var backend: ChardevSpec = .null
        public init(chardev: String, backend: ChardevSpec = .null) { self.chardev = chardev; self.backend = backend }
    }
    public var ports: [Port] = []
    public init(ports: [Port] = []) { self.ports = ports }
}

public struct VirtioBlockConfiguration: Sendable, Equatable {
    /// The `-drive id=` backing this disk.
    public var drive: String
    public var queueCount = 1
    public var queueSize: UInt16 = 256
    public var serial = ""
    /// `-object iothread,id=` owning the queues (their processing runs on that thread).
    public var iothread: String?
    /// Queue notifications through kvm's ioeventfd and MSI-X through irqfd (QEMU's
    /// `ioeventfd=on`); off, every notify write exits to Keel and MSIs go by ioctl.
    public var ioeventfd = true
    public init(drive: String) { self.drive = drive }
}

extension MachineConfiguration {
    /// Checks drives and PCI devices; errors name the bad value.
    func validatePCI() throws {
        var ids: Set<String> = []
        for d in drives {
            guard ids.insert(d.id).inserted else { throw ConfigurationError("-drive id=\(d.id): duplicate drive id") }
            if let f = d.format, f != "raw", f != "qcow2" {
                throw ConfigurationError("-drive \(d.file): format=\(f) is not supported (raw or qcow2)")
            }
        }
        var used: Set<String> = []
        for case .virtioBlock(let b) in pciDevices {
            guard let d = drives.first(where: { $0.id == b.drive }) else {
                throw ConfigurationError("-device virtio-blk-pci,drive=\(b.drive): no -drive with id=\(b.drive)")
            }
            guard d.interface == .none || d.interface == .virtio else { throw ConfigurationError("-drive id=\(d.id): unsupported interface") }
            guard used.insert(b.drive).inserted else {
                throw ConfigurationError("-device virtio-blk-pci,drive=\(b.drive): drive is already in use")
            }
            guard (1...64).contains(b.queueCount) else {
                throw ConfigurationError("-device virtio-blk-pci,num-queues=\(b.queueCount): 1 to 64 queues")
            }
        }
        try validateSCSI(usedDrives: &used)
        try validateVhostKernel()
        for case .virtioSerial(let s) in pciDevices {
            guard !s.ports.isEmpty else { throw ConfigurationError("-device virtio-serial-pci: no -device virtconsole,chardev=... port on it") }
            guard s.ports.count <= 31 else { throw ConfigurationError("-device virtio-serial-pci: \(s.ports.count) ports, at most 31") }
        }
        guard pciDevices.count <= 30 else { throw ConfigurationError("\(pciDevices.count) PCI devices: at most 30 fit on bus 0") }
    }
}
