import Memory

/// Xen's x86 PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h): an ELF kernel with a
/// XEN_ELFNOTE_PHYS32_ENTRY note, entered in 32-bit protected mode with EBX = hvm_start_info.
enum PVH {
    static let startInfoMagic: UInt32 = 0x336E_C578
    static let startInfoVersion: UInt32 = 1
    static let startInfoSize = 0x38
    static let modlistEntrySize = 32
    static let memmapEntrySize = 24
    static let phys32EntryNote: UInt32 = 18   // XEN_ELFNOTE_PHYS32_ENTRY

    struct Segment {
        let index: Int
        let fileOffset: UInt64
        let fileSize: UInt64
        let physicalAddress: UInt64
        let memorySize: UInt64
        var range: Range<UInt64> { physicalAddress..<(physicalAddress + memorySize) }
    }

    /// What Keel needs from the ELF: the PVH entry and the loadable segments.
    struct Image {
        let entry: UInt64
        let segments: [Segment]
    }

    static func isELF(_ image: [UInt8]) -> Bool {
        image.count >= 4 && image[0] == 0x7F && image[1] == 0x45 && image[2] == 0x4C && image[3] == 0x46
    }

    /// Parses the ELF header, program headers and notes. Every field is untrusted.
    static func parse(_ image: [UInt8], subject: String) throws -> Image {
        guard let elfClass = image.le(UInt8.self, at: 4), let data = image.le(UInt8.self, at: 5) else {
            throw BootError(.truncated, subject, "truncated ELF header (\(image.count) bytes)")
        }
        guard elfClass == 1 || elfClass == 2 else { throw BootError(.malformed, subject, "unknown ELF class \(elfClass)") }
        guard data == 1 else { throw BootError(.unsupported, subject, "big-endian ELF; x86 kernels are little-endian") }
        let is64 = elfClass == 2
        let machine = image.le(UInt16.self, at: 0x12)
        let phoff: UInt64?, phentsize: UInt16?, phnum: UInt16?
        if is64 {
            phoff = image.le(UInt64.self, at: 0x20); phentsize = image.le(UInt16.self, at: 0x36); phnum = image.le(UInt16.self, at: 0x38)
        } else {
            phoff = image.le(UInt32.self, at: 0x1C).map(UInt64.init); phentsize = image.le(UInt16.self, at: 0x2A)
            phnum = image.le(UInt16.self, at: 0x2C)
        }
        guard let machine, let phoff, let phentsize, let phnum else {
            throw BootError(.truncated, subject, "truncated ELF header (\(image.count) bytes)")
        }
        guard machine == 62 || machine == 3 else {   // EM_X86_64, EM_386
            throw BootError(.unsupported, subject, "ELF for machine \(machine), not x86")
        }
        let minimumEntry: UInt16 = is64 ? 56 : 32
        guard phnum > 0 else { throw BootError(.malformed, subject, "ELF has no program headers") }
        guard phnum != 0xFFFF else { throw BootError(.unsupported, subject, "ELF uses extended program header numbering") }
        guard phentsize >= minimumEntry else {
            throw BootError(.malformed, subject, "ELF program header size \(phentsize) is below \(minimumEntry)")
        }
        let tableSize = UInt64(phentsize) * UInt64(phnum)
        guard image.bytes(at: phoff, length: tableSize) != nil else {
            throw BootError(.truncated, subject, "truncated: program headers at \(hex(phoff)) (+\(tableSize)) run past the end (\(image.count) bytes)")
        }

        var segments: [Segment] = []
        var entry: UInt64?
        for i in 0..<Int(phnum) {
            let h = phoff + UInt64(i) * UInt64(phentsize)   // inside the checked table
            let type: UInt32, offset: UInt64, paddr: UInt64, filesz: UInt64, memsz: UInt64, align: UInt64
            if is64 {
                type = image.le(UInt32.self, at: h) ?? 0
                offset = image.le(UInt64.self, at: h + 8) ?? 0
                paddr = image.le(UInt64.self, at: h + 24) ?? 0
                filesz = image.le(UInt64.self, at: h + 32) ?? 0
                memsz = image.le(UInt64.self, at: h + 40) ?? 0
                align = image.le(UInt64.self, at: h + 48) ?? 0
            } else {
                type = image.le(UInt32.self, at: h) ?? 0
                offset = UInt64(image.le(UInt32.self, at: h + 4) ?? 0)
                paddr = UInt64(image.le(UInt32.self, at: h + 12) ?? 0)
                filesz = UInt64(image.le(UInt32.self, at: h + 16) ?? 0)
                memsz = UInt64(image.le(UInt32.self, at: h + 20) ?? 0)
                align = UInt64(image.le(UInt32.self, at: h + 28) ?? 0)
            }
            switch type {
            case 1:   // PT_LOAD
                guard memsz > 0 else { continue }
                guard filesz <= memsz else {
                    throw BootError(.malformed, subject, "segment \(i): file size \(filesz) exceeds memory size \(memsz)")
                }
                guard image.bytes(at: offset, length: filesz) != nil else {
                    throw BootError(.truncated, subject, "truncated: segment \(i) data at \(hex(offset)) (+\(filesz)) runs past the end (\(image.count) bytes)")
                }
                let (_, o) = paddr.addingReportingOverflow(memsz)
                guard !o else { throw BootError(.placement, subject, "segment \(i) at \(hex(paddr)) (+\(memsz)) wraps around") }
                segments.append(Segment(index: i, fileOffset: offset, fileSize: filesz, physicalAddress: paddr, memorySize: memsz))
            case 4:   // PT_NOTE
                guard let notes = image.bytes(at: offset, length: filesz) else {
                    throw BootError(.truncated, subject, "truncated: note segment \(i) at \(hex(offset)) (+\(filesz)) runs past the end (\(image.count) bytes)")
                }
                if entry == nil { entry = try findEntry(Array(notes), align: align == 8 ? 8 : 4, subject: subject) }
            default:
                continue
            }
        }
        guard let entry else {
            throw BootError(.notAKernel, subject,
                            "ELF has no PVH entry note (Xen note XEN_ELFNOTE_PHYS32_ENTRY); not a PVH kernel")
        }
        return Image(entry: entry, segments: segments)
    }

