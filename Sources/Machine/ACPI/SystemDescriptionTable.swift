/// Identity written into every table header and the RSDP.
enum ACPIIdentity {
    static let oemID = "KEEL  "          // 6 bytes
    static let oemTableID = "KEELPC  "   // 8 bytes
    static let oemRevision: UInt32 = 1
    static let creatorID = "KEEL"        // 4 bytes
    static let creatorRevision: UInt32 = 1
}

/// ACPI 6.x §5.2.6 System Description Table Header: every table except the RSDP and FACS.
enum SystemDescriptionTable {
    static let headerLength = 36
    static let checksumOffset = 9

    /// Header + body with Length and Checksum filled in.
    static func make(signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var w = ACPIByteWriter()
        w.ascii(signature, width: 4)
        w.u32(UInt32(truncatingIfNeeded: headerLength + body.count))
        w.u8(revision)
        w.u8(0) // checksum, set below
        w.ascii(ACPIIdentity.oemID, width: 6)
        w.ascii(ACPIIdentity.oemTableID, width: 8)
        w.u32(ACPIIdentity.oemRevision)
        w.ascii(ACPIIdentity.creatorID, width: 4)
        w.u32(ACPIIdentity.creatorRevision)
        w.append(body)
        var table = w.bytes
        table[checksumOffset] = acpiChecksum(table)
        return table
    }
}
