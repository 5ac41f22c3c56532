/// A `-drive`: a host image and how it is opened (QEMU's blockdev options, the subset Keel has).
public struct DriveConfiguration: Sendable, Equatable {
    public enum Interface: String, Sendable { case virtio, none }
    public enum Cache: String, Sendable { case writeback, none, unsafe, writethrough, directsync }
    public enum AIO: String, Sendable { case threads, native, io_uring }

    public var id: String
    public var file: String
    public var format = "raw"
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
}

public struct VirtioBlockConfiguration: Sendable, Equatable {
    /// The `-drive id=` backing this disk.
    public var drive: String
    public var queueCount = 1
    public var queueSize: UInt16 = 256
    public var serial = ""
    /// `-object iothread,id=` owning the queues (not yet honoured: the main loop owns them).
    public var iothread: String?
    public init(drive: String) { self.drive = drive }
}

extension MachineConfiguration {
    /// Checks drives and PCI devices; errors name the bad value.
    func validatePCI() throws {
        var ids: Set<String> = []
        for d in drives {
            guard ids.insert(d.id).inserted else { throw ConfigurationError("-drive id=\(d.id): duplicate drive id") }
            guard d.format == "raw" || d.format == "qcow2" else {
                throw ConfigurationError("-drive \(d.file): format=\(d.format) is not supported (raw or qcow2)")
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
        guard pciDevices.count <= 30 else { throw ConfigurationError("\(pciDevices.count) PCI devices: at most 30 fit on bus 0") }
    }
}
