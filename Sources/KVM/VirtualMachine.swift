import CKeel
import Glibc

/// A KVM VM fd: memory slots, the in-kernel irqchip and PIT, interrupt injection, irqfd/ioeventfd.
public final class VirtualMachine: @unchecked Sendable {
    public let fd: Int32
    public let system: KVMSystem
    private var nextSlot: UInt32 = 0
    /// Owners of the host memory behind the slots: KVM keeps using it as long as the VM lives.
    private var memoryOwners: [AnyObject] = []

    init(fd: Int32, system: KVMSystem) {
        self.fd = fd
        self.system = system
    }

    deinit { close(fd) }

    /// Maps `size` bytes of host memory at `host` as guest-physical `guestAddress`. Returns the slot.
    @discardableResult
    public func setUserMemoryRegion(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, owner: AnyObject, logDirty: Bool = false) throws -> UInt32 {
        var r = kvm_userspace_memory_region()
        r.slot = nextSlot
        r.flags = logDirty ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0
        r.guest_phys_addr = guestAddress
        r.memory_size = size
        r.userspace_addr = UInt64(UInt(bitPattern: host))
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_USER_MEMORY_REGION, &r), "KVM_SET_USER_MEMORY_REGION(0x\(String(guestAddress, radix: 16)))")
        nextSlot += 1
        memoryOwners.append(owner)
        return r.slot
    }

    /// The three pages KVM needs for real-mode emulation on Intel (harmless elsewhere).
    public func setTSSAddress(_ address: UInt64) throws {
        _ = try check(ckeel_ioctl(fd, CKEEL_KVM_SET_TSS_ADDR, UInt(address)), "KVM_SET_TSS_ADDR")
    }

    public func setIdentityMapAddress(_ address: UInt64) throws {
        var a = address
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_IDENTITY_MAP_ADDR, &a), "KVM_SET_IDENTITY_MAP_ADDR")
    }

    /// In-kernel PIC pair, IOAPIC and a local APIC per vCPU (create before any vCPU).
    public func createIRQChip() throws {
        _ = try check(ckeel_ioctl(fd, CKEEL_KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP")
    }

    /// Split irqchip (KVM_CAP_SPLIT_IRQCHIP): only the local APICs live in the kernel; the IOAPIC
    /// (with `ioapicPins` routes reserved for it), PIC and PIT are Keel's, in userspace. Create
    /// before any vCPU. Saves the in-kernel irqchip's set-up and tear-down.
    public func enableSplitIRQChip(ioapicPins: UInt64 = 24) throws {
        var cap = kvm_enable_cap()
        cap.cap = UInt32(KVM_CAP_SPLIT_IRQCHIP)
        cap.args.0 = ioapicPins
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_ENABLE_CAP, &cap), "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)")
    }

    /// In-kernel 8254 PIT, with the speaker port (0x61) handled in the kernel too.
    public func createPIT2() throws {
        var cfg = kvm_pit_config()
        cfg.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_CREATE_PIT2, &cfg), "KVM_CREATE_PIT2")
    }

    /// Drives an interrupt line (GSI) of the in-kernel PIC/IOAPIC to `level`.
    public func setIRQLine(_ gsi: UInt32, level: Bool) throws {
        var l = kvm_irq_level()
        l.irq = gsi
        l.level = level ? 1 : 0
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_IRQ_LINE, &l), "KVM_IRQ_LINE(\(gsi))")
    }

    /// Delivers a message-signalled interrupt (address/data as a PCI device would write them).
    public func signalMSI(address: UInt64, data: UInt32) throws {
        var m = kvm_msi()
        m.address_lo = UInt32(truncatingIfNeeded: address)
        m.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        m.data = data
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SIGNAL_MSI, &m), "KVM_SIGNAL_MSI")
    }

    /// Signals on `eventFD` raise `gsi` inside the kernel, with no exit to Keel.
    public func registerIRQFD(_ eventFD: Int32, gsi: UInt32) throws {
        var i = kvm_irqfd()
        i.fd = UInt32(eventFD)
        i.gsi = gsi
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_IRQFD, &i), "KVM_IRQFD(gsi \(gsi))")
    }

    public func unregisterIRQFD(_ eventFD: Int32, gsi: UInt32) throws {
        var i = kvm_irqfd()
        i.fd = UInt32(eventFD)
        i.gsi = gsi
        i.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_IRQFD, &i), "KVM_IRQFD deassign(gsi \(gsi))")
    }

    public enum IOEventSpace { case pio, mmio }

    /// A guest write of `length` bytes to `address` signals `eventFD` inside the kernel instead of
    /// exiting; `datamatch` restricts it to one written value.
    public func registerIOEventFD(_ eventFD: Int32, space: IOEventSpace, address: UInt64, length: UInt32, datamatch: UInt64? = nil, deassign: Bool = false) throws {
        var e = kvm_ioeventfd()
        e.addr = address
        e.len = length
        e.fd = eventFD
        var flags: UInt32 = 0
        if space == .pio { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if let d = datamatch { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_datamatch); e.datamatch = d }
        if deassign { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_deassign) }
        e.flags = flags
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_IOEVENTFD, &e), "KVM_IOEVENTFD(0x\(String(address, radix: 16)))")
    }

    public func createVCPU(id: UInt32) throws -> VCPU {
        let vfd = try check(ckeel_ioctl(fd, CKEEL_KVM_CREATE_VCPU, UInt(id)), "KVM_CREATE_VCPU(\(id))")
        return try VCPU(fd: vfd, id: id, mmapSize: system.vcpuMmapSize, vm: self)
    }
}

/// One entry of KVM's GSI routing table.
public enum GSIRoute: Equatable, Sendable {
    /// A pin of the in-kernel PIC or IOAPIC.
    case irqchip(gsi: UInt32, chip: UInt32, pin: UInt32)
    /// A message-signalled interrupt (also how a split irqchip's userspace IOAPIC pins are
    /// described to KVM, so that it reports EOIs of their level-triggered vectors).
    case msi(gsi: UInt32, address: UInt64, data: UInt32)
}

extension VirtualMachine {
    /// Replaces the GSI routing table (KVM_SET_GSI_ROUTING).
    public func setGSIRouting(_ routes: [GSIRoute]) throws {
        let bytes = MemoryLayout<kvm_irq_routing>.size + routes.count * MemoryLayout<kvm_irq_routing_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_irq_routing.self).pointee.nr = UInt32(routes.count)
        let e = (raw + MemoryLayout<kvm_irq_routing>.size).assumingMemoryBound(to: kvm_irq_routing_entry.self)
        for (i, r) in routes.enumerated() {
            switch r {
            case .irqchip(let gsi, let chip, let pin):
                e[i].gsi = gsi
                e[i].type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
                e[i].u.irqchip.irqchip = chip
                e[i].u.irqchip.pin = pin
            case .msi(let gsi, let address, let data):
                e[i].gsi = gsi
                e[i].type = UInt32(KVM_IRQ_ROUTING_MSI)
                e[i].u.msi.address_lo = UInt32(truncatingIfNeeded: address)
                e[i].u.msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
                e[i].u.msi.data = data
            }
        }
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_GSI_ROUTING, raw), "KVM_SET_GSI_ROUTING")
    }
}
