/// Little-endian byte assembly for ACPI tables (all multi-byte ACPI fields are little-endian).
struct ACPIByteWriter {
    private(set) var bytes: [UInt8] = []

    init() {}

    var count: Int { bytes.count }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { for i in 0..<2 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    /// A fixed-width ASCII field, space-padded (OEM IDs) — callers validate the text first.
    mutating func ascii(_ s: String, width: Int, pad: UInt8 = 0x20) {
        var field = Array(s.utf8.prefix(width))
        while field.count < width { field.append(pad) }
        bytes.append(contentsOf: field)
    }

    /// ACPI 6.x §5.2.3.2 Generic Address Structure (12 bytes).
    mutating func genericAddress(_ gas: ACPIGenericAddress) {
        u8(gas.addressSpace.rawValue)
        u8(gas.bitWidth)
        u8(gas.bitOffset)
        u8(gas.accessSize)
        u64(gas.address)
    }
}

/// ACPI 6.x §5.2.3.2 Generic Address Structure.
struct ACPIGenericAddress {
    enum AddressSpace: UInt8 { case systemMemory = 0, systemIO = 1 }
    var addressSpace: AddressSpace
    var bitWidth: UInt8
    var bitOffset: UInt8 = 0
    /// 0 = undefined (legacy): the OS derives the access size from bitWidth, as for QEMU's PM blocks.
    var accessSize: UInt8 = 0
    var address: UInt64

    static let unused = ACPIGenericAddress(addressSpace: .systemMemory, bitWidth: 0, address: 0)

    static func systemIO(_ port: UInt16, bytes: UInt8) -> ACPIGenericAddress {
        ACPIGenericAddress(addressSpace: .systemIO, bitWidth: bytes &* 8, address: UInt64(port))
    }
}

/// The byte that makes `bytes` sum to zero modulo 256 (ACPI table, RSDP and resource-template checksums).
func acpiChecksum<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
    var sum: UInt8 = 0
    for b in bytes { sum = sum &+ b }
    return 0 &- sum
}