    /// Walks one note segment for ("Xen", 18) and returns its 32-bit physical entry address.
    static func findEntry(_ notes: [UInt8], align: UInt64, subject: String) throws -> UInt64? {
        func padded(_ v: UInt64) -> UInt64? {
            let (s, o) = v.addingReportingOverflow(align - 1)
            return o ? nil : s & ~(align - 1)
        }
        var at: UInt64 = 0
        while at < UInt64(notes.count) {
            guard let namesz = notes.le(UInt32.self, at: at), let descsz = notes.le(UInt32.self, at: at + 4),
                  let type = notes.le(UInt32.self, at: at + 8),
                  let nameLen = padded(UInt64(namesz)), let descLen = padded(UInt64(descsz)) else { return nil }
            let nameAt = at + 12, descAt = at + 12 + nameLen
            guard let name = notes.bytes(at: nameAt, length: UInt64(namesz)),
                  let desc = notes.bytes(at: descAt, length: UInt64(descsz)) else { return nil }
            let owner = Array(name.prefix { $0 != 0 })
            if owner == Array("Xen".utf8) && type == phys32EntryNote {
                let d = Array(desc)
                let value: UInt64
                switch d.count {
                case 4: value = UInt64(d.le(UInt32.self, at: 0) ?? 0)
                case 8: value = d.le(UInt64.self, at: 0) ?? 0
                default:
                    throw BootError(.malformed, subject, "PVH entry note has a \(d.count)-byte value (expected 4 or 8)")
                }
                guard value <= UInt64(UInt32.max) else {
                    throw BootError(.malformed, subject, "PVH entry \(hex(value)) is not a 32-bit address")
                }
                return value
            }
            at = descAt + descLen   // both terms bounded by the note size checks above
        }
        return nil
    }

