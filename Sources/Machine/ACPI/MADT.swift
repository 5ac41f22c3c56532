/// Multiple APIC Description Table (ACPI 6.0 §5.2.12): the only way a kernel without MP-table
/// support learns the CPUs, the I/O APIC and how ISA IRQs reach it.
enum MADT {
    static let signature = "APIC"
    static let revision: UInt8 = 4
    static let flagPCAT_COMPAT: UInt32 = 1        // dual 8259s present: Linux masks them

    // Interrupt Controller Structure types (Table 5-45).
    static let typeLocalAPIC: UInt8 = 0
    static let typeIOAPIC: UInt8 = 1
    static let typeInterruptSourceOverride: UInt8 = 2
    static let typeLocalAPICNMI: UInt8 = 4

    static let localAPICEnabled: UInt32 = 1

    // MPS INTI flags (Table 5-50): polarity in bits 0-1, trigger mode in bits 2-3.
    static let intiConforming: UInt16 = 0
    static let intiActiveHigh: UInt16 = 0b01
    static let intiLevelTriggered: UInt16 = 0b11 << 2

    static let allProcessors: UInt8 = 0xFF

    static func build(_ config: ACPIConfiguration) -> [UInt8] {
        var w = ACPIByteWriter()
        w.u32(config.localAPICAddress)
        w.u32(config.hasLegacyPIC ? flagPCAT_COMPAT : 0)
        for cpu in 0..<config.cpuCount {
            let id = UInt8(truncatingIfNeeded: cpu)      // validated: cpuCount <= 255
            w.u8(typeLocalAPIC); w.u8(8)
            w.u8(id)                                     // ACPI Processor UID (matches the DSDT _UID)
            w.u8(id)                                     // APIC ID
            w.u32(localAPICEnabled)
        }
        w.u8(typeIOAPIC); w.u8(12)
        w.u8(config.ioapicID)
        w.u8(0)
        w.u32(config.ioapicAddress)
        w.u32(0)                                         // Global System Interrupt Base
        // The PIT's IRQ0 arrives on I/O APIC pin 2 (the 8259 cascade pin 0 is not wired), as on a PC.
        interruptSourceOverride(&w, irq: 0, gsi: 2, flags: intiConforming)
        // Without an override Linux assumes the SCI is level/active-low; Keel drives it active-high.
        let sci = UInt8(truncatingIfNeeded: config.sciInterrupt)   // validated < 16
        interruptSourceOverride(&w, irq: sci, gsi: UInt32(sci), flags: intiLevelTriggered | intiActiveHigh)
        w.u8(typeLocalAPICNMI); w.u8(6)
        w.u8(allProcessors)
        w.u16(intiConforming)
        w.u8(1)                                          // LINT1
        return SystemDescriptionTable.make(signature: signature, revision: revision, body: w.bytes)
    }

    private static func interruptSourceOverride(_ w: inout ACPIByteWriter, irq: UInt8, gsi: UInt32, flags: UInt16) {
        w.u8(typeInterruptSourceOverride); w.u8(10)
        w.u8(0)                                          // Bus: ISA
        w.u8(irq)
        w.u32(gsi)
        w.u16(flags)
    }
}
