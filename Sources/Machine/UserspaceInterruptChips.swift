import Devices

/// The PC's interrupt controllers and PIT as Keel's own devices, all under the big lock.
///
/// - kvm's split irqchip (no local APICs here): the IOAPIC (with the PC's GSI wiring) and the
///   8254 PIT. No 8259s: their ExtINT output would have nowhere to go, so Linux runs without a
///   legacy PIC (as under QEMU's microvm). The accelerator forwards the APIC bus to the kernel's
///   LAPICs.
/// - tcg (`localAPICCount` > 0): the full set — one LocalAPIC per vCPU on one APIC bus (index =
///   APIC ID, 0 the BSP), the IOAPIC at 0xFEC00000, the 8259 pair (0x20, 0xA0, ELCR 0x4D0) whose
///   INT drives the BSP's LINT0, and the PIT (0x40-0x43, 0x61). Timers run on the main loop's
///   EventLoopGuestClock; each vCPU reads its TSC through its own `VCPUClock`.
public final class UserspaceInterruptChips: @unchecked Sendable {
    public let controllers: PCInterruptControllers
    public let pit: PIT8254
    /// tcg only: the vCPUs' local APICs, by vCPU index (empty under kvm).
    public let localAPICs: [LocalAPIC]
    /// tcg only: each vCPU's clock (its LocalAPIC's, and its RDTSC).
    public let vcpuClocks: [VCPUClock]
    public let timeBase: TCGTimeBase
    let clock: EventLoopGuestClock

    init(board: PCBoard, localAPICCount: Int = 0, timeBase: TCGTimeBase = TCGTimeBase()) throws {
        self.timeBase = timeBase
        clock = EventLoopGuestClock(loop: board.loop, timeBase: timeBase)
        let bus = APICBus()
        var apics: [LocalAPIC] = [], clocks: [VCPUClock] = []
        for i in 0..<max(localAPICCount, 0) {
            let c = VCPUClock(base: clock)
            apics.append(try LocalAPIC(index: i, bus: bus, clock: c, timerFrequencyHz: timeBase.apicTimerFrequencyHz))
            clocks.append(c)
        }
        localAPICs = apics
        vcpuClocks = clocks
        // The 8259s only where a LocalAPIC can take their ExtINT (tcg).
        controllers = PCInterruptControllers(apicBus: bus, legacyPIC: localAPICCount > 0)
        try controllers.insert(pio: board.pioBus, mmio: board.mmioBus)
        pit = try PIT8254(clock: clock, irq: board.interrupts.line(0))
        try pit.insert(into: board.pioBus)
    }

    /// Machine reset (big lock held): controllers, LocalAPICs, PIT and TSC offsets to power-on.
    func reset() {
        controllers.reset()
        pit.reset()
        for c in vcpuClocks { c.reset() }
    }
}

extension PCInterruptControllers: InterruptController {}
