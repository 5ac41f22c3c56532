/// Root System Description Pointer (ACPI 6.x §5.2.5), revision 2: 36 bytes, found by the legacy
/// scan of 0xE0000-0xFFFFF on a 16-byte boundary or handed over by the boot protocol.
enum RSDP {
    static let signature = "RSD PTR "
    static let revision: UInt8 = 2
    static let length = 36
    static let alignment: UInt64 = 16

    static func build(rsdt: UInt32, xsdt: UInt64) -> [UInt8] {
        var w = ACPIByteWriter()
        w.ascii(signature, width: 8)          // 0
        w.u8(0)                               // 8 Checksum over bytes 0-19
        w.ascii(ACPIIdentity.oemID, width: 6) // 9
        w.u8(revision)                        // 15
        w.u32(rsdt)                           // 16 RsdtAddress
        w.u32(UInt32(length))                 // 20 Length
        w.u64(xsdt)                           // 24 XsdtAddress
        w.u8(0)                               // 32 Extended Checksum over all 36 bytes
        w.zeros(3)                            // 33 Reserved
        var b = w.bytes
        b[8] = acpiChecksum(b[0..<20])
        b[32] = acpiChecksum(b)
        return b
    }
}

/// Extended System Description Table (§5.2.8): 64-bit pointers to the other tables (not DSDT/FACS).
enum XSDT {
    static let signature = "XSDT"
    static func build(entries: [UInt64]) -> [UInt8] {
        var w = ACPIByteWriter()
        for e in entries { w.u64(e) }
        return SystemDescriptionTable.make(signature: signature, revision: 1, body: w.bytes)
    }
}

/// Root System Description Table (§5.2.7): the 32-bit twin of the XSDT, for ACPI 1.0 readers.
enum RSDT {
    static let signature = "RSDT"
    static func build(entries: [UInt32]) -> [UInt8] {
        var w = ACPIByteWriter()
        for e in entries { w.u32(e) }
        return SystemDescriptionTable.make(signature: signature, revision: 1, body: w.bytes)
    }
}
