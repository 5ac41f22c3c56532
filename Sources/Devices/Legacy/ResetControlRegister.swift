/// The PIIX/ICH reset control register at I/O port 0xCF9 (Intel 82371AB datasheet, RC
/// register), also the FADT's ACPI reset register (value 0x06).
///
/// Bit 1 (SYS_RST) chooses a hard rather than a soft reset, bit 2 (RST_CPU) starts it, bit 3
/// (FULL_RST) asks for a power cycle. As in QEMU, any write with RST_CPU set resets the machine:
/// Keel has one kind of reset, so a soft reset (RST_CPU without SYS_RST) is a full one too.
///
/// 0xCF9 lies inside the 4-byte PCI CONFIG_ADDRESS register at 0xCF8: the PIO bus must send
/// 1-byte accesses at 0xCF9 here and dword accesses at 0xCF8 to the PCI host bridge.
public final class ResetControlRegister: BusDevice {
    public static let port: UInt64 = 0xCF9
    public static let sysReset: UInt8 = 0x02
    public static let cpuReset: UInt8 = 0x04
    public static let fullReset: UInt8 = 0x08

    private let onReset: () -> Void
    public private(set) var value: UInt8 = 0

    public init(onReset: @escaping () -> Void) {
        self.onReset = onReset
    }

    /// Machine reset clears the register.
    public func reset() { value = 0 }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
        if offset == 0, data.count > 0 { data[0] = value }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count > 0 else { return }
        let v = data[0]
        // Bits 1..3 read back until the machine reset clears them (`reset()`).
        value = v & (Self.sysReset | Self.cpuReset | Self.fullReset)
        if v & Self.cpuReset != 0 { onReset() }
    }
}
