import Foundation
import XCTest
@testable import Machine
import Memory

final class BootTests: XCTestCase {
    let map = PCMemoryMap(ramSize: 64 << 20)

    func makeMemory() throws -> GuestMemory { try GuestMemory(layout: map.ramRegions) }

    func loadBz(_ image: [UInt8], initrd: [UInt8]? = nil, cmdline: String = "console=ttyS0 quiet",
                rsdp: UInt64? = 0xE_0000, memory: GuestMemory? = nil) throws -> (BootCPUState, GuestMemory) {
        let mem = try memory ?? makeMemory()
        let cpu = try KernelLoader.load(kernel: image, kernelName: "/tmp/bzImage", initrd: initrd, initrdName: "/tmp/initrd",
                                        commandLine: cmdline, memory: mem, map: map, rsdpAddress: rsdp)
        return (cpu, mem)
    }

    func expectError(_ kind: BootError.Kind, _ contains: String, _ body: () throws -> Any) {
        do {
            _ = try body()
            XCTFail("expected BootError \(kind)")
        } catch let e as BootError {
            XCTAssertEqual(e.kind, kind, "\(e)")
            XCTAssertTrue(e.description.contains(contains), "'\(e)' does not mention '\(contains)'")
            XCTAssertFalse(e.description.contains("\n"))
        } catch {
            XCTFail("unexpected error \(error)")
        }
    }

    /// Decodes a GDT entry and checks it against the segment state the loader returned.
    func assertDescriptor(_ mem: GuestMemory, _ s: SegmentState, file: StaticString = #filePath, line: UInt = #line) throws {
        let d = try mem.load(UInt64.self, at: BootLayout.gdt + UInt64(s.selector))
        let rawLimit = (d & 0xFFFF) | ((d >> 48) & 0xF) << 16
        let base = ((d >> 16) & 0xFF_FFFF) | ((d >> 56) & 0xFF) << 24
        let access = (d >> 40) & 0xFF, flags = (d >> 52) & 0xF
        XCTAssertEqual(UInt8(access & 0xF), s.type, file: file, line: line)
        XCTAssertEqual(access & 0x10 != 0, s.codeOrData, file: file, line: line)
        XCTAssertEqual(UInt8((access >> 5) & 3), s.dpl, file: file, line: line)
        XCTAssertEqual(access & 0x80 != 0, s.present, file: file, line: line)
        XCTAssertEqual(flags & 0x2 != 0, s.long, file: file, line: line)
        XCTAssertEqual(flags & 0x4 != 0, s.defaultBig, file: file, line: line)
        XCTAssertEqual(flags & 0x8 != 0, s.granularity, file: file, line: line)
        XCTAssertEqual(base, s.base, file: file, line: line)
        let byteLimit = s.granularity ? (rawLimit << 12) | 0xFFF : rawLimit
        XCTAssertEqual(byteLimit, UInt64(s.limit), file: file, line: line)
    }

