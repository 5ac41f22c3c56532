/// The complete set of ACPI tables for Keel's PC board, laid out as one blob for guest memory:
/// RSDP, FACS, DSDT, FADT, MADT, XSDT and (when everything lies below 4 GiB) RSDT.
/// The blob belongs in a range the e820 map marks reserved (Keel uses 0xE0000, where the
/// legacy RSDP scan looks).
public struct ACPITables: Sendable, Equatable {
    /// Where one table sits in guest memory.
    public struct Table: Sendable, Equatable {
        public let signature: String
        public let address: UInt64
        public let length: Int
    }

    /// Where `bytes` go in guest memory.
    public let baseAddress: UInt64
    public let bytes: [UInt8]
    public let rsdpAddress: UInt64
    /// Every structure in the blob, in address order (the RSDP listed as "RSD PTR ").
    public let tables: [Table]

    public static func build(_ config: ACPIConfiguration, at baseAddress: UInt64, maxSize: Int) throws -> ACPITables {
        try config.validate()
        guard baseAddress % RSDP.alignment == 0 else { throw ACPIError.misalignedBase(baseAddress) }
        guard maxSize >= 0 else { throw ACPIError.tooLarge(needed: 0, maxSize: maxSize) }

        let facs = FACS.build()
        let dsdt = try DSDT.build(config)
        let madt = MADT.build(config)
        let mcfg = config.pciRoot.map { MCFG.build($0) }
        let tableCount = mcfg == nil ? 2 : 3 // FADT, MADT, MCFG

        var layout = Layout(cursor: baseAddress)
        let rsdpAt = try layout.place(RSDP.length, alignment: RSDP.alignment)
        let facsAt = try layout.place(FACS.length, alignment: FACS.alignment)
        let dsdtAt = try layout.place(dsdt.count, alignment: 16)
        let fadtAt = try layout.place(FADT.length, alignment: 16)
        let madtAt = try layout.place(madt.count, alignment: 16)
        let mcfgAt = try mcfg.map { try layout.place($0.count, alignment: 16) }
        let xsdtAt = try layout.place(SystemDescriptionTable.headerLength + 8 * tableCount, alignment: 16)
        // The RSDT holds 32-bit pointers: only write one if every table is addressable by it.
        var rsdtAt: UInt64?
        var trial = layout
        let rsdtCandidate = try trial.place(SystemDescriptionTable.headerLength + 4 * tableCount, alignment: 16)
        if trial.cursor <= 1 << 32 {
            rsdtAt = rsdtCandidate
            layout = trial
        }

        let needed = layout.cursor - baseAddress
        guard needed <= UInt64(maxSize) else {
            throw ACPIError.tooLarge(needed: Int(clamping: needed), maxSize: maxSize)
        }

        let fadt = FADT.build(config, facs: facsAt, dsdt: dsdtAt)
        let xsdt = XSDT.build(entries: [fadtAt, madtAt] + (mcfgAt.map { [$0] } ?? []))
        var placed: [(String, UInt64, [UInt8])] = [
            (RSDP.signature, rsdpAt, []), // filled below
            (FACS.signature, facsAt, facs),
            (DSDT.signature, dsdtAt, dsdt),
            (FADT.signature, fadtAt, fadt),
            (MADT.signature, madtAt, madt),
            (XSDT.signature, xsdtAt, xsdt),
        ]
        if let mcfg, let mcfgAt { placed.append((MCFG.signature, mcfgAt, mcfg)) }
        var rsdt32: UInt32 = 0
        if let at = rsdtAt, let fadt32 = UInt32(exactly: fadtAt), let madt32 = UInt32(exactly: madtAt),
           let at32 = UInt32(exactly: at) {
            let mcfg32 = mcfgAt.flatMap { UInt32(exactly: $0) }.map { [$0] } ?? []
            placed.append((RSDT.signature, at, RSDT.build(entries: [fadt32, madt32] + mcfg32)))
            rsdt32 = at32
        }
        placed[0].2 = RSDP.build(rsdt: rsdt32, xsdt: xsdtAt)
        placed.sort { $0.1 < $1.1 }

        var bytes = [UInt8](repeating: 0, count: Int(needed))
        var tables: [Table] = []
        for (signature, address, table) in placed {
            let offset = Int(address - baseAddress)
            bytes.replaceSubrange(offset..<offset + table.count, with: table)
            tables.append(Table(signature: signature, address: address, length: table.count))
        }
        return ACPITables(baseAddress: baseAddress, bytes: bytes, rsdpAddress: rsdpAt, tables: tables)
    }

    /// The bytes of the first table with `signature` ("RSD PTR " for the RSDP).
    public func table(_ signature: String) -> ArraySlice<UInt8>? {
        guard let t = tables.first(where: { $0.signature == signature }) else { return nil }
        let offset = Int(t.address - baseAddress)
        return bytes[offset..<offset + t.length]
    }
}

/// Bump allocation of guest addresses, overflow-checked.
private struct Layout {
    var cursor: UInt64

    mutating func place(_ length: Int, alignment: UInt64) throws -> UInt64 {
        let mask = alignment - 1
        let (bumped, o1) = cursor.addingReportingOverflow(mask)
        let start = bumped & ~mask
        let (end, o2) = start.addingReportingOverflow(UInt64(length))
        guard !o1, !o2 else { throw ACPIError.invalidConfiguration("tables do not fit below the top of the address space") }
        cursor = end
        return start
    }
}
