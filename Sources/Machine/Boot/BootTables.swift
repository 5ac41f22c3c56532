import Memory

/// The CPU-side structures both entry paths need: flat segments, a GDT holding exactly the
/// descriptors the returned `BootCPUState` claims are loaded, and the 4 GiB identity map.
enum BootTables {
    /// Flat 4 GiB segments. `SegmentState.limit` is the byte limit (as KVM's kvm_segment), so a
    /// page-granular 0xFFFFF descriptor limit is 0xFFFFFFFF here.
    static func code64() -> SegmentState {
        SegmentState(selector: BootLayout.codeSelector, base: 0, limit: 0xFFFF_FFFF, type: 0xB,
                     long: true, defaultBig: false, granularity: true)
    }

    static func code32() -> SegmentState {
        SegmentState(selector: BootLayout.codeSelector, base: 0, limit: 0xFFFF_FFFF, type: 0xB,
                     long: false, defaultBig: true, granularity: true)
    }

    static func data() -> SegmentState {
        SegmentState(selector: BootLayout.dataSelector, base: 0, limit: 0xFFFF_FFFF, type: 0x3,
                     defaultBig: true, granularity: true)
    }

    /// A busy TSS (type 0xB: 32-bit busy TSS in protected mode, 64-bit busy TSS in IA-32e mode),
    /// base 0 and limit 0x67 as the PVH ABI asks; VM entry needs a usable TR.
    static func tss() -> SegmentState {
        SegmentState(selector: BootLayout.tssSelector, base: 0, limit: 0x67, type: 0xB, codeOrData: false)
    }

    /// Encodes the low 8 bytes of a segment descriptor (SDM Vol. 3A 3.4.5).
    static func descriptor(_ s: SegmentState) -> UInt64 {
        let rawLimit = UInt64(s.granularity ? s.limit >> 12 : s.limit) & 0xF_FFFF
        let access = UInt64(s.type & 0xF) | (s.codeOrData ? 0x10 : 0) | (UInt64(s.dpl & 3) << 5) | (s.present ? 0x80 : 0)
        let flags = (s.long ? 0x2 : 0) | (s.defaultBig ? 0x4 : 0) | (s.granularity ? 0x8 : 0) as UInt64
        let base = s.base & 0xFFFF_FFFF
        return (rawLimit & 0xFFFF) | ((base & 0xFF_FFFF) << 16) | (access << 40)
            | ((rawLimit >> 16) << 48) | (flags << 52) | ((base >> 24) << 56)
    }

    /// GDT bytes: null, null, code, data, TSS (two slots: system descriptors are 16 bytes in IA-32e mode).
    static func gdt(code: SegmentState, data: SegmentState, tss: SegmentState) -> [UInt8] {
        var g = [UInt8](repeating: 0, count: BootLayout.gdtEntries * 8)
        g.putLE(descriptor(code), at: Int(code.selector))
        g.putLE(descriptor(data), at: Int(data.selector))
        g.putLE(descriptor(tss), at: Int(tss.selector))
        g.putLE(UInt64(tss.base >> 32), at: Int(tss.selector) + 8)
        return g
    }

    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    static let pageSize2M: UInt64 = 1 << 7

    /// PML4 -> one PDPT -> four page directories of 2 MiB pages: identity map of [0, 4 GiB).
    static func writeIdentityMap(_ w: GuestMemoryWriter) throws {
        var pml4 = [UInt8](repeating: 0, count: 4096)
        pml4.putLE(BootLayout.pdpt | present | writable, at: 0)
        try w.write(pml4, at: BootLayout.pml4, what: "PML4")
        var pdpt = [UInt8](repeating: 0, count: 4096)
        for i in 0..<4 {
            pdpt.putLE((BootLayout.pageDirectories + UInt64(i) * 4096) | present | writable, at: i * 8)
        }
        try w.write(pdpt, at: BootLayout.pdpt, what: "PDPT")
        for d in 0..<4 {
            var pd = [UInt8](repeating: 0, count: 4096)
            for e in 0..<512 {
                let address = UInt64(d * 512 + e) << 21
                pd.putLE(address | present | writable | pageSize2M, at: e * 8)
            }
            try w.write(pd, at: BootLayout.pageDirectories + UInt64(d) * 4096, what: "page directory")
        }
    }

    /// Writes the command line NUL-terminated at BootLayout.commandLine; `limit` is the longest
    /// accepted length without the NUL.
    static func writeCommandLine(_ commandLine: String, limit: UInt64, _ w: GuestMemoryWriter) throws {
        let bytes = Array(commandLine.utf8)
        guard !bytes.contains(0) else {
            throw BootError(.commandLineInvalid, "command line", "contains a NUL byte")
        }
        let cap = min(limit, BootLayout.commandLineCapacity - 1)
        guard UInt64(bytes.count) <= cap else {
            throw BootError(.commandLineTooLong, "command line",
                            "too long (\(bytes.count) bytes; the kernel accepts at most \(cap))")
        }
        try w.write(bytes + [0], at: BootLayout.commandLine, what: "command line")
    }

    /// The highest page-aligned address `a` with [a, a + size) inside [floor, limit) and clear of
    /// every range in `avoiding`; nil when there is none.
    static func placeHighest(size: UInt64, floor: UInt64, limit: UInt64, avoiding: [Range<UInt64>]) -> UInt64? {
        guard size > 0, size <= limit else { return nil }
        var candidate = (limit - size) & ~(BootLayout.pageSize - 1)
        while candidate >= floor {
            let want = candidate..<(candidate + size)
            guard let clash = avoiding.first(where: { $0.overlaps(want) }) else { return candidate }
            // clash.lowerBound < candidate + size, so the next candidate is strictly lower.
            guard clash.lowerBound >= size else { return nil }
            candidate = (clash.lowerBound - size) & ~(BootLayout.pageSize - 1)
        }
        return nil
    }

    /// End of the RAM entry in the e820 table that holds the first MiB-and-up, below 4 GiB.
    static func lowRAMEnd(_ map: PCMemoryMap) -> UInt64 {
        var end: UInt64 = 0
        for e in map.e820 where e.type == .ram && e.address < (4 << 30) {
            let (top, o) = e.address.addingReportingOverflow(e.size)
            if !o { end = max(end, min(top, 4 << 30)) }
        }
        return end
    }
}
