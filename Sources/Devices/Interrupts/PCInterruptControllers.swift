
/// The tcg machine's interrupt controllers wired as on a PC (and as the kvm accelerator's GSI
/// routing): ISA IRQs 0-15 reach both the 8259 pair and the IOAPIC, the PIT's IRQ 0 arriving on
/// IOAPIC pin 2 (the MADT's IRQ0 -> GSI 2 override); GSIs 16-23 reach the IOAPIC only. The
/// master PIC's INT drives LINT0 of the BSP (vCPU 0). Its `setIRQ`/`signalMSI` match the
/// Machine target's `InterruptController`, which the Accel glue conforms it to.
/// Big lock held for everything.
public final class PCInterruptControllers: @unchecked Sendable {
    public let apicBus: APICBus
    public let ioapic: IOAPIC
    /// The 8259 pair, absent where nothing could take its ExtINT output (kvm's split irqchip,
    /// as in QEMU's microvm); Linux then finds no legacy PIC and uses the IOAPIC alone.
    public let pic: PIC8259Pair?

    /// Create the LocalAPICs on `apicBus` first (index 0 = BSP), then this.
    public init(apicBus: APICBus, legacyPIC: Bool = true) {
        self.apicBus = apicBus
        ioapic = IOAPIC(bus: apicBus)
        pic = legacyPIC ? PIC8259Pair() : nil
        apicBus.levelTriggeredEOI = { [unowned ioapic] v in ioapic.endOfInterrupt(vector: v) }
        if let bsp = apicBus.apics.first, let pic {
            bsp.extINTSource = pic
            pic.outputChanged = { [weak bsp] level in bsp?.setLINT0(level) }
        }
    }

    /// Inserts the PIC pair and ELCR on the PIO bus and the IOAPIC on the MMIO bus.
    public func insert(pio: Bus, mmio: Bus) throws {
        if let pic {
            try pio.insert(pic.masterPorts, base: 0x20, size: 2, name: "i8259 master")
            try pio.insert(pic.slavePorts, base: 0xA0, size: 2, name: "i8259 slave")
            try pio.insert(pic.elcrPorts, base: 0x4D0, size: 2, name: "i8259 ELCR")
        }
        try mmio.insert(ioapic, base: IOAPIC.defaultBase, size: 0x1000, name: "ioapic")
    }

    /// Drives global system interrupt `gsi`.
    public func setIRQ(_ gsi: UInt32, level: Bool) {
        if gsi < 16 && gsi != 2 { pic?.setIRQ(Int(gsi), level: level) }
        if gsi == 0 {
            ioapic.setIRQ(2, level: level)
        } else if gsi != 2 && gsi < UInt32(IOAPIC.pinCount) {
            ioapic.setIRQ(Int(gsi), level: level)
        }
    }

    /// A PCI device's MSI/MSI-X write.
    public func signalMSI(address: UInt64, data: UInt32) {
        apicBus.signalMSI(address: address, data: data)
    }

    /// Machine reset: controllers and every LocalAPIC to their power-on state.
    public func reset() {
        pic?.reset()
        ioapic.reset()
        for a in apicBus.apics { a.reset() }
    }
}