    func cString(_ mem: GuestMemory, at: UInt64) throws -> String {
        var bytes: [UInt8] = []
        var a = at
        while true {
            let b = try mem.load(UInt8.self, at: a)
            if b == 0 { break }
            bytes.append(b); a += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: bzImage

    func testDetect() {
        XCTAssertEqual(KernelLoader.detect(BzImageSpec().build()), .bzImage)
        XCTAssertEqual(KernelLoader.detect(PVHSpec().build()), .pvhELF)
        XCTAssertEqual(KernelLoader.detect(PVHSpec(is64: false, entryDescSize: 4).build()), .pvhELF)
        XCTAssertNil(KernelLoader.detect(PVHSpec(entry: nil).build()))
        XCTAssertNil(KernelLoader.detect([UInt8](repeating: 0x90, count: 4096)))
        XCTAssertNil(KernelLoader.detect([]))
    }

    func testBzImageBootParams() throws {
        let spec = BzImageSpec()
        let image = spec.build()
        let initrd = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }
        let (cpu, mem) = try loadBz(image, initrd: initrd)
        let bp = BootLayout.bootParams

        // The setup header is copied from the image.
        XCTAssertEqual(try mem.load(UInt16.self, at: bp + 0x1FE), 0xAA55)
        XCTAssertEqual(try mem.load(UInt32.self, at: bp + 0x202), 0x5372_6448)
        XCTAssertEqual(try mem.load(UInt16.self, at: bp + 0x206), 0x020F)
        XCTAssertEqual(try mem.load(UInt16.self, at: bp + 0x1FA), 0xFFFF)
        XCTAssertEqual(try mem.load(UInt8.self, at: bp + 0x1F1), 4)
        XCTAssertEqual(try mem.load(UInt32.self, at: bp + 0x260), 0x20_0000)
        XCTAssertEqual(try mem.load(UInt8.self, at: bp + 0x1EF), 0, "sentinel must stay 0")
        // Fields the loader fills in.
        XCTAssertEqual(try mem.load(UInt8.self, at: bp + 0x210), 0xFF)
        let loadflags = try mem.load(UInt8.self, at: bp + 0x211)
        XCTAssertEqual(loadflags & 0x81, 0x81, "LOADED_HIGH kept, CAN_USE_HEAP set")
        XCTAssertEqual(try mem.load(UInt16.self, at: bp + 0x224), 0xFE00)
        XCTAssertEqual(try mem.load(UInt32.self, at: bp + 0x214), 0x10_0000)
        XCTAssertEqual(try mem.load(UInt32.self, at: bp + 0x228), 0x2_0000)
        XCTAssertEqual(try mem.load(UInt32.self, at: bp + 0x0C8), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: bp + 0x250), 0, "setup_data cleared")
        XCTAssertEqual(try cString(mem, at: 0x2_0000), "console=ttyS0 quiet")
        XCTAssertEqual(try mem.load(UInt64.self, at: bp + 0x070), 0xE_0000)

        // e820.
        let e820 = map.e820
        XCTAssertEqual(Int(try mem.load(UInt8.self, at: bp + 0x1E8)), e820.count)
        for (i, e) in e820.enumerated() {
            let at = bp + 0x2D0 + UInt64(i) * 20
            XCTAssertEqual(try mem.load(UInt64.self, at: at), e.address)
            XCTAssertEqual(try mem.load(UInt64.self, at: at + 8), e.size)
            XCTAssertEqual(try mem.load(UInt32.self, at: at + 16), e.type.rawValue)
        }
        XCTAssertEqual(try mem.load(UInt64.self, at: bp + 0x2D0 + UInt64(e820.count) * 20), 0)

        // Initrd: page aligned, as high as RAM allows, clear of the kernel (ends 16 MiB + init_size).
        let rdImage = UInt64(try mem.load(UInt32.self, at: bp + 0x218)) | UInt64(try mem.load(UInt32.self, at: bp + 0x0C0)) << 32
        let rdSize = UInt64(try mem.load(UInt32.self, at: bp + 0x21C)) | UInt64(try mem.load(UInt32.self, at: bp + 0x0C4)) << 32
        XCTAssertEqual(rdSize, UInt64(initrd.count))
        XCTAssertEqual(rdImage % 4096, 0)
        XCTAssertEqual(rdImage, ((64 << 20) - UInt64(initrd.count)) & ~0xFFF)
        XCTAssertGreaterThanOrEqual(rdImage, spec.prefAddress + UInt64(spec.initSize))
        XCTAssertEqual(try mem.readBytes(at: rdImage, count: initrd.count), initrd)

        // The protected-mode kernel at 1 MiB.
        XCTAssertEqual(try mem.readBytes(at: 0x10_0000, count: spec.payloadSize), Array(image[spec.setupBytes...]))

        // 64-bit entry state.
        XCTAssertEqual(cpu.rip, 0x10_0200)
        XCTAssertEqual(cpu.rsi, 0x7000)
        XCTAssertEqual(cpu.cr0 & 0x8000_0011, 0x8000_0011)
        XCTAssertEqual(cpu.cr3, 0x9000)
        XCTAssertEqual(cpu.cr4 & 0x20, 0x20)
        XCTAssertEqual(cpu.efer, 0x500)
        XCTAssertEqual(cpu.rflags, 0x2)
        XCTAssertEqual(cpu.gdtBase, 0x500)
        XCTAssertEqual(cpu.gdtLimit, 0x2F)
        XCTAssertEqual(cpu.idtLimit, 0)
        XCTAssertEqual(cpu.cs, SegmentState(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, type: 0xB, long: true, granularity: true))
        XCTAssertEqual(cpu.ds, SegmentState(selector: 0x18, base: 0, limit: 0xFFFF_FFFF, type: 0x3, defaultBig: true, granularity: true))
        XCTAssertEqual(cpu.ss, cpu.ds); XCTAssertEqual(cpu.es, cpu.ds)
        XCTAssertEqual(cpu.tr.selector, 0x20)
        XCTAssertEqual(cpu.tr.type, 0xB)
        XCTAssertFalse(cpu.tr.codeOrData)
        XCTAssertTrue(cpu.tr.present)
        XCTAssertGreaterThanOrEqual(cpu.tr.limit, 0x67)

        // GDT bytes.
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x500), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x508), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x510), 0x00AF_9B00_0000_FFFF)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x518), 0x00CF_9300_0000_FFFF)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x520), 0x0000_8B00_0000_0067)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x528), 0)
        try assertDescriptor(mem, cpu.cs)
        try assertDescriptor(mem, cpu.ds)
        try assertDescriptor(mem, cpu.tr)
    }

    func testIdentityPageTables() throws {
        let (cpu, mem) = try loadBz(BzImageSpec().build())
        XCTAssertEqual(try mem.load(UInt64.self, at: cpu.cr3), 0xA003)
        for i in 1..<512 { XCTAssertEqual(try mem.load(UInt64.self, at: cpu.cr3 + UInt64(i) * 8), 0) }
        for i in 0..<4 {
            XCTAssertEqual(try mem.load(UInt64.self, at: 0xA000 + UInt64(i) * 8), 0xB003 + UInt64(i) * 0x1000)
        }
        XCTAssertEqual(try mem.load(UInt64.self, at: 0xA000 + 4 * 8), 0)
        // Walk: every 2 MiB page of the first 4 GiB maps to itself, present, writable, PS.
        for n in 0..<2048 {
            let pd = 0xB000 + UInt64(n / 512) * 0x1000
            let e = try mem.load(UInt64.self, at: pd + UInt64(n % 512) * 8)
            XCTAssertEqual(e, UInt64(n) << 21 | 0x83, "PDE \(n)")
        }
    }

    func testNothingWrittenToEBDAOrBIOSArea() throws {
        let mem = try makeMemory()
        let fill = [UInt8](repeating: 0xEE, count: Int(PCMemoryMap.biosAreaEnd - PCMemoryMap.ebdaStart))
        try mem.write(fill, at: PCMemoryMap.ebdaStart)
        _ = try loadBz(BzImageSpec().build(), initrd: [1, 2, 3], memory: mem)
        XCTAssertEqual(try mem.readBytes(at: PCMemoryMap.ebdaStart, count: fill.count), fill)
        let mem2 = try makeMemory()
        try mem2.write(fill, at: PCMemoryMap.ebdaStart)
        _ = try KernelLoader.load(kernel: PVHSpec().build(), kernelName: "k", initrd: [1], initrdName: "i", commandLine: "x",
                                  memory: mem2, map: map, rsdpAddress: nil)
        XCTAssertEqual(try mem2.readBytes(at: PCMemoryMap.ebdaStart, count: fill.count), fill)
    }

    func testBzImageWithoutInitrdOrRSDP() throws {
        var spec = BzImageSpec()
        spec.setupSects = 0   // 0 means 4
        let (_, mem) = try loadBz(spec.build(), rsdp: nil)
        XCTAssertEqual(try mem.load(UInt32.self, at: 0x7000 + 0x218), 0, "stale ramdisk_image cleared")
        XCTAssertEqual(try mem.load(UInt32.self, at: 0x7000 + 0x21C), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x7000 + 0x070), 0)
        XCTAssertEqual(try mem.load(UInt8.self, at: 0x10_0000), 3, "payload starts after 5 sectors")
    }

    func testInitrdRespectsInitrdAddrMax() throws {
        var spec = BzImageSpec()
        spec.initrdAddrMax = 0x2FF_FFFF
        let (_, mem) = try loadBz(spec.build(), initrd: [UInt8](repeating: 7, count: 0x1800))
        let at = UInt64(try mem.load(UInt32.self, at: 0x7000 + 0x218))
        XCTAssertEqual(at, 0x300_0000 - 0x2000)
    }

    func testInitrdPlacedAboveKernelOrRejected() throws {
        // 45 MiB fits between the kernel's 18 MiB and the top of 64 MiB.
        let (_, mem) = try loadBz(BzImageSpec().build(), initrd: [UInt8](repeating: 1, count: 45 << 20))
        XCTAssertEqual(UInt64(try mem.load(UInt32.self, at: 0x7000 + 0x218)), 19 << 20)
        // 47 MiB would overlap the kernel's decompression area.
        expectError(.initrdTooLarge, "initrd /tmp/initrd") {
            try self.loadBz(BzImageSpec().build(), initrd: [UInt8](repeating: 1, count: 47 << 20))
        }
        expectError(.initrdTooLarge, "does not fit") {
            try self.loadBz(BzImageSpec().build(), initrd: [UInt8](repeating: 1, count: 80 << 20))
        }
        expectError(.empty, "initrd /tmp/initrd: file is empty") { try self.loadBz(BzImageSpec().build(), initrd: []) }
    }

    func testBzImageErrors() throws {
        let good = BzImageSpec().build()
        expectError(.empty, "kernel /tmp/bzImage: file is empty") { try self.loadBz([]) }
        expectError(.truncated, "truncated") { try self.loadBz(Array(good[..<0x230])) }
        expectError(.truncated, "truncated") { try self.loadBz(Array(good[..<0x208])) }
        expectError(.truncated, "truncated") { try self.loadBz(Array(good[..<0x900])) }   // setup sectors cut
        expectError(.truncated, "payload") { try self.loadBz(Array(good[..<(good.count - 0x200)])) }
        var bad = good; bad[0x1FE] = 0
        expectError(.notAKernel, "kernel /tmp/bzImage: not a Linux bzImage or PVH ELF kernel") { try self.loadBz(bad) }
        var magic = good; magic[0x202] = UInt8(ascii: "X")
        expectError(.notAKernel, "not a Linux bzImage or PVH ELF kernel") { try self.loadBz(magic) }
        expectError(.unsupported, "2.10") { try self.loadBz(BzImageSpec(version: 0x020A).build()) }
        expectError(.unsupported, "XLF_KERNEL_64") { try self.loadBz(BzImageSpec(xloadflags: 0).build()) }
        expectError(.malformed, "setup header") { try self.loadBz(BzImageSpec(headerJump: 0x20).build()) }
        expectError(.placement, "kernel needs guest RAM") { try self.loadBz(BzImageSpec(initSize: 0xFFFF_FFFF).build()) }
        expectError(.placement, "kernel needs guest RAM") { try self.loadBz(BzImageSpec(prefAddress: .max).build()) }
        expectError(.notAKernel, "not a Linux bzImage or PVH ELF kernel") { try self.loadBz([UInt8](repeating: 0x4D, count: 9000)) }
        expectError(.notAKernel, "not a Linux bzImage or PVH ELF kernel") { try self.loadBz([1, 2, 3]) }
    }

    func testCommandLineLimits() throws {
        let image = BzImageSpec().build()
        let (_, mem) = try loadBz(image, cmdline: String(repeating: "a", count: 2047))
        XCTAssertEqual(try cString(mem, at: 0x2_0000).count, 2047)
        expectError(.commandLineTooLong, "command line: too long (2048 bytes") {
            try self.loadBz(image, cmdline: String(repeating: "a", count: 2048))
        }
        expectError(.commandLineTooLong, "too long") {
            try self.loadBz(BzImageSpec(cmdlineSize: 100_000).build(), cmdline: String(repeating: "b", count: 5000))
        }
        expectError(.commandLineInvalid, "NUL") { try self.loadBz(image, cmdline: "a\u{0}b") }
    }

    /// Truncations and byte flips of valid images must give a BootError or a successful load, never a trap.
    func testMalformedImagesNeverTrap() throws {
        let mem = try makeMemory()
        var rng = SplitMix(seed: 0x6B65656C)
        var loaded = 0, refused = 0
        for base in [BzImageSpec().build(), PVHSpec().build(), PVHSpec(is64: false, entryDescSize: 4).build()] {
            for cut in stride(from: 0, to: base.count, by: 37) {
                _ = try? KernelLoader.load(kernel: Array(base[..<cut]), kernelName: "k", initrd: nil, initrdName: nil,
                                           commandLine: "", memory: mem, map: map, rsdpAddress: nil)
                _ = KernelLoader.detect(Array(base[..<cut]))
            }
            for _ in 0..<400 {
                var m = base
                for _ in 0..<4 {
                    let headerBytes = min(m.count, 0x300)
                    m[Int(rng.next() % UInt64(headerBytes))] = UInt8(truncatingIfNeeded: rng.next())
                }
                do {
                    _ = try KernelLoader.load(kernel: m, kernelName: "k", initrd: [9], initrdName: "i",
                                              commandLine: "c", memory: mem, map: map, rsdpAddress: nil)
                    loaded += 1
                } catch is BootError {
                    refused += 1
                } catch {
                    XCTFail("non-BootError \(error)")
                }
            }
        }
        XCTAssertGreaterThan(loaded, 0, "mutations should sometimes leave a loadable image")
        XCTAssertGreaterThan(refused, 0, "mutations should sometimes be refused")
    }

    // MARK: PVH

    func loadPVH(_ image: [UInt8], initrd: [UInt8]? = nil, rsdp: UInt64? = 0xE_0000,
                 memory: GuestMemory? = nil) throws -> (BootCPUState, GuestMemory) {
        let mem = try memory ?? makeMemory()
        let cpu = try KernelLoader.load(kernel: image, kernelName: "/tmp/vmlinux", initrd: initrd, initrdName: "/tmp/initrd",
                                        commandLine: "console=hvc0", memory: mem, map: map, rsdpAddress: rsdp)
        return (cpu, mem)
    }

    func checkPVH(_ spec: PVHSpec) throws {
        let mem = try makeMemory()
        try mem.write([UInt8](repeating: 0xFF, count: 0x3000), at: 0x20_0000)   // bss must be zeroed
        let initrd = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        let (cpu, _) = try loadPVH(spec.build(), initrd: initrd, memory: mem)

        // Segments.
        let s0 = spec.segments[0]
        XCTAssertEqual(try mem.readBytes(at: s0.paddr, count: s0.data.count), s0.data)
        XCTAssertEqual(try mem.readBytes(at: s0.paddr + UInt64(s0.data.count), count: Int(s0.memsz) - s0.data.count),
                       [UInt8](repeating: 0, count: Int(s0.memsz) - s0.data.count))
        XCTAssertEqual(try mem.readBytes(at: 0x40_0000, count: 0x100), spec.segments[1].data)

        // hvm_start_info.
        let si = BootLayout.startInfo
        XCTAssertEqual(try mem.load(UInt32.self, at: si), 0x336E_C578)
        XCTAssertEqual(try mem.load(UInt32.self, at: si + 4), 1)
        XCTAssertEqual(try mem.load(UInt32.self, at: si + 8), 0)
        XCTAssertEqual(try mem.load(UInt32.self, at: si + 12), 1)
        let modlist = try mem.load(UInt64.self, at: si + 16)
        XCTAssertEqual(modlist, BootLayout.pvhModlist)
        XCTAssertEqual(try mem.load(UInt64.self, at: si + 24), 0x2_0000)
        XCTAssertEqual(try cString(mem, at: 0x2_0000), "console=hvc0")
        XCTAssertEqual(try mem.load(UInt64.self, at: si + 32), 0xE_0000)
        let memmap = try mem.load(UInt64.self, at: si + 40)
        XCTAssertEqual(memmap, BootLayout.pvhMemmap)
        XCTAssertEqual(Int(try mem.load(UInt32.self, at: si + 48)), map.e820.count)
        XCTAssertGreaterThanOrEqual(modlist, si + 0x38)
        XCTAssertGreaterThanOrEqual(memmap, modlist + 32)
        for (i, e) in map.e820.enumerated() {
            let at = memmap + UInt64(i) * 24
            XCTAssertEqual(try mem.load(UInt64.self, at: at), e.address)
            XCTAssertEqual(try mem.load(UInt64.self, at: at + 8), e.size)
            XCTAssertEqual(try mem.load(UInt32.self, at: at + 16), e.type.rawValue)
            XCTAssertEqual(try mem.load(UInt32.self, at: at + 20), 0)
        }
        // Module list: the initrd at the top of RAM, page aligned.
        let rd = try mem.load(UInt64.self, at: modlist)
        XCTAssertEqual(try mem.load(UInt64.self, at: modlist + 8), UInt64(initrd.count))
        XCTAssertEqual(try mem.load(UInt64.self, at: modlist + 16), 0)
        XCTAssertEqual(rd, ((64 << 20) - UInt64(initrd.count)) & ~0xFFF)
        XCTAssertEqual(try mem.readBytes(at: rd, count: initrd.count), initrd)

        // Entry state: 32-bit protected mode, paging off.
        XCTAssertEqual(cpu.rip, spec.entry)
        XCTAssertEqual(cpu.rbx, 0x6000)
        XCTAssertEqual(cpu.cr0, 0x11)
        XCTAssertEqual(cpu.cr4, 0)
        XCTAssertEqual(cpu.efer, 0)
        XCTAssertEqual(cpu.rflags, 0x2)
        XCTAssertEqual(cpu.cs, SegmentState(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, type: 0xB, defaultBig: true, granularity: true))
        for s in [cpu.ds, cpu.es, cpu.fs, cpu.gs, cpu.ss] {
            XCTAssertEqual(s, SegmentState(selector: 0x18, base: 0, limit: 0xFFFF_FFFF, type: 0x3, defaultBig: true, granularity: true))
        }
        XCTAssertEqual(cpu.tr, SegmentState(selector: 0x20, base: 0, limit: 0x67, type: 0xB, codeOrData: false))
        XCTAssertEqual(cpu.gdtBase, 0x500)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x510), 0x00CF_9B00_0000_FFFF)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x518), 0x00CF_9300_0000_FFFF)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x520), 0x0000_8B00_0000_0067)
        try assertDescriptor(mem, cpu.cs)
        try assertDescriptor(mem, cpu.ss)
        try assertDescriptor(mem, cpu.tr)
    }

    func testPVHELF64() throws { try checkPVH(PVHSpec()) }

    func testPVHELF32WithFourByteNote() throws { try checkPVH(PVHSpec(is64: false, entry: 0x20_0020, entryDescSize: 4)) }

    func testPVHWithoutInitrdOrRSDP() throws {
        let (_, mem) = try loadPVH(PVHSpec().build(), rsdp: nil)
        XCTAssertEqual(try mem.load(UInt32.self, at: 0x6000 + 12), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x6000 + 16), 0)
        XCTAssertEqual(try mem.load(UInt64.self, at: 0x6000 + 32), 0)
    }

    func testPVHInitrdAvoidsSegments() throws {
        var spec = PVHSpec()
        spec.segments.append(PVHSegment(paddr: 0x3F0_0000, data: [1, 2, 3], memsz: 0x1000))
        let (_, mem) = try loadPVH(spec.build(), initrd: [UInt8](repeating: 4, count: 0x20_0000))
        let rd = try mem.load(UInt64.self, at: BootLayout.pvhModlist)
        XCTAssertEqual(rd, 0x3D0_0000)
        XCTAssertEqual(try mem.readBytes(at: 0x3F0_0000, count: 3), [1, 2, 3])
        expectError(.initrdTooLarge, "initrd /tmp/initrd") {
            try self.loadPVH(PVHSpec().build(), initrd: [UInt8](repeating: 0, count: 64 << 20))
        }
    }

    func testPVHErrors() throws {
        expectError(.notAKernel, "PVH") { try self.loadPVH(PVHSpec(entry: nil).build()) }
        var outside = PVHSpec()
        outside.segments[1].paddr = 0x800_0000
        expectError(.placement, "segment 1 [0x8000000, 0x8000100) is outside guest RAM") { try self.loadPVH(outside.build()) }
        var huge = PVHSpec()
        huge.segments[0].memsz = 0xFFFF_FFFF_FFFF_0000
        expectError(.placement, "segment 0") { try self.loadPVH(huge.build()) }
        var low = PVHSpec()
        low.segments[0].paddr = 0x7000
        expectError(.placement, "boot area") { try self.loadPVH(low.build()) }
        var bios = PVHSpec()
        bios.segments[0].paddr = 0xE_0000
        expectError(.placement, "EBDA/BIOS") { try self.loadPVH(bios.build()) }
        let good = PVHSpec().build()
        expectError(.truncated, "truncated") { try self.loadPVH(Array(good[..<40])) }
        expectError(.truncated, "program headers") { try self.loadPVH(Array(good[..<100])) }
        expectError(.truncated, "segment 0") { try self.loadPVH(Array(good[..<0x1100])) }
        var bigEndian = good; bigEndian[5] = 2
        expectError(.unsupported, "big-endian") { try self.loadPVH(bigEndian) }
        var arm = good; arm[0x12] = 183
        expectError(.unsupported, "machine 183") { try self.loadPVH(arm) }
        expectError(.malformed, "4 or 8") { try self.loadPVH(PVHSpec(entryDescSize: 2).build()) }
        var filesz = good; filesz.put(UInt64(0x10_0000), 64 + 32)   // p_filesz > p_memsz
        expectError(.malformed, "exceeds memory size") { try self.loadPVH(filesz) }
        var gap = PVHSpec(); gap.entry = 0x30_0000
        expectError(.placement, "PVH entry 0x300000") { try self.loadPVH(gap.build()) }
        var entry = PVHSpec(); entry.entry = 0x8000_0000
        expectError(.placement, "PVH entry 0x80000000 is not inside any loaded segment") { try self.loadPVH(entry.build()) }
    }

    // MARK: host files

    func testReadHostFile() throws {
        XCTAssertThrowsError(try readHostFile("/nonexistent/keel-kernel", what: "kernel")) { e in
            XCTAssertEqual("\(e)", "kernel /nonexistent/keel-kernel: No such file or directory")
            XCTAssertEqual((e as? BootError)?.kind, .unreadable)
        }
        XCTAssertThrowsError(try readHostFile("/tmp", what: "initrd")) { e in
            XCTAssertEqual("\(e)", "initrd /tmp: is a directory")
        }
        let path = NSTemporaryDirectory() + "keel-boot-test-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 31) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(data)))
        XCTAssertEqual(try readHostFile(path, what: "kernel"), data)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data()))
        XCTAssertEqual(try readHostFile(path, what: "kernel"), [])
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
