/// `-device virtio-scsi-pci,id=scsi0` and the `-device scsi-hd,drive=,bus=scsi0.0` disks on it.
public struct VirtioSCSIConfiguration: Sendable, Equatable {
    /// A `scsi-hd`: a drive seen as a direct-access logical unit at (scsi-id, lun).
    public struct Disk: Sendable, Equatable {
        public var drive: String
        public var target = 0
        public var lun = 0
        /// VPD page 80h; empty leaves it out.
        public var serial = ""
        public init(drive: String) { self.drive = drive }
    }

    /// The controller's `id=`; its bus is `<id>.0`.
    public var id: String
    public var queueCount = 1
    public var queueSize: UInt16 = 256
    public var iothread: String?
    public var ioeventfd = true
    public var disks: [Disk] = []
    public init(id: String) { self.id = id }
}

extension MachineConfiguration {
    /// Checks the virtio-scsi controllers: drives exist and are unused, addresses are unique.
    func validateSCSI(usedDrives: inout Set<String>) throws {
        for case .virtioSCSI(let s) in pciDevices {
            guard (1...64).contains(s.queueCount) else {
                throw ConfigurationError("-device virtio-scsi-pci,num_queues=\(s.queueCount): 1 to 64 queues")
            }
            var addresses: Set<Int> = []
            for d in s.disks {
                guard let drive = drives.first(where: { $0.id == d.drive }) else {
                    throw ConfigurationError("-device scsi-hd,drive=\(d.drive): no -drive with id=\(d.drive)")
                }
                guard drive.interface == .none else {
                    throw ConfigurationError("-device scsi-hd,drive=\(d.drive): the -drive needs if=none")
                }
                guard usedDrives.insert(d.drive).inserted else {
                    throw ConfigurationError("-device scsi-hd,drive=\(d.drive): drive is already in use")
                }
                guard (0...255).contains(d.target), (0...16383).contains(d.lun) else {
                    throw ConfigurationError("-device scsi-hd,drive=\(d.drive): scsi-id=\(d.target),lun=\(d.lun) is out of range (0-255, 0-16383)")
                }
                guard addresses.insert(d.target << 16 | d.lun).inserted else {
                    throw ConfigurationError("-device scsi-hd,drive=\(d.drive): scsi-id=\(d.target),lun=\(d.lun) is already taken on \(s.id).0")
                }
            }
        }
    }
}
