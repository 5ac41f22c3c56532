import Memory

/// The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) for a bzImage entered through its
/// 64-bit entry point: Keel plays the boot loader and the real-mode setup code both.
enum BzImage {
    // Setup header offsets in the image and in struct boot_params (bootparam.h: hdr at 0x1F1).
    static let setupSects: UInt64 = 0x1F1
    static let sysSize: UInt64 = 0x1F4
    static let bootFlag: UInt64 = 0x1FE
    static let jump: UInt64 = 0x200
    static let headerMagic: UInt64 = 0x202
    static let version: UInt64 = 0x206
    static let typeOfLoader = 0x210
    static let loadFlags = 0x211
    static let code32Start = 0x214
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let heapEndPtr = 0x224
    static let cmdLinePtr = 0x228
    static let initrdAddrMax: UInt64 = 0x22C
    static let xLoadFlags: UInt64 = 0x236
    static let cmdlineSize: UInt64 = 0x238
    static let payloadOffset: UInt64 = 0x248
    static let payloadLength: UInt64 = 0x24C
    static let prefAddress: UInt64 = 0x258
    static let initSize: UInt64 = 0x260
    static let setupData = 0x250
    /// Protocol 2.12 defines the header through handover_offset (ends at 0x268).
    static let minimumHeaderEnd: UInt64 = 0x268
    /// boot_params has room for the header up to edd_mbr_sig_buffer.
    static let bootParamsHeaderLimit: UInt64 = 0x290

    // struct boot_params fields outside the setup header.
    static let acpiRsdpAddr = 0x070
    static let extRamdiskImage = 0x0C0
    static let extRamdiskSize = 0x0C4
    static let extCmdLinePtr = 0x0C8
    static let e820Entries = 0x1E8
    static let e820Table = 0x2D0
    static let e820MaxEntries = 128

    static let bootFlagValue: UInt16 = 0xAA55
    static let headerMagicValue: UInt32 = 0x5372_6448   // "HdrS"
    static let minimumVersion: UInt16 = 0x020C
    static let xlfKernel64: UInt16 = 1 << 0
    static let canUseHeap: UInt8 = 0x80
    static let loaderUndefined: UInt8 = 0xFF
    /// Heap end for a setup segment at 0x10000 with the command line at 0x20000 (as QEMU uses);
    /// the 64-bit entry never runs setup code, but the field must be consistent.
    static let heapEnd: UInt16 = 0xFE00

    static func looksLike(_ image: [UInt8]) -> Bool {
        image.le(UInt16.self, at: bootFlag) == bootFlagValue && image.le(UInt32.self, at: headerMagic) == headerMagicValue
    }

