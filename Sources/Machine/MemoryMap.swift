/// The x86 PC's guest-physical memory map: low RAM, the 32-bit hole below 4 GiB where PCI MMIO,
/// the IOAPIC (0xFEC00000), HPET and local APIC (0xFEE00000) live, and RAM above 4 GiB.
public struct PCMemoryMap: Sendable, Equatable {
    public static let mebibyte: UInt64 = 1 << 20
    public static let gibibyte: UInt64 = 1 << 30
    /// RAM below this stays below 4 GiB; the rest goes above (QEMU's pc machine uses 3 GiB too).
    public static let lowRAMLimit: UInt64 = 3 * gibibyte
    public static let highRAMBase: UInt64 = 4 * gibibyte
    /// The 32-bit hole: [lowRAMLimit, 4 GiB).
    public static let pciHoleBase: UInt64 = lowRAMLimit
    public static let ioapicBase: UInt64 = 0xFEC0_0000
    public static let localAPICBase: UInt64 = 0xFEE0_0000

    /// The EBDA and BIOS areas are not RAM to the guest: Linux must not allocate them.
    public static let ebdaStart: UInt64 = 0x9_FC00
    /// Keel keeps ACPI tables (and the RSDP, found by the legacy scan) in the BIOS area.
    public static let biosAreaStart: UInt64 = 0xE_0000
    public static let biosAreaEnd: UInt64 = 0x10_0000

    public let ramSize: UInt64
    /// Device ranges the e820 map marks reserved (the PCI ECAM window: Linux uses MCFG's
    /// region only if the firmware reserved it).
    public var reservedRanges: [E820Entry] = []

    public init(ramSize: UInt64) { self.ramSize = ramSize }

    public var lowRAMSize: UInt64 { min(ramSize, Self.lowRAMLimit) }
    public var highRAMSize: UInt64 { ramSize - lowRAMSize }

    /// The RAM regions to back with host memory.
    public var ramRegions: [(guestAddress: UInt64, size: UInt64)] {
        var r: [(guestAddress: UInt64, size: UInt64)] = [(0, lowRAMSize)]
        if highRAMSize > 0 { r.append((Self.highRAMBase, highRAMSize)) }
        return r
    }

    /// The e820 table the guest is given (Linux boot protocol, PVH memory map and ACPI agree on it).
    public var e820: [E820Entry] {
        var e: [E820Entry] = [
            E820Entry(address: 0, size: Self.ebdaStart, type: .ram),
            E820Entry(address: Self.ebdaStart, size: 0xA_0000 - Self.ebdaStart, type: .reserved),
            E820Entry(address: Self.biosAreaStart, size: Self.biosAreaEnd - Self.biosAreaStart, type: .reserved),
        ]
        if lowRAMSize > Self.biosAreaEnd {
            e.append(E820Entry(address: Self.biosAreaEnd, size: lowRAMSize - Self.biosAreaEnd, type: .ram))
        }
        e += reservedRanges
        if highRAMSize > 0 { e.append(E820Entry(address: Self.highRAMBase, size: highRAMSize, type: .ram)) }
        return e
    }
}

/// One e820 entry (ACPI's address range descriptor).
public struct E820Entry: Sendable, Equatable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2, acpi = 3, nvs = 4, unusable = 5 }
    public var address: UInt64
    public var size: UInt64
    public var type: Kind
    public init(address: UInt64, size: UInt64, type: Kind) {
        self.address = address; self.size = size; self.type = type
    }
}
