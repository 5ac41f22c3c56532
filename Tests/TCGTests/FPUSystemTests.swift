import XCTest
@testable import TCG

/// x87/SSE system behaviour against the SDM: #UD without CR4.OSFXSR, #NM with CR0.TS, #GP on
/// misaligned 16-byte operands, the FXSAVE image, FXRSTOR/LDMXCSR reserved-bit checks, memory
/// forms, and CMPXCHG16B.
final class FPUSystemTests: XCTestCase {
    var emu: EmulatedRunner!
    static let idt: UInt64 = 0x4000, handlers: UInt64 = 0x8000, stack: UInt64 = 0x40000
    static let data = EmulatedRunner.dataAddress

    override func setUpWithError() throws {
        emu = try EmulatedRunner()
        let m = emu.memory
        let gdt: UInt64 = 0x3000
        for (k, d) in [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF].enumerated() { try m.store(UInt64(d), at: gdt + UInt64(8 * k)) }
        for v in 0..<32 {
            let h = Self.handlers + UInt64(16 * v)
            let lo = (h & 0xFFFF) | (0x08 << 16) | (UInt64(0x8E) << 40) | ((h >> 16 & 0xFFFF) << 48)
            try m.store(lo, at: Self.idt + UInt64(16 * v))
            try m.store(h >> 32, at: Self.idt + UInt64(16 * v) + 8)
            try m.write([0xF4], at: h)
        }
        let s = emu.cpu.st
        s.pointee.idtBase = Self.idt; s.pointee.idtLimit = 0x1FF
        s.pointee.gdtBase = gdt; s.pointee.gdtLimit = 0x17
        s.pointee.cr4 |= CR4.osfxsr | CR4.osxmmexcpt
    }

    var cpu: X86CPU { emu.cpu }

    /// Runs `code` in ring 0; returns the vector of the exception taken, or nil if none.
    func run(_ code: [UInt8], regs: [Int: UInt64] = [:]) throws -> Int? {
        var r = RegisterFile()
        r.gpr[4] = Self.stack
        for (k, v) in regs { r.gpr[k] = v }
        let (_, exit) = try emu.run(code, r)
        XCTAssertEqual(exit, .haltedForever)
        let rip = cpu.st.pointee.rip
        if rip >= Self.handlers && rip < Self.handlers + 16 * 32 { return Int((rip - Self.handlers - 1) / 16) }
        return nil
    }

    func testSSEWithoutOSFXSRIsUndefinedAndTSIsDeviceNotAvailable() throws {
        let pxor: [UInt8] = [0x66, 0x0F, 0xEF, 0xC0]
        XCTAssertNil(try run(pxor))
        cpu.st.pointee.cr4 &= ~CR4.osfxsr
        XCTAssertEqual(try run(pxor), 6, "#UD without CR4.OSFXSR")
        cpu.st.pointee.cr4 |= CR4.osfxsr
        cpu.st.pointee.cr0 |= CR0.ts
        XCTAssertEqual(try run(pxor), 7, "#NM with CR0.TS")
        XCTAssertEqual(try run([0xD9, 0xE8, 0xDD, 0xD8]), 7, "x87 with CR0.TS")
        XCTAssertNil(try run([0x9B]), "FWAIT ignores TS without MP")
        cpu.st.pointee.cr0 |= CR0.mp
        XCTAssertEqual(try run([0x9B]), 7, "FWAIT with TS and MP")
        cpu.st.pointee.cr0 &= ~(CR0.ts | CR0.mp)
        cpu.st.pointee.cr0 |= CR0.em
        XCTAssertEqual(try run(pxor), 6, "#UD with CR0.EM")
        XCTAssertEqual(try run([0xD9, 0xE8, 0xDD, 0xD8]), 7, "x87 with CR0.EM is #NM")
    }

    func testAlignedMovesFaultOnMisalignedOperandsAndUnalignedOnesCrossPages() throws {
        let bytes = (0..<16).map { UInt8($0 * 3 + 1) }
        try emu.memory.write(bytes, at: 0x20FF8)
        // movaps xmm1, [rax]
        XCTAssertEqual(try run([0x0F, 0x28, 0x08], regs: [0: 0x20FF8]), 13)
        // movdqu xmm1, [rax]; movdqu [rbx], xmm1 (both cross a page boundary)
        XCTAssertNil(try run([0xF3, 0x0F, 0x6F, 0x08, 0xF3, 0x0F, 0x7F, 0x0B], regs: [0: 0x20FF8, 3: 0x21FFC]))
        let out = try (0..<16).map { try emu.memory.load(UInt8.self, at: 0x21FFC + UInt64($0)) }
        XCTAssertEqual(out, bytes)
        // movdqa [rbx], xmm1 with rbx 16-aligned works; pxor xmm1, [rbx+8] faults.
        XCTAssertNil(try run([0x66, 0x0F, 0x7F, 0x0B], regs: [3: 0x22000]))
        XCTAssertEqual(try run([0x66, 0x0F, 0xEF, 0x4B, 0x08], regs: [3: 0x22000]), 13)
    }

