/// What the ACPI tables describe: the CPUs, interrupt controllers, the fixed-hardware PM block and
/// the legacy ISA devices of Keel's PC board. The devices must actually sit where this says.
public struct ACPIConfiguration: Sendable, Equatable {
    public struct SerialPort: Sendable, Equatable {
        /// ACPI device name (a NameSeg such as "COM1").
        public var name: String
        public var base: UInt16
        public var irq: UInt8
        public init(name: String, base: UInt16, irq: UInt8) { self.name = name; self.base = base; self.irq = irq }
    }

    /// The MADT Processor Local APIC entry holds 8-bit IDs and 0xFF means "all processors".
    public static let maxCPUCount = 255

    /// 1...255; APIC IDs 0..<cpuCount; ACPI processor UIDs equal the APIC IDs.
    public var cpuCount: Int
    public var ioapicID: UInt8
    public var ioapicAddress: UInt32 = 0xFEC0_0000
    public var localAPICAddress: UInt32 = 0xFEE0_0000
    /// PM1a_EVT_BLK: PM1_STS (2 bytes) then PM1_EN (2 bytes).
    public var pm1aEventBlock: UInt16 = 0x600
    /// PM1a_CNT_BLK: 2 bytes (SCI_EN, SLP_TYP, SLP_EN).
    public var pm1aControlBlock: UInt16 = 0x604
    /// PM_TMR_BLK: 4 bytes, 3.579545 MHz, 32 bits wide (FADT TMR_VAL_EXT).
    public var pmTimerBlock: UInt16 = 0x608
    /// ISA IRQ of the SCI; the MADT maps it to the same GSI, level-triggered, active-high.
    public var sciInterrupt: UInt16 = 9
    public var resetRegisterPort: UInt16 = 0xCF9
    public var resetValue: UInt8 = 0x06
    /// SLP_TYP written to PM1a_CNT for S5 (3 bits).
    public var s5SleepType: UInt8 = 5
    public var serialPorts: [SerialPort] = [SerialPort(name: "COM1", base: 0x3F8, irq: 4)]
    public var hasRTC = true
    /// CMOS index of the RTC century byte for the FADT CENTURY field; 0 = the RTC has none.
    public var rtcCenturyIndex: UInt8 = 0
    public var hasI8042 = true
    /// Dual 8259s present (the MADT's PCAT_COMPAT); false under kvm's split irqchip.
    public var hasLegacyPIC = true
    /// Describe the i8042's AUX (PS/2 mouse) port; without it Linux leaves the AUX port alone.
    public var hasPS2Mouse = false
    public var hasVGA = false
    /// PCI bus 0 (the root bridge in the DSDT and the MCFG table), if the board has one.
    public var pciRoot: PCIRootConfiguration?

    /// `ioapicID` defaults to `cpuCount` (set here, not updated if `cpuCount` changes later).
    public init(cpuCount: Int) {
        self.cpuCount = cpuCount
        // After the local APIC IDs, so no I/O APIC and local APIC share an ID.
        self.ioapicID = UInt8(clamping: cpuCount)
    }

    /// Checks everything `ACPITables.build` relies on; errors name the bad value.
    public func validate() throws {
        guard (1...Self.maxCPUCount).contains(cpuCount) else { throw ACPIError.cpuCountOutOfRange(cpuCount) }
        guard sciInterrupt < 16, sciInterrupt != 0, sciInterrupt != 2 else {
            throw ACPIError.invalidConfiguration("SCI interrupt \(sciInterrupt) is not a free ISA IRQ (1, 3-15)")
        }
        guard s5SleepType <= 7 else {
            throw ACPIError.invalidConfiguration("S5 sleep type \(s5SleepType) does not fit SLP_TYP (0-7)")
        }
        try checkPortRange("PM1a event block", pm1aEventBlock, length: 4)
        try checkPortRange("PM1a control block", pm1aControlBlock, length: 2)
        try checkPortRange("PM timer block", pmTimerBlock, length: 4)
        var names: Set<String> = []
        for port in serialPorts {
            guard AMLEncoding.isValidNameSegment(port.name), port.name.utf8.count == 4 else { throw ACPIError.invalidName(port.name) }
            guard names.insert(port.name).inserted else {
                throw ACPIError.invalidConfiguration("serial port name \(port.name) is used twice")
            }
            guard !DSDT.reservedDeviceNames.contains(port.name), !isCPUName(port.name) else {
                throw ACPIError.invalidConfiguration("serial port name \(port.name) clashes with another device's name")
            }
            guard port.irq < 16 else {
                throw ACPIError.invalidConfiguration("serial port \(port.name) IRQ \(port.irq) is not an ISA IRQ (0-15)")
            }
            try checkPortRange("serial port \(port.name)", port.base, length: 8)
        }
        if let p = pciRoot {
            guard (1...256).contains(p.busCount), p.ecamBase % (UInt64(p.busCount) << 20) == 0 || p.ecamBase % (1 << 28) == 0 else {
                throw ACPIError.invalidConfiguration("PCI ECAM at 0x\(String(p.ecamBase, radix: 16)) for \(p.busCount) buses is not aligned")
            }
            guard p.memory32Window.upperBound <= 0xFFFF_FFFF, p.ioWindow.upperBound <= 0xFFFF else {
                throw ACPIError.invalidConfiguration("PCI windows do not fit their address spaces")
            }
        }
        guard serialPorts.count <= 16 else { throw ACPIError.invalidConfiguration("\(serialPorts.count) serial ports (max 16)") }
    }

    private func checkPortRange(_ what: String, _ base: UInt16, length: UInt16) throws {
        guard base != 0, base.addingReportingOverflow(length - 1).overflow == false else {
            throw ACPIError.invalidConfiguration("\(what) at port 0x\(String(base, radix: 16)) does not fit the I/O space")
        }
    }

    /// Processor devices are named C000...C0FE; a serial port may not take one of those names.
    private func isCPUName(_ name: String) -> Bool {
        (0..<cpuCount).contains { DSDT.processorName($0) == name }
    }
}

public enum ACPIError: Error, Equatable, CustomStringConvertible {
    case cpuCountOutOfRange(Int)
    case invalidConfiguration(String)
    case invalidName(String)
    case invalidAML(String)
    case misalignedBase(UInt64)
    case tooLarge(needed: Int, maxSize: Int)

    public var description: String {
        switch self {
        case .cpuCountOutOfRange(let n):
            return "ACPI: CPU count \(n) is out of range (1...\(ACPIConfiguration.maxCPUCount))"
        case .invalidConfiguration(let why): return "ACPI: \(why)"
        case .invalidName(let n): return "ACPI: \"\(n)\" is not a valid ACPI name (A-Z, 0-9, _; not starting with a digit)"
        case .invalidAML(let why): return "ACPI: cannot encode AML: \(why)"
        case .misalignedBase(let a): return "ACPI: table base 0x\(String(a, radix: 16)) is not 16-byte aligned (the RSDP must be)"
        case .tooLarge(let needed, let max): return "ACPI: tables need \(needed) bytes but only \(max) are reserved"
        }
    }
}