    static func load(_ image: [UInt8], subject: String, initrd: [UInt8]?, initrdSubject: String,
                     commandLine: String, memory: GuestMemory, map: PCMemoryMap, rsdp: UInt64?) throws -> BootCPUState {
        // Header.
        guard let jumpOffset = image.le(UInt8.self, at: jump + 1),
              let protocolVersion = image.le(UInt16.self, at: version) else {
            throw BootError(.truncated, subject, "truncated inside the setup header (\(image.count) bytes)")
        }
        let major = protocolVersion >> 8, minor = protocolVersion & 0xFF
        guard protocolVersion >= minimumVersion else {
            throw BootError(.unsupported, subject,
                            "boot protocol \(major).\(minor) is too old (the 64-bit entry needs 2.12 or later)")
        }
        let headerEnd = headerMagic + UInt64(jumpOffset)
        guard headerEnd >= minimumHeaderEnd else {
            throw BootError(.malformed, subject,
                            "setup header ends at \(hex(headerEnd)), too short for boot protocol \(major).\(minor)")
        }
        guard UInt64(image.count) >= headerEnd,
              let xloadflags = image.le(UInt16.self, at: xLoadFlags),
              let cmdlineMax = image.le(UInt32.self, at: cmdlineSize),
              let initrdMax = image.le(UInt32.self, at: initrdAddrMax),
              let payOffset = image.le(UInt32.self, at: payloadOffset),
              let payLength = image.le(UInt32.self, at: payloadLength),
              let pref = image.le(UInt64.self, at: prefAddress),
              let initSz = image.le(UInt32.self, at: initSize),
              let sects = image.le(UInt8.self, at: setupSects) else {
            throw BootError(.truncated, subject,
                            "truncated: setup header ends at \(hex(headerEnd)), file has \(image.count) bytes")
        }
        guard xloadflags & xlfKernel64 != 0 else {
            throw BootError(.unsupported, subject, "kernel has no 64-bit entry point (XLF_KERNEL_64 not set)")
        }

        // The protected-mode kernel follows the setup sectors; it must hold the compressed payload.
        let setupSize = (UInt64(sects == 0 ? 4 : sects) + 1) * 512
        guard UInt64(image.count) > setupSize else {
            throw BootError(.truncated, subject,
                            "truncated: \(image.count) bytes, but the setup code alone is \(setupSize) bytes")
        }
        let kernelSize = UInt64(image.count) - setupSize
        guard UInt64(payOffset) + UInt64(payLength) <= kernelSize else {
            throw BootError(.truncated, subject, "truncated: the compressed payload ends at \(hex(setupSize + UInt64(payOffset) + UInt64(payLength))), file has \(image.count) bytes")
        }

        // Memory the kernel occupies: the image at 0x100000 and, while it decompresses, init_size
        // bytes from where it relocates itself (at least pref_address for a relocatable kernel).
        let ramEnd = BootTables.lowRAMEnd(map)
        let load = BootLayout.kernelLoad
        let runStart = max(load, pref)
        let (runEnd, o1) = runStart.addingReportingOverflow(UInt64(initSz))
        let kernelEnd = o1 ? UInt64.max : max(load + kernelSize, runEnd)
        guard kernelEnd <= ramEnd else {
            throw BootError(.placement, subject,
                            "kernel needs guest RAM up to \(hex(kernelEnd)) (image \(kernelSize) bytes, init_size \(initSz)), guest has RAM up to \(hex(ramEnd))")
        }

        let w = GuestMemoryWriter(memory: memory, subject: subject)
        // boot_params: the kernel's own setup header, then what a boot loader fills in.
        var params = [UInt8](repeating: 0, count: BootLayout.bootParamsSize)
        let copyEnd = min(headerEnd, bootParamsHeaderLimit)
        if let hdr = image.bytes(at: setupSects, length: copyEnd - setupSects) {
            params.replaceSubrange(Int(setupSects)..<Int(copyEnd), with: hdr)
        }
        params.putLE(UInt32(0), at: ramdiskImage)
        params.putLE(UInt32(0), at: ramdiskSize)

        try BootTables.writeCommandLine(commandLine, limit: UInt64(cmdlineMax), w)

        // Initrd: as high as initrd_addr_max and low RAM allow, clear of the kernel.
        if let initrd {
            guard !initrd.isEmpty else { throw BootError(.empty, initrdSubject, "file is empty") }
            let size = UInt64(initrd.count)
            let limit = min(UInt64(initrdMax) + 1, ramEnd)
            let avoid = BootLayout.reserved + [load..<kernelEnd]
            guard let at = BootTables.placeHighest(size: size, floor: BootLayout.initrdFloor, limit: limit, avoiding: avoid) else {
                throw BootError(.initrdTooLarge, initrdSubject,
                                "initrd of \(size) bytes does not fit in guest RAM between the kernel (ends \(hex(kernelEnd))) and \(hex(limit))")
            }
            try w.write(initrd, at: at, what: "initrd")
            params.putLE(UInt32(truncatingIfNeeded: at), at: ramdiskImage)
            params.putLE(UInt32(truncatingIfNeeded: size), at: ramdiskSize)
            params.putLE(UInt32(truncatingIfNeeded: at >> 32), at: extRamdiskImage)
            params.putLE(UInt32(truncatingIfNeeded: size >> 32), at: extRamdiskSize)
        }

        guard let kernel = image.bytes(at: setupSize, length: kernelSize) else {
            throw BootError(.truncated, subject, "truncated")
        }
        try w.write(kernel, at: load, what: "kernel")

        params[typeOfLoader] = loaderUndefined
        params[loadFlags] |= canUseHeap
        params.putLE(heapEnd, at: heapEndPtr)
        params.putLE(UInt32(BootLayout.commandLine), at: cmdLinePtr)
        params.putLE(UInt32(0), at: extCmdLinePtr)
        params.putLE(UInt32(load), at: code32Start)
        params.putLE(UInt64(0), at: setupData)   // Keel passes no setup_data list
        if let rsdp { params.putLE(rsdp, at: acpiRsdpAddr) }
        let e820 = map.e820
        guard e820.count <= e820MaxEntries else {
            throw BootError(.malformed, subject, "memory map has \(e820.count) entries, boot_params holds \(e820MaxEntries)")
        }
        params[e820Entries] = UInt8(e820.count)
        for (i, e) in e820.enumerated() {
            let at = e820Table + i * 20
            params.putLE(e.address, at: at)
            params.putLE(e.size, at: at + 8)
            params.putLE(e.type.rawValue, at: at + 16)
        }
        try w.write(params, at: BootLayout.bootParams, what: "boot_params")

        // 64-bit entry: long mode, paging on through the identity map, flat __BOOT_CS/__BOOT_DS.
        try BootTables.writeIdentityMap(w)
        let code = BootTables.code64(), data = BootTables.data(), tss = BootTables.tss()
        try w.write(BootTables.gdt(code: code, data: data, tss: tss), at: BootLayout.gdt, what: "GDT")
        var cpu = BootCPUState(rip: load + 0x200, cr0: CR0.pe | CR0.et | CR0.pg, cs: code, data: data, tr: tss)
        cpu.rsi = BootLayout.bootParams
        cpu.rsp = BootLayout.bootStackTop
        cpu.cr3 = BootLayout.pml4
        cpu.cr4 = CR4.pae
        cpu.efer = EFER.lme | EFER.lma
        cpu.gdtBase = BootLayout.gdt
        cpu.gdtLimit = BootLayout.gdtLimit
        cpu.idtBase = 0
        cpu.idtLimit = 0
        return cpu
    }
}

enum CR0 {
    static let pe: UInt64 = 1 << 0
    static let et: UInt64 = 1 << 4
    static let pg: UInt64 = 1 << 31
}

enum CR4 { static let pae: UInt64 = 1 << 5 }

enum EFER {
    static let lme: UInt64 = 1 << 8
    static let lma: UInt64 = 1 << 10
}
