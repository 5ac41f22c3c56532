import XCTest
@testable import TCG

/// MMX system behaviour against the SDM (Vol. 1 §9.5-9.6, Vol. 2 MMX instruction pages): the
/// CR0.EM/TS and pending-x87-exception faults, the x87 aliasing (TOP, tags, bits 79:64), EMMS,
/// MASKMOVQ, and CPUID advertising MMX.
extension FPUSystemTests {
    func testMMXFaultsFollowCR0AndPendingX87Exceptions() throws {
        let pxor: [UInt8] = [0x0F, 0xEF, 0xC0], emms: [UInt8] = [0x0F, 0x77]
        let cvtpi2ps: [UInt8] = [0x0F, 0x2A, 0xC1], movq2dq: [UInt8] = [0xF3, 0x0F, 0xD6, 0xC1]
        XCTAssertNil(try run(pxor))
        cpu.st.pointee.cr4 &= ~CR4.osfxsr
        XCTAssertNil(try run(pxor), "MMX does not need CR4.OSFXSR")
        XCTAssertEqual(try run(cvtpi2ps), 6, "an SSE instruction on MMX registers does")
        cpu.st.pointee.cr4 |= CR4.osfxsr
        cpu.st.pointee.cr0 |= CR0.em
        XCTAssertEqual(try run(pxor), 6, "CR0.EM: #UD (x87 would be #NM)")
        XCTAssertEqual(try run(emms), 6)
        XCTAssertEqual(try run(movq2dq), 6)
        cpu.st.pointee.cr0 &= ~CR0.em
        cpu.st.pointee.cr0 |= CR0.ts
        XCTAssertEqual(try run(pxor), 7, "CR0.TS: #NM")
        XCTAssertEqual(try run(emms), 7)
        XCTAssertEqual(try run(cvtpi2ps), 7)
        cpu.st.pointee.cr0 &= ~CR0.ts

        // An unmasked invalid-operation flag waits for the next MMX instruction: #MF with CR0.NE.
        cpu.st.pointee.cr0 |= CR0.ne
        cpu.fpu.pointee.fsw = FSW.ie; cpu.fpu.pointee.fcw = 0x037E
        XCTAssertEqual(try run(pxor), 16)
        XCTAssertEqual(try run(emms), 16)
        XCTAssertEqual(try run(movq2dq), 16)
        cpu.fpu.pointee.fcw = 0x037F
        XCTAssertNil(try run(pxor), "the same flag masked is not pending")
        cpu.fpu.pointee.fcw = 0x037E
        cpu.st.pointee.cr0 &= ~CR0.ne
        XCTAssertEqual(try run(pxor), 16, "without CR0.NE too (the FERR# path is not modelled)")
        cpu.fpu.pointee.fsw = 0
    }

