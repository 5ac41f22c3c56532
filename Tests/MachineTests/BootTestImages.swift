// Synthetic kernels for the boot tests: a minimal bzImage (real-looking setup header + payload)
// and minimal PVH ELF files. Nothing here is a real kernel; the loaders only read headers.

extension Array where Element == UInt8 {
    mutating func put<T: FixedWidthInteger>(_ v: T, _ offset: Int) {
        for i in 0..<MemoryLayout<T>.size { self[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}

struct BzImageSpec {
    var setupSects: UInt8 = 4
    var version: UInt16 = 0x020F
    var xloadflags: UInt16 = 0x3          // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    var cmdlineSize: UInt32 = 2047
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var prefAddress: UInt64 = 0x100_0000  // LOAD_PHYSICAL_ADDR 16 MiB
    var initSize: UInt32 = 0x20_0000
    var payloadSize = 0x2000
    var headerJump: UInt8 = 0x6A          // header ends at 0x26C (protocol 2.15)

    var setupBytes: Int { (Int(setupSects == 0 ? 4 : setupSects) + 1) * 512 }

    func build() -> [UInt8] {
        var img = [UInt8](repeating: 0, count: setupBytes + payloadSize)
        img.put(setupSects, 0x1F1)
        img.put(UInt16(1), 0x1F2)                     // root_flags
        img.put(UInt32((payloadSize + 15) / 16), 0x1F4)
        img.put(UInt16(0xFFFF), 0x1FA)                // vid_mode: "normal"
        img.put(UInt16(0xAA55), 0x1FE)
        img[0x200] = 0xEB; img[0x201] = headerJump
        img.put(UInt32(0x5372_6448), 0x202)          // "HdrS"
        img.put(version, 0x206)
        img.put(UInt16(0x3A10), 0x20E)               // kernel_version pointer
        img[0x211] = 0x01                              // LOADED_HIGH
        img.put(UInt32(0x10_0000), 0x214)
        img.put(UInt32(0xDEAD_0000), 0x218)           // stale ramdisk fields the loader must replace
        img.put(UInt32(0x1234), 0x21C)
        img.put(initrdAddrMax, 0x22C)
        img.put(UInt32(0x20_0000), 0x230)             // kernel_alignment
        img[0x234] = 1                                 // relocatable_kernel
        img[0x235] = 21                                // min_alignment
        img.put(xloadflags, 0x236)
        img.put(cmdlineSize, 0x238)
        img.put(UInt32(0x100), 0x248)                  // payload_offset
        img.put(UInt32(payloadSize - 0x200), 0x24C)    // payload_length
        img.put(UInt64(0xBAD0_0000), 0x250)            // stale setup_data the loader must clear
        img.put(prefAddress, 0x258)
        img.put(initSize, 0x260)
        for i in 0..<payloadSize { img[setupBytes + i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
        return img
    }
}

struct PVHSegment {
    var paddr: UInt64
    var data: [UInt8]
    var memsz: UInt64
}

/// A minimal ELF (64- or 32-bit) with PT_LOAD segments and a PT_NOTE holding a GNU build-id note
/// followed by the Xen PHYS32_ENTRY note (omitted when `entry` is nil).
struct PVHSpec {
    var is64 = true
    var entry: UInt64? = 0x20_0010
    var entryDescSize = 8
    var segments: [PVHSegment] = [
        PVHSegment(paddr: 0x20_0000, data: (0..<0x800).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }, memsz: 0x3000),
        PVHSegment(paddr: 0x40_0000, data: [UInt8](repeating: 0xC3, count: 0x100), memsz: 0x100),
    ]

    func notes() -> [UInt8] {
        var n: [UInt8] = []
        func note(_ name: String, _ type: UInt32, _ desc: [UInt8]) {
            var h = [UInt8](repeating: 0, count: 12)
            h.put(UInt32(name.utf8.count + 1), 0); h.put(UInt32(desc.count), 4); h.put(type, 8)
            n += h
            var nm = Array(name.utf8) + [0]
            while nm.count % 4 != 0 { nm.append(0) }
            n += nm
            var d = desc
            while d.count % 4 != 0 { d.append(0) }
            n += d
        }
        note("GNU", 3, [UInt8](repeating: 0xAB, count: 20))
        if let entry {
            var d = [UInt8](repeating: 0, count: entryDescSize)
            for i in 0..<entryDescSize { d[i] = UInt8(truncatingIfNeeded: entry >> (8 * UInt64(i))) }
            note("Xen", 18, d)
        }
        return n
    }

    func build() -> [UInt8] {
        let ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32
        let phnum = segments.count + 1
        let noteBytes = notes()
        var offset = 0x1000
        var dataOffsets: [Int] = []
        for s in segments { dataOffsets.append(offset); offset += s.data.count }
        let noteOffset = offset
        var img = [UInt8](repeating: 0, count: noteOffset + noteBytes.count)
        img[0] = 0x7F; img[1] = 0x45; img[2] = 0x4C; img[3] = 0x46
        img[4] = is64 ? 2 : 1; img[5] = 1; img[6] = 1
        img.put(UInt16(2), 0x10)                       // ET_EXEC
        img.put(UInt16(is64 ? 62 : 3), 0x12)
        img.put(UInt32(1), 0x14)
        if is64 {
            img.put(UInt64(0xFFFF_FFFF_8100_0000), 0x18)
            img.put(UInt64(ehsize), 0x20)
            img.put(UInt16(ehsize), 0x34); img.put(UInt16(phentsize), 0x36); img.put(UInt16(phnum), 0x38)
        } else {
            img.put(UInt32(0xC100_0000), 0x18)
            img.put(UInt32(ehsize), 0x1C)
            img.put(UInt16(ehsize), 0x28); img.put(UInt16(phentsize), 0x2A); img.put(UInt16(phnum), 0x2C)
        }
        func phdr(_ i: Int, type: UInt32, offset: Int, paddr: UInt64, filesz: Int, memsz: UInt64, align: UInt64) {
            let h = ehsize + i * phentsize
            if is64 {
                img.put(type, h); img.put(UInt32(5), h + 4); img.put(UInt64(offset), h + 8)
                img.put(paddr | 0xFFFF_FFFF_0000_0000, h + 16); img.put(paddr, h + 24)
                img.put(UInt64(filesz), h + 32); img.put(memsz, h + 40); img.put(align, h + 48)
            } else {
                img.put(type, h); img.put(UInt32(offset), h + 4); img.put(UInt32(truncatingIfNeeded: paddr), h + 8)
                img.put(UInt32(truncatingIfNeeded: paddr), h + 12); img.put(UInt32(filesz), h + 16)
                img.put(UInt32(truncatingIfNeeded: memsz), h + 20); img.put(UInt32(5), h + 24); img.put(UInt32(align), h + 28)
            }
        }
        for (i, s) in segments.enumerated() {
            phdr(i, type: 1, offset: dataOffsets[i], paddr: s.paddr, filesz: s.data.count, memsz: s.memsz, align: 0x1000)
            img.replaceSubrange(dataOffsets[i]..<dataOffsets[i] + s.data.count, with: s.data)
        }
        phdr(segments.count, type: 4, offset: noteOffset, paddr: 0, filesz: noteBytes.count, memsz: 0, align: 4)
        img.replaceSubrange(noteOffset..<noteOffset + noteBytes.count, with: noteBytes)
        return img
    }
}