    static func load(_ image: [UInt8], subject: String, initrd: [UInt8]?, initrdSubject: String,
                     commandLine: String, memory: GuestMemory, map: PCMemoryMap, rsdp: UInt64?) throws -> BootCPUState {
        let elf = try parse(image, subject: subject)
        guard !elf.segments.isEmpty else { throw BootError(.malformed, subject, "ELF has no loadable segments") }

        // Segments go where their physical addresses say: inside RAM, below 4 GiB (paging is off
        // at entry), clear of Keel's boot area and the EBDA/BIOS area.
        let ramEnd = BootTables.lowRAMEnd(map)
        for s in elf.segments {
            let what = "segment \(s.index) [\(hex(s.physicalAddress)), \(hex(s.range.upperBound)))"
            guard s.range.upperBound <= ramEnd, memory.hostPointer(s.physicalAddress, length: s.memorySize) != nil else {
                throw BootError(.placement, subject, "\(what) is outside guest RAM (RAM below 4 GiB ends at \(hex(ramEnd)))")
            }
            if let r = BootLayout.reserved.first(where: { $0.overlaps(s.range) }) {
                throw BootError(.placement, subject, "\(what) overlaps \(r.lowerBound == BootLayout.bootAreaStart ? "Keel's boot area" : "the EBDA/BIOS area") [\(hex(r.lowerBound)), \(hex(r.upperBound)))")
            }
        }
        guard elf.segments.contains(where: { $0.range.contains(elf.entry) }) else {
            throw BootError(.placement, subject, "PVH entry \(hex(elf.entry)) is not inside any loaded segment")
        }

        let w = GuestMemoryWriter(memory: memory, subject: subject)
        try BootTables.writeCommandLine(commandLine, limit: BootLayout.commandLineCapacity - 1, w)

        var initrdPlacement: (address: UInt64, size: UInt64)?
        if let initrd {
            guard !initrd.isEmpty else { throw BootError(.empty, initrdSubject, "file is empty") }
            let size = UInt64(initrd.count)
            let avoid = BootLayout.reserved + elf.segments.map(\.range)
            guard let at = BootTables.placeHighest(size: size, floor: BootLayout.initrdFloor, limit: ramEnd, avoiding: avoid) else {
                throw BootError(.initrdTooLarge, initrdSubject,
                                "initrd of \(size) bytes does not fit in guest RAM below \(hex(ramEnd)) beside the kernel's segments")
            }
            initrdPlacement = (at, size)
        }

        for s in elf.segments {
            let what = "segment \(s.index)"
            if let bytes = image.bytes(at: s.fileOffset, length: s.fileSize) {
                try w.write(bytes, at: s.physicalAddress, what: what)
            }
            try w.zero(at: s.physicalAddress + s.fileSize, length: s.memorySize - s.fileSize, what: what)
        }
        if let initrd, let p = initrdPlacement { try w.write(initrd, at: p.address, what: "initrd") }

        // hvm_start_info, then the module list and the memory map right after it.
        let e820 = map.e820
        guard e820.count <= BootLayout.pvhMemmapMaxEntries else {
            throw BootError(.malformed, subject, "memory map has \(e820.count) entries, Keel's PVH area holds \(BootLayout.pvhMemmapMaxEntries)")
        }
        var info = [UInt8](repeating: 0, count: startInfoSize)
        info.putLE(startInfoMagic, at: 0x00)
        info.putLE(startInfoVersion, at: 0x04)
        info.putLE(UInt32(0), at: 0x08)   // flags
        info.putLE(UInt32(initrdPlacement == nil ? 0 : 1), at: 0x0C)
        info.putLE(initrdPlacement == nil ? 0 : BootLayout.pvhModlist, at: 0x10)
        info.putLE(BootLayout.commandLine, at: 0x18)
        info.putLE(rsdp ?? 0, at: 0x20)
        info.putLE(BootLayout.pvhMemmap, at: 0x28)
        info.putLE(UInt32(e820.count), at: 0x30)
        try w.write(info, at: BootLayout.startInfo, what: "hvm_start_info")

        if let p = initrdPlacement {
            var mod = [UInt8](repeating: 0, count: modlistEntrySize)
            mod.putLE(p.address, at: 0)
            mod.putLE(p.size, at: 8)
            try w.write(mod, at: BootLayout.pvhModlist, what: "hvm_modlist_entry")
        }
        var memmap = [UInt8](repeating: 0, count: e820.count * memmapEntrySize)
        for (i, e) in e820.enumerated() {
            memmap.putLE(e.address, at: i * memmapEntrySize)
            memmap.putLE(e.size, at: i * memmapEntrySize + 8)
            memmap.putLE(e.type.rawValue, at: i * memmapEntrySize + 16)
        }
        try w.write(memmap, at: BootLayout.pvhMemmap, what: "PVH memory map")

        // 32-bit protected mode, paging off, flat segments, a usable busy TSS.
        let code = BootTables.code32(), data = BootTables.data(), tss = BootTables.tss()
        try w.write(BootTables.gdt(code: code, data: data, tss: tss), at: BootLayout.gdt, what: "GDT")
        var cpu = BootCPUState(rip: elf.entry, cr0: CR0.pe | CR0.et, cs: code, data: data, tr: tss)
        cpu.rbx = BootLayout.startInfo
        cpu.rsp = BootLayout.bootStackTop
        cpu.gdtBase = BootLayout.gdt
        cpu.gdtLimit = BootLayout.gdtLimit
        return cpu
    }
}
