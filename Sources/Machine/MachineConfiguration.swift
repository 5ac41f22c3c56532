import Devices
import Glibc
import Loop

/// What the guest sees and what backs it on the host, built by the command line or the Swift API
/// and validated before anything starts (Virtualization.framework's configuration shape).
public struct MachineConfiguration: Sendable {
    public enum Accelerator: String, Sendable { case kvm, tcg }

    /// An isa-debug-exit device (QEMU's): a write of v ends Keel with status (v << 1) | 1.
    public struct DebugExitDevice: Sendable, Equatable {
        public var ioBase: UInt16 = 0xF4
        public var ioSize: UInt16 = 4
        public init(ioBase: UInt16 = 0xF4, ioSize: UInt16 = 4) { self.ioBase = ioBase; self.ioSize = ioSize }
    }

    /// Where the PC's interrupt controllers and PIT live under kvm (QEMU's kernel-irqchip):
    /// all in the kernel, or only the local APICs there and the IOAPIC and PIT in Keel (QEMU's
    /// microvm default), which starts and ends a VM faster and has no 8259s.
    public enum InterruptChip: String, Sendable { case inKernel = "on", split }

    public var accelerator: Accelerator = .tcg
    public var interruptChip: InterruptChip = .inKernel
    public var memorySize: UInt64 = 128 << 20
    public var cpuCount = 1
    public var kernelPath: String?
    public var initrdPath: String?
    public var commandLine = ""
    /// COM1..COM4 in order; `.null` keeps a port present but unconnected.
    public var serialPorts: [ChardevSpec] = []
    /// -nographic: the first serial port multiplexes stdio with Ctrl-A commands.
    public var stdioMux = false
    public var noReboot = false
    public var debugExit: DebugExitDevice?
    public var testDevice = false
    public var name: String?
    /// QMP and human monitors (`-qmp`, `-monitor`, `-mon`).
    public var monitors: [MonitorSpec] = []
    /// `-S`: do not start the vCPUs until `cont`.
    public var startPaused = false
    /// `-drive` images, and the PCI devices on bus 0 (virtio-blk-pci, virtio-rng-pci...).
    public var drives: [DriveConfiguration] = []
    public var pciDevices: [PCIDeviceConfiguration] = []
    /// `-netdev` backends (and those `-nic` implies), named by virtio-net-pci's netdev=.
    public var netdevs: [NetdevConfiguration] = []
    /// `-machine memory-backend=`: the RAM's memfd backend, shareable with vhost-user back-ends.
    public var memoryBackend: MemoryBackendConfiguration?
    /// `-object iothread,id=,poll-max-ns=,poll-grow=,poll-shrink=`: each iothread's polling, by id
    /// (an iothread a device names without an entry polls with QEMU's defaults).
    public var iothreadPolling: [String: PollParameters] = [:]

    public init() {}

    public static let maxCPUs = 255
    /// Two serial ports share an IRQ pairwise, as on every PC (COM1/COM3 IRQ 4, COM2/COM4 IRQ 3).
    public static let serialPortResources: [(base: UInt16, irq: UInt8)] = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)]

    /// Checks everything that can be checked before starting; errors name the bad value.
    public func validate() throws {
        guard cpuCount >= 1 else { throw ConfigurationError("-smp \(cpuCount): at least one CPU is needed") }
        guard cpuCount <= Self.maxCPUs else { throw ConfigurationError("-smp \(cpuCount): at most \(Self.maxCPUs) CPUs are supported") }
        guard memorySize >= 16 << 20 else { throw ConfigurationError("-m \(memorySize >> 20)M: at least 16 MiB of guest memory is needed") }
        guard memorySize % 4096 == 0 else { throw ConfigurationError("-m: \(memorySize) bytes is not a multiple of the 4 KiB page size") }
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        if pages > 0, pageSize > 0 {
            let host = UInt64(pages) * UInt64(pageSize)
            guard memorySize <= host else {
                throw ConfigurationError("-m \(memorySize >> 20)M: more than this host's \(host >> 20) MiB of memory")
            }
        }
        guard kernelPath != nil else { throw ConfigurationError("no kernel given (use -kernel FILE)") }
        if initrdPath != nil && kernelPath == nil { throw ConfigurationError("-initrd needs -kernel") }
        guard serialPorts.count <= Self.serialPortResources.count else {
            throw ConfigurationError("too many -serial ports (\(serialPorts.count)); at most \(Self.serialPortResources.count)")
        }
        try validatePCI()
        try validateNetwork()
        try validateVhost()
        if let d = debugExit {
            guard d.ioSize >= 1, d.ioSize <= 8, UInt32(d.ioBase) + UInt32(d.ioSize) <= 0x10000 else {
                throw ConfigurationError("isa-debug-exit: iobase=0x\(String(d.ioBase, radix: 16)),iosize=\(d.ioSize) is not a valid I/O range")
            }
        }
    }
}

/// A configuration or command-line mistake; the message names the bad value.
public struct ConfigurationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
