import Devices
import Glibc
import Loop
import Memory

/// Keel's x86-64 PC board: guest RAM laid out as a PC, the PIO and MMIO buses with the legacy
/// devices, ACPI tables, and the kernel loaded for a direct boot (no firmware). One board lives
/// for the whole run; a machine reset zeroes RAM, resets devices and loads the kernel again.
public final class PCBoard: @unchecked Sendable {
    public let configuration: MachineConfiguration
    public let map: PCMemoryMap
    public let memory: GuestMemory
    public let pioBus = Bus(name: "pio")
    public let mmioBus = Bus(name: "mmio")
    public let lock: BigLock
    public let loop: EventLoop
    public let requests: MachineRequestQueue
    public let interrupts = InterruptRouting()

    /// The images, read once: a reset must not depend on the files still being there.
    let kernel: [UInt8]
    let initrd: [UInt8]?
    var chardevs: [Chardev] = []
    var devices: LegacyDevices!
    var pci: PCIBusDevices!
    /// The interrupt controllers and PIT when they are Keel's rather than the kernel's: kvm's
    /// split irqchip (IOAPIC, PIT), or tcg (LocalAPICs, IOAPIC, PIC pair, PIT).
    public private(set) var userspaceInterrupts: UserspaceInterruptChips?

    public init(configuration: MachineConfiguration, loop: EventLoop, lock: BigLock, requests: MachineRequestQueue) throws {
        self.configuration = configuration
        self.loop = loop
        self.lock = lock
        self.requests = requests
        var map = PCMemoryMap(ramSize: configuration.memorySize)
        map.reservedRanges = [E820Entry(address: PCIBusDevices.ecamBase, size: UInt64(PCIBusDevices.busCount) << 20, type: .reserved)]
        self.map = map
        guard let kernelPath = configuration.kernelPath else { throw ConfigurationError("no kernel given (use -kernel FILE)") }
        kernel = try readHostFile(kernelPath, what: "kernel")
        initrd = try configuration.initrdPath.map { try readHostFile($0, what: "initrd") }
        guard KernelLoader.detect(kernel) != nil else {
            throw ConfigurationError("kernel \(kernelPath): not a Linux bzImage or PVH ELF kernel")
        }
        // A memory backend object asks for a memfd another process can map; otherwise RAM is
        // private and huge-page backed, as QEMU's default.
        memory = try GuestMemory(layout: map.ramRegions, backing: configuration.memoryBackend == nil ? .anonymous : .memfd)
        do {
            devices = try LegacyDevices(board: self)
            pci = try PCIBusDevices(board: self)
            if configuration.accelerator == .tcg {
                userspaceInterrupts = try UserspaceInterruptChips(board: self, localAPICCount: configuration.cpuCount)
            } else if configuration.interruptChip == .split {
                userspaceInterrupts = try UserspaceInterruptChips(board: self)
            }
        } catch {
            close()
            throw error
        }
    }

    /// Writes ACPI tables and the kernel into guest RAM; returns the boot vCPU's entry state.
    public func loadBootImages() throws -> BootCPUState {
        let tables = try ACPITables.build(acpiConfiguration, at: PCMemoryMap.biosAreaStart,
                                          maxSize: Int(PCMemoryMap.biosAreaEnd - PCMemoryMap.biosAreaStart))
        try memory.write(tables.bytes, at: tables.baseAddress)
        return try KernelLoader.load(kernel: kernel, kernelName: configuration.kernelPath ?? "kernel",
                                     initrd: initrd, initrdName: configuration.initrdPath,
                                     commandLine: configuration.commandLine, memory: memory, map: map,
                                     rsdpAddress: tables.rsdpAddress)
    }

    var acpiConfiguration: ACPIConfiguration {
        var a = ACPIConfiguration(cpuCount: configuration.cpuCount)
        a.hasLegacyPIC = userspaceInterrupts.map { $0.controllers.pic != nil } ?? true
        a.rtcCenturyIndex = UInt8(CMOSRTC.centuryRegister)
        a.pciRoot = pci?.root
        a.serialPorts = configuration.serialPorts.indices.compactMap { i -> ACPIConfiguration.SerialPort? in
            guard configuration.serialPorts[i] != .disabled else { return nil }
            let r = MachineConfiguration.serialPortResources[i]
            return ACPIConfiguration.SerialPort(name: "COM\(i + 1)", base: r.base, irq: r.irq)
        }
        return a
    }

    /// Power-on state again: RAM zeroed and returned to the host, devices reset (CMOS keeps its
    /// NVRAM, as a PC's battery-backed CMOS does), interrupt lines low. Call with vCPUs stopped.
    public func reset() {
        lock.withLock { pci.stopVhostBackendsLocked() }
        pci.drainRequests()
        memory.discardAll()
        interrupts.forgetLevels()
        lock.withLock {
            devices.reset()
            pci.reset()
            userspaceInterrupts?.reset()
        }
    }

    /// The running accelerator's in-kernel notification paths (kvm's ioeventfd and irqfd) for
    /// the virtio devices; nil withdraws them before that accelerator's VM is destroyed. Call
    /// with the big lock held.
    public func setIOEventAcceleratorLocked(_ accelerator: IOEventAccelerator?) {
        pci?.setIOEventsLocked(accelerator)
    }

    /// QMP stop/cont: virtio queue processing pauses and resumes with the vCPUs (QEMU's vm_stop
    /// stops the dataplanes too). Call with the big lock held.
    public func setDeviceQueuesPausedLocked(_ paused: Bool) {
        pci?.setQueuesPausedLocked(paused)
    }

    /// The `-object iothread` threads running devices: id and host thread ID.
    public var iothreads: [(id: String, threadID: Int32, polling: PollParameters)] { pci?.iothreadThreads ?? [] }

    /// Presses the ACPI power button (QMP system_powerdown). Call with the big lock held.
    public func pressPowerButtonLocked() {
        devices.pm.pressPowerButton()
    }

    /// COM1's chardev when it multiplexes the Ctrl-A escapes (-nographic, -serial mon:stdio):
    /// the human monitor goes behind its Ctrl-A c.
    public var muxedConsole: MuxChardev? {
        guard configuration.stdioMux, configuration.serialPorts.first == .stdio else { return nil }
        return chardevs.first as? MuxChardev
    }

    /// A line for the host's terminal, readable even while stdio is in raw mode.
    public func hostMessage(_ text: String) {
        var line = text + "\r\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    /// Closes chardevs and restores the terminal.
    public func close() {
        pci?.close()
        for c in chardevs { c.close() }
        chardevs.removeAll()
    }
}