    func testFXSAVEImageAndFXRSTORRoundTrip() throws {
        // fninit; fld1; fldpi; ldmxcsr [rbx]; mov eax, 0x12345678; movd xmm3, eax; pshufd xmm15, xmm3, 0; fxsave64 [rdi]
        try emu.memory.store(UInt32(0x1F80 | 0x6000), at: Self.data + 0x800)
        let code: [UInt8] = [0xDB, 0xE3, 0xD9, 0xE8, 0xD9, 0xEB, 0x0F, 0xAE, 0x13, 0xB8, 0x78, 0x56, 0x34, 0x12,
                             0x66, 0x0F, 0x6E, 0xD8, 0x66, 0x44, 0x0F, 0x70, 0xFB, 0x00, 0x48, 0x0F, 0xAE, 0x07]
        XCTAssertNil(try run(code, regs: [3: Self.data + 0x800, 7: Self.data]))
        let m = emu.memory, base = Self.data
        XCTAssertEqual(try m.load(UInt16.self, at: base), 0x037F, "FCW")
        XCTAssertEqual(try m.load(UInt16.self, at: base + 2) & 0x3800, 6 << 11, "FSW.TOP after two pushes")
        XCTAssertEqual(try m.load(UInt8.self, at: base + 4), 0xC0, "abridged tag: R6 and R7 in use")
        XCTAssertEqual(try m.load(UInt32.self, at: base + 24), 0x7F80, "MXCSR")
        XCTAssertEqual(try m.load(UInt32.self, at: base + 28), 0xFFFF, "MXCSR_MASK")
        // ST(0) = pi, ST(1) = 1.0 as 80-bit values.
        XCTAssertEqual(try m.load(UInt64.self, at: base + 32), 0xC90F_DAA2_2168_C235)
        XCTAssertEqual(try m.load(UInt16.self, at: base + 40), 0x4000)
        XCTAssertEqual(try m.load(UInt64.self, at: base + 48), 0x8000_0000_0000_0000)
        XCTAssertEqual(try m.load(UInt16.self, at: base + 56), 0x3FFF)
        XCTAssertEqual(try m.load(UInt64.self, at: base + 160 + 3 * 16), 0x1234_5678)
        XCTAssertEqual(try m.load(UInt64.self, at: base + 160 + 15 * 16 + 8), 0x1234_5678_1234_5678)

        // Clobber, then fxrstor64 [rdi]; fstp qword [rsi]; fstp qword [rsi+8]; stmxcsr [rsi+16]; movq rdx, xmm15
        let restore: [UInt8] = [0xDB, 0xE3, 0x66, 0x45, 0x0F, 0xEF, 0xFF, 0x48, 0x0F, 0xAE, 0x0F, 0xDD, 0x1E, 0xDD, 0x5E, 0x08,
                                0x0F, 0xAE, 0x5E, 0x10, 0x66, 0x4C, 0x0F, 0x7E, 0xFA]
        XCTAssertNil(try run(restore, regs: [7: Self.data, 6: Self.data + 0x400]))
        XCTAssertEqual(try m.load(UInt64.self, at: base + 0x400), Double.pi.bitPattern)
        XCTAssertEqual(try m.load(UInt64.self, at: base + 0x408), (1.0).bitPattern)
        XCTAssertEqual(try m.load(UInt32.self, at: base + 0x410), 0x7F80)
        XCTAssertEqual(cpu.gpr[2], 0x1234_5678_1234_5678)
        // Misaligned FXSAVE, reserved MXCSR bits in FXRSTOR and LDMXCSR: #GP(0).
        XCTAssertEqual(try run([0x0F, 0xAE, 0x07], regs: [7: Self.data + 8]), 13)
        try m.store(UInt32(0x1_0000), at: Self.data + 24)
        XCTAssertEqual(try run([0x48, 0x0F, 0xAE, 0x0F], regs: [7: Self.data]), 13)
        XCTAssertEqual(try run([0x0F, 0xAE, 0x17], regs: [7: Self.data + 24]), 13)
    }

