import CKeel
import Devices
import Glibc
import KVM
import Loop
import Machine
import Memory

/// The kvm accelerator: a KVM VM with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT,
/// guest RAM as memory slots, and one pthread per vCPU running KVM_RUN. Exits for port and MMIO
/// accesses are emulated on the vCPU thread with the big lock held only around the device access.
public final class KVMAccelerator: Accelerator, InterruptController, @unchecked Sendable {
    /// The signal that kicks a vCPU thread out of KVM_RUN.
    static let kickSignal = SIGUSR1
    /// Three pages for KVM's real-mode TSS and one for the EPT identity map, in the 32-bit hole.
    static let tssAddress: UInt64 = 0xFEFF_C000
    static let identityMapAddress: UInt64 = 0xFEFF_F000

    let system: KVMSystem
    let vm: VirtualMachine
    unowned let board: PCBoard
    var vcpus: [KVMVCPUThread] = []
    /// With a split irqchip, where EOIs of level-triggered vectors go (the userspace IOAPIC).
    var ioapicEndOfInterrupt: ((UInt8) -> Void)?
    /// The GSI routing table: the irqchip's (or mirrored IOAPIC's) routes and virtio's MSI routes.
    let routing: KVMGSIRouting
    /// Pause protocol (QMP stop/cont), all under the big lock.
    let pauseGate: VCPUPauseGate

    public init(board: PCBoard) throws {
        system = try KVMSystem()
        vm = try system.createVM()
        self.board = board
        routing = KVMGSIRouting(vm: vm)
        pauseGate = VCPUPauseGate(lock: board.lock)
        try vm.setTSSAddress(Self.tssAddress)
        try vm.setIdentityMapAddress(Self.identityMapAddress)
        if let chips = board.userspaceInterrupts {
            try vm.enableSplitIRQChip(ioapicPins: UInt64(IOAPIC.pinCount))
            connect(chips.controllers)
        } else {
            try vm.createIRQChip()
            try setPCInterruptRouting()
            try vm.createPIT2()
        }
        for r in board.memory.regions {
            try vm.setUserMemoryRegion(guestAddress: r.guestAddress, size: r.size, host: r.host, owner: board.memory)
        }
        _ = ckeel_install_kick_handler(Self.kickSignal)
    }

    /// Routes GSIs as a PC chipset (and QEMU) does: ISA IRQs 0-15 to the PIC pair and to the
    /// IOAPIC, except that the PIT's IRQ 0 reaches IOAPIC pin 2 — which is why the MADT carries
    /// the IRQ0→GSI2 override — and GSIs 16-23 to the IOAPIC only.
    func setPCInterruptRouting() throws {
        var entries: [GSIRoute] = []
        for irq: UInt32 in 0..<16 where irq != 2 {
            entries.append(.irqchip(gsi: irq, chip: irq < 8 ? UInt32(KVM_IRQCHIP_PIC_MASTER) : UInt32(KVM_IRQCHIP_PIC_SLAVE), pin: irq % 8))
        }
        for gsi: UInt32 in 0..<24 where gsi != 2 {
            entries.append(.irqchip(gsi: gsi, chip: UInt32(KVM_IRQCHIP_IOAPIC), pin: gsi == 0 ? 2 : gsi))
        }
        try routing.setBase(entries)
    }

    /// Split irqchip: the board's IOAPIC sends its messages to the kernel's LAPICs as MSIs, the
    /// kernel reports EOIs of level-triggered vectors back to it, and KVM learns which vectors
    /// those are from MSI routes that mirror the redirection table (as QEMU keeps them).
    func connect(_ chips: PCInterruptControllers) {
        chips.apicBus.forward = { [unowned self] m in self.signalMSI(address: m.msiAddress, data: m.msiData) }
        ioapicEndOfInterrupt = { [unowned chips] v in chips.ioapic.endOfInterrupt(vector: v) }
        chips.ioapic.redirectionChanged = { [unowned self, unowned chips] in self.mirrorIOAPICRoutes(chips.ioapic) }
        mirrorIOAPICRoutes(chips.ioapic)
    }

    /// Commits the IOAPIC's unmasked pins as MSI routes, only when they changed: each commit
    /// waits for an RCU grace period in the kernel.
    func mirrorIOAPICRoutes(_ ioapic: IOAPIC) {
        let routes: [GSIRoute] = (0..<IOAPIC.pinCount).compactMap { pin in
            ioapic.message(pin: pin).map { .msi(gsi: UInt32(pin), address: $0.msiAddress, data: $0.msiData) }
        }
        do {
            try routing.setBase(routes)
        } catch {
            board.requests.raise(.failure("\(error)"))
        }
    }

    public func prepare(boot: BootCPUState) throws {
        let supported = try system.supportedCPUID()
        let knownMSRs = Set(try system.msrIndexList())
        let count = board.configuration.cpuCount
        for i in 0..<count {
            let vcpu = try vm.createVCPU(id: UInt32(i))
            let neutral = supported.map { CPUIDLeaf(function: $0.function, index: $0.index, eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx) }
            let model = KeelCPUModel.leaves(fromSupported: neutral, cpuIndex: i, cpuCount: count)
            try vcpu.setCPUID(zip(supported, model).map { kvm, m in
                CPUIDEntry(function: m.function, index: m.index, flags: kvm.flags, eax: m.eax, ebx: m.ebx, ecx: m.ecx, edx: m.edx)
            })
            try vcpu.setMSRs(KeelCPUModel.powerOnMSRs.filter { knownMSRs.contains($0.index) })
            try KVMRegisters.setPowerOnFPU(vcpu)
            try KVMRegisters.setLocalInterruptPins(vcpu)
            if i == 0 {
                try KVMRegisters.apply(boot, to: vcpu)
            }
            // Application processors wait in KVM for INIT/SIPI from the boot processor.
            vcpus.append(KVMVCPUThread(vcpu: vcpu, board: board, accelerator: self))
        }
    }

    /// Call with the big lock held.
    public func start() {
        board.interrupts.controller = board.userspaceInterrupts?.controllers ?? self
        board.setIOEventAcceleratorLocked(self)
        for v in vcpus { v.start() }
    }

    public func stop() {
        board.lock.withLock {
            pauseGate.resumeLocked()
        }
        for v in vcpus { v.requestStop() }
        for v in vcpus { v.join() }
        // This VM goes away with the accelerator: the devices fall back to trapped notifies and
        // KVM_SIGNAL_MSI until the next one hands them its eventfd paths.
        board.lock.withLock { board.setIOEventAcceleratorLocked(nil) }
        board.interrupts.controller = nil
    }

    public func pauseLocked() {
        pauseGate.pauseLocked(vcpus.map(\.control)) { for v in vcpus { v.kick() } }
    }

    public func resumeLocked() { pauseGate.resumeLocked() }

    public var vcpuThreadIDs: [Int32] { vcpus.map { $0.control.threadID } }

    public func setIRQ(_ gsi: UInt32, level: Bool) {
        do { try vm.setIRQLine(gsi, level: level) } catch { board.requests.raise(.failure("\(error)")) }
    }

    public func signalMSI(address: UInt64, data: UInt32) {
        do { try vm.signalMSI(address: address, data: data) } catch { board.requests.raise(.failure("\(error)")) }
    }
}