    func testUnmaskedX87ExceptionIsPendingUntilTheNextWaitingInstruction() throws {
        cpu.st.pointee.cr0 |= CR0.ne
        try emu.memory.store(UInt16(0x037B), at: Self.data)  // ZE unmasked
        // fninit; fldcw [rbx]; fld1; fldz; fdivp; fnstsw ax (non-waiting: no #MF, ES and B set)
        let divide: [UInt8] = [0xDB, 0xE3, 0xD9, 0x2B, 0xD9, 0xE8, 0xD9, 0xEE, 0xDE, 0xF9, 0xDF, 0xE0]
        XCTAssertNil(try run(divide, regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x80BF, 0x8084, "ZE with ES and B")
        XCTAssertEqual(try run(divide + [0x9B], regs: [3: Self.data]), 16, "FWAIT takes the pending #MF")
        XCTAssertEqual(try run(divide + [0xD9, 0xE8], regs: [3: Self.data]), 16, "so does the next x87 instruction")
        XCTAssertEqual(try run(divide + [0x0F, 0x6F, 0xC1], regs: [3: Self.data]), 16, "and an MMX instruction")
        // fnclex clears the flag: nothing pending; fninit too.
        XCTAssertNil(try run(divide + [0xDB, 0xE2, 0x9B, 0xD9, 0xE8, 0x0F, 0x77], regs: [3: Self.data]))
        XCTAssertNil(try run(divide + [0xDB, 0xE3, 0x9B], regs: [3: Self.data]))
    }

    func testMMXAliasesTheX87RegistersAndTagWord() throws {
        let m = emu.memory, base = Self.data
        // fninit; fld1; movq mm1, rax; fxsave [rdi]; fnstenv [rsi]
        let code: [UInt8] = [0xDB, 0xE3, 0xD9, 0xE8, 0x48, 0x0F, 0x6E, 0xC8, 0x0F, 0xAE, 0x07, 0xD9, 0x36]
        XCTAssertNil(try run(code, regs: [0: 0x0123_4567_89AB_CDEF, 7: base, 6: base + 0x400]))
        XCTAssertEqual(try m.load(UInt16.self, at: base + 2) & 0x3800, 0, "TOP is 0 after an MMX instruction")
        XCTAssertEqual(try m.load(UInt8.self, at: base + 4), 0xFF, "every register tagged valid")
        XCTAssertEqual(try m.load(UInt64.self, at: base + 32 + 16), 0x0123_4567_89AB_CDEF, "MM1 is R1 = ST(1)")
        XCTAssertEqual(try m.load(UInt16.self, at: base + 32 + 16 + 8), 0xFFFF, "bits 79:64 all ones")
        XCTAssertEqual(try m.load(UInt64.self, at: base + 32 + 7 * 16), 0x8000_0000_0000_0000, "R7 still holds 1.0")
        XCTAssertEqual(try m.load(UInt16.self, at: base + 32 + 7 * 16 + 8), 0x3FFF)
        // Full tag word from the contents: R1 special (exponent all ones), R7 valid, the rest zero.
        XCTAssertEqual(try m.load(UInt16.self, at: base + 0x408), 0x1559)

        // movd ecx, mm1 reads the low half (and is itself an MMX instruction); emms empties the tags.
        XCTAssertNil(try run([0x0F, 0x7E, 0xC9, 0x0F, 0x77, 0xD9, 0x36], regs: [1: ~0, 6: base + 0x400]))
        XCTAssertEqual(cpu.gpr[1], 0x89AB_CDEF)
        XCTAssertEqual(try m.load(UInt16.self, at: base + 0x408), 0xFFFF, "EMMS: all empty")
        XCTAssertEqual(cpu.fpu.pointee.ftw, 0)

        // fld1 after an MMX instruction without EMMS: R7 is valid, so the push overflows (IE, SF).
        XCTAssertNil(try run([0xDB, 0xE3, 0x0F, 0xEF, 0xC0, 0xD9, 0xE8, 0xDF, 0xE0]))
        XCTAssertEqual(cpu.gpr[0] & 0x41, 0x41, "stack fault")
    }

    func testMASKMOVQStoresTheSelectedBytesAtRDI() throws {
        let m = emu.memory, base = Self.data + 0x800
        try m.write([UInt8](repeating: 0xEE, count: 16), at: base)
        // movq mm0, rax; movq mm1, rcx; maskmovq mm0, mm1 (mask: bytes 0, 3, 6 and 7)
        let code: [UInt8] = [0x48, 0x0F, 0x6E, 0xC0, 0x48, 0x0F, 0x6E, 0xC9, 0x0F, 0xF7, 0xC1]
        XCTAssertNil(try run(code, regs: [0: 0x8877_6655_4433_2211, 1: 0x80FF_7F00_8000_0080, 7: base]))
        XCTAssertEqual(try (0..<9).map { try m.load(UInt8.self, at: base + UInt64($0)) },
                       [0x11, 0xEE, 0xEE, 0x44, 0xEE, 0xEE, 0x77, 0x88, 0xEE])
        // An all-zero mask touches nothing, not even an unmapped rdi.
        XCTAssertNil(try run(code, regs: [0: 1, 1: 0x7F7F_7F7F_7F7F_7F7F, 7: 0x1_0000_0000_0000]))
        XCTAssertEqual(try run(code, regs: [0: 1, 1: 0x80, 7: 0x1_0000_0000_0000]), 13, "non-canonical rdi")
    }

    func testCPUIDAdvertisesMMX() {
        let model = CPUIDModel.keel()
        let (_, _, _, edx) = model.query(1, 0)
        XCTAssertNotEqual(edx & CPUIDModel.Feature.mmx, 0, "CPUID.1:EDX.MMX[bit 23]")
        // x86-64 baseline (glibc's ld.so): CMOV CX8 FPU FXSR MMX SSE SSE2 in leaf 1, SYSCALL and LM in 0x80000001.
        let baseline: UInt32 = 1 << 15 | 1 << 8 | 1 | 1 << 24 | 1 << 23 | 1 << 25 | 1 << 26
        XCTAssertEqual(edx & baseline, baseline)
        let (_, _, _, ext) = model.query(0x8000_0001, 0)
        XCTAssertEqual(ext & (1 << 11 | 1 << 29), 1 << 11 | 1 << 29)
        XCTAssertNotEqual(ext & CPUIDModel.Feature.mmx, 0, "mirrored in 0x80000001 like the leaf's other leaf-1 bits")
    }
}
