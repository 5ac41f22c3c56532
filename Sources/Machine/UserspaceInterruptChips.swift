import Devices

/// The IOAPIC (with the PC's GSI wiring) and the 8254 PIT as Keel's own devices, for kvm's split
/// irqchip where only the local APICs are in the kernel. No 8259s: their ExtINT output would have
/// nowhere to go, so Linux runs without a legacy PIC (as under QEMU's microvm). The accelerator
/// forwards the APIC bus to the kernel's LAPICs.
public final class UserspaceInterruptChips: @unchecked Sendable {
    public let controllers: PCInterruptControllers
    public let pit: PIT8254
    let clock: EventLoopGuestClock

    init(board: PCBoard) throws {
        controllers = PCInterruptControllers(apicBus: APICBus(), legacyPIC: false)
        try controllers.insert(pio: board.pioBus, mmio: board.mmioBus)
        clock = EventLoopGuestClock(loop: board.loop)
        pit = try PIT8254(clock: clock, irq: board.interrupts.line(0))
        try pit.insert(into: board.pioBus)
    }

    func reset() {
        controllers.reset()
        pit.reset()
    }
}

extension PCInterruptControllers: InterruptController {}