    func testX87MemoryFormatsAndEnvironment() throws {
        // fild dword [rbx]; fld tbyte... : 7 / 2 = 3.5; fistp (nearest-even) -> 4; fnstenv [rsi]
        try emu.memory.store(UInt32(7), at: Self.data)
        try emu.memory.store(UInt16(2), at: Self.data + 4)
        let code: [UInt8] = [0xDB, 0xE3, 0xDB, 0x03, 0xDE, 0x73, 0x04, 0xD9, 0xC0, 0xDB, 0x7B, 0x10, 0xDB, 0x5B, 0x20,
                             0xDB, 0x6B, 0x10, 0xD9, 0x36]
        XCTAssertNil(try run(code, regs: [3: Self.data, 6: Self.data + 0x100]))
        let m = emu.memory
        XCTAssertEqual(try m.load(UInt32.self, at: Self.data + 0x20), 4, "3.5 rounds to even")
        XCTAssertEqual(try m.load(UInt16.self, at: Self.data + 0x18), 0x4000, "3.5 as an 80-bit exponent")
        XCTAssertEqual(try m.load(UInt64.self, at: Self.data + 0x10), 0xE000_0000_0000_0000)
        XCTAssertEqual(try m.load(UInt16.self, at: Self.data + 0x100), 0x037F, "FCW in the environment")
        XCTAssertEqual(try m.load(UInt16.self, at: Self.data + 0x104) & 0x3800, 7 << 11, "TOP with one value")
        XCTAssertEqual(try m.load(UInt16.self, at: Self.data + 0x108), 0x3FFF, "full tag: only R7 valid")
        // FNSTENV masks all exceptions afterwards: fnstcw [rsi+0x40]
        XCTAssertNil(try run([0xD9, 0x7E, 0x40], regs: [6: Self.data + 0x100]))
        XCTAssertEqual(try m.load(UInt16.self, at: Self.data + 0x140), 0x037F)
    }

    func testCMPXCHG16BIsAtomicAndChecksAlignment() throws {
        let m = emu.memory
        try m.store(UInt64(1), at: Self.data); try m.store(UInt64(2), at: Self.data + 8)
        // lock cmpxchg16b [rdi] with rdx:rax = 2:1, rcx:rbx = 4:3
        let insn: [UInt8] = [0xF0, 0x48, 0x0F, 0xC7, 0x0F]
        XCTAssertNil(try run(insn, regs: [7: Self.data, 0: 1, 2: 2, 3: 3, 1: 4]))
        XCTAssertEqual(try m.load(UInt64.self, at: Self.data), 3)
        XCTAssertEqual(try m.load(UInt64.self, at: Self.data + 8), 4)
        XCTAssertNotEqual(cpu.st.pointee.currentRFlags() & RFlags.zf, 0)
        XCTAssertNil(try run(insn, regs: [7: Self.data, 0: 1, 2: 2, 3: 5, 1: 6]))
        XCTAssertEqual(cpu.gpr[0], 3); XCTAssertEqual(cpu.gpr[2], 4)
        XCTAssertEqual(cpu.st.pointee.currentRFlags() & RFlags.zf, 0)
        XCTAssertEqual(try run(insn, regs: [7: Self.data + 8]), 13, "16-byte alignment")
        let (_, _, _, edx) = CPUIDModel.keel().query(1, 0)
        XCTAssertEqual(edx & (1 | 1 << 24 | 1 << 25 | 1 << 26), 1 | 1 << 24 | 1 << 25 | 1 << 26, "fpu, fxsr, sse, sse2")
    }

    /// x87 status flags as the host CPU sets them (DifferentialKVMTests): PE and C1 ("rounded
    /// up") for 1/3, IE for FCOMI with a quiet NaN but not for FUCOMI, DE for a denormal load.
    func testX87ExceptionFlagsAndRoundedUp() throws {
        let data = Self.data
        try emu.memory.store(Double(3).bitPattern, at: data)
        try emu.memory.store(UInt64(0x7FF8_0000_0000_0000), at: data + 8)  // quiet NaN
        try emu.memory.store(UInt64(1), at: data + 16)                       // smallest denormal
        // fninit; fld1; fld qword [rbx]; fdivp; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xE8, 0xDD, 0x03, 0xDE, 0xF9, 0xDF, 0xE0], regs: [3: data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0x20, "PE only")
        XCTAssertEqual(cpu.gpr[0] & 0x200, 0x200, "C1: 1/3 rounded up in the 64-bit significand")
        // fninit; fldz; fld qword [rbx+8]; fcomi st, st(1); fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xEE, 0xDD, 0x43, 0x08, 0xDB, 0xF1, 0xDF, 0xE0], regs: [3: data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0x01, "FCOMI with a QNaN: IE")
        // fninit; fldz; fld qword [rbx+8]; fucomi st, st(1); fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xEE, 0xDD, 0x43, 0x08, 0xDB, 0xE9, 0xDF, 0xE0], regs: [3: data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0, "FUCOMI with a QNaN: no exception")
        // fninit; fld qword [rbx+16]; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xDD, 0x43, 0x10, 0xDF, 0xE0], regs: [3: data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0x02, "a denormal double load: DE")
        // fninit; fld1; fabs; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xE8, 0xD9, 0xE1, 0xDF, 0xE0], regs: [3: data]))
        XCTAssertEqual(cpu.gpr[0] & 0x200, 0, "FABS clears C1")
    }
}
