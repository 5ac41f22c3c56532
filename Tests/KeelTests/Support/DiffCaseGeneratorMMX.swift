import Foundation

/// MMX cases for the diff-runner: MM0-7 loaded from general registers or the data region, MMX
/// and SSE-era MMX-register instructions with register and memory operands, and the x87
/// interplay around them (pushes before, EMMS, FNSTENV, FLD after, a pending unmasked exception
/// loaded by FLDENV), so the driver's FXSAVE compares TOP, the tag word and the registers.
extension DiffCaseGenerator {
    /// Two-operand MMX opcodes (0F xx /r, mm, mm/m64).
    static let mmxBinary: [UInt8] = Array(0x60...0x6B) + [0x74, 0x75, 0x76, 0xD4, 0xD5] + Array(0xD8...0xE5)
        + Array(0xE8...0xEF) + [0xF1, 0xF2, 0xF3, 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF4, 0xF5, 0xF6] + Array(0xF8...0xFE)

    /// An MMX register number; sometimes 8-15, whose REX.R/REX.B the CPU ignores for mm operands.
    mutating func mmReg() -> Int { rng.below(8) | (rng.chance(10) ? 8 : 0) }

    mutating func mmSource(_ x: Context) -> X86Operand { rng.chance(3) ? mem(x) : .reg(mmReg()) }

    /// The address a memory operand of the case names (base + index * scale + disp).
    func address(_ x: Context, _ m: X86Operand) -> UInt64? {
        guard case .mem(let b, let i, let sc, let d, false) = m else { return nil }
        return x.c.regs[b ?? 0] &+ (i.map { x.c.regs[$0] &* UInt64(sc) } ?? 0) &+ UInt64(bitPattern: Int64(d))
    }

    /// One MMX-register instruction.
    mutating func mmxInstruction(_ x: inout Context) -> [UInt8] {
        if x.c.xmm == nil { x.c.xmm = (0..<16).flatMap { _ in le(value(), 8) + le(value(), 8) } }
        let imm = [UInt8(truncatingIfNeeded: rng.next())]
        switch rng.below(16) {
        case 0...5:
            return X86Encoder.encode(opcode: [0x0F, rng.pick(Self.mmxBinary)], reg: mmReg(), rm: mmSource(x))
        case 6:  // shifts by immediate: groups 12-14
            let (op, ext) = rng.pick([(0x71, 2), (0x71, 4), (0x71, 6), (0x72, 2), (0x72, 4), (0x72, 6), (0x73, 2), (0x73, 6)] as [(UInt8, Int)])
            return X86Encoder.encode(opcode: [0x0F, op], reg: ext, rm: .reg(mmReg()), imm: [UInt8(rng.below(rng.chance(3) ? 256 : 20))])
        case 7:  // movd/movq mm, r/m32/64 and back
            if rng.chance(2) {
                return X86Encoder.encode(rexW: rng.chance(2), opcode: [0x0F, 0x6E], reg: mmReg(), rm: rng.chance(2) ? .reg(anyReg()) : mem(x))
            }
            return X86Encoder.encode(rexW: rng.chance(2), opcode: [0x0F, 0x7E], reg: mmReg(), rm: rng.chance(2) ? .reg(dst(x)) : mem(x))
        case 8:  // movq mm, mm/m64; movq mm/m64, mm; movntq m64, mm
            switch rng.below(3) {
            case 0: return X86Encoder.encode(opcode: [0x0F, 0x6F], reg: mmReg(), rm: mmSource(x))
            case 1: return X86Encoder.encode(opcode: [0x0F, 0x7F], reg: mmReg(), rm: mmSource(x))
            default: return X86Encoder.encode(opcode: [0x0F, 0xE7], reg: mmReg(), rm: mem(x))
            }
        case 9:  // pshufw, pinsrw, pextrw, pmovmskb
            switch rng.below(4) {
            case 0: return X86Encoder.encode(opcode: [0x0F, 0x70], reg: mmReg(), rm: mmSource(x), imm: imm)
            case 1: return X86Encoder.encode(opcode: [0x0F, 0xC4], reg: mmReg(), rm: rng.chance(2) ? .reg(anyReg()) : mem(x), imm: imm)
            case 2: return X86Encoder.encode(opcode: [0x0F, 0xC5], reg: dst(x), rm: .reg(mmReg()), imm: imm)
            default: return X86Encoder.encode(opcode: [0x0F, 0xD7], reg: dst(x), rm: .reg(mmReg()))
            }
        case 10:  // maskmovq to [rdi] (and maskmovdqu, its xmm sibling)
            if x.reserved.contains(7) { return X86Encoder.encode(opcode: [0x0F, 0xEF], reg: mmReg(), rm: .reg(mmReg())) }
            let rdi = DiffCase.dataBase + 0x1000 + UInt64(rng.below(0x800))
            let load: [UInt8] = [0x48, 0xC7, 0xC7] + le(rdi, 4)  // mov rdi, imm32: an earlier instruction may have moved rdi
            if rng.chance(4) {
                return load + X86Encoder.encode(opcode: [0x0F, 0xF7], reg: rng.below(16), rm: .reg(rng.below(16)), legacyAfter: [0x66])
            }
            return load + X86Encoder.encode(opcode: [0x0F, 0xF7], reg: mmReg(), rm: .reg(mmReg()))
        case 11:  // movq2dq xmm, mm; movdq2q mm, xmm
            if rng.chance(2) { return X86Encoder.encode(opcode: [0x0F, 0xD6], reg: rng.below(16), rm: .reg(mmReg()), legacyAfter: [0xF3]) }
            return X86Encoder.encode(opcode: [0x0F, 0xD6], reg: mmReg(), rm: .reg(rng.below(16)), legacyAfter: [0xF2])
        case 12:  // cvtpi2ps / cvtpi2pd xmm, mm/m64
            return X86Encoder.encode(opcode: [0x0F, 0x2A], reg: rng.below(16), rm: mmSource(x), legacyAfter: rng.chance(2) ? [0x66] : [])
        case 13:  // cvt(t)ps2pi mm, xmm/m64; cvt(t)pd2pi mm, xmm/m128
            let pd = rng.chance(2)
            let src: X86Operand = rng.chance(3) ? mem(x, aligned: pd ? 16 : 1) : .reg(rng.below(16))
            return X86Encoder.encode(opcode: [0x0F, rng.chance(2) ? 0x2C : 0x2D], reg: mmReg(), rm: src, legacyAfter: pd ? [0x66] : [])
        default:
            return X86Encoder.encode(opcode: [0x0F, rng.pick(Self.mmxBinary)], reg: mmReg(), rm: .reg(mmReg()))
        }
    }

    mutating func mmx(_ x: inout Context) -> [UInt8] {
        var code: [UInt8] = []
        // Before: x87 values on the stack (TOP != 0, some tags valid), or an environment with a
        // pending unmasked exception (the first MMX instruction then raises #MF).
        switch rng.below(6) {
        case 0, 1:
            for _ in 0..<(1 + rng.below(3)) { code += [0xD9, rng.pick([0xE8, 0xEE, 0xEB] as [UInt8])] }  // fld1, fldz, fldpi
        case 2:
            let m = mem(x)
            if let a = address(x, m) {
                let pending = rng.chance(2)
                // 28-byte protected-mode environment: FCW (IE unmasked or not), FSW with IE (and
                // ES, B when unmasked), tag word all empty, the pointers zero.
                let env = le(pending ? 0x037E : 0x037F, 4) + le(pending ? 0x8081 : 0x0001, 4) + le(0xFFFF, 4) + [UInt8](repeating: 0, count: 16)
                x.c.patches.append((Int(a &- DiffCase.dataBase), env))
                code += X86Encoder.encode(opcode: [0xD9], reg: 4, rm: m)  // fldenv
            }
        default: break
        }
        // Load a few MMX registers from general registers or memory.
        for _ in 0..<(1 + rng.below(3)) {
            code += rng.chance(2) ? X86Encoder.encode(rexW: true, opcode: [0x0F, 0x6E], reg: mmReg(), rm: .reg(anyReg()))
                : X86Encoder.encode(opcode: [0x0F, 0x6F], reg: mmReg(), rm: mem(x))
        }
        for _ in 0..<(1 + rng.below(3)) { code += mmxInstruction(&x) }
        // After: leave the MMX state for the driver's FXSAVE, or EMMS, or look at it with x87.
        switch rng.below(7) {
        case 0: code += [0x0F, 0x77]
        case 1: code += [0x0F, 0x77, 0xD9, 0xE8]                                   // emms; fld1
        case 2: code += [0xD9, 0xE8]                                               // fld1 onto valid tags: overflow
        case 3:  // fnstenv: the full tag word
            let m = mem(x)
            code += X86Encoder.encode(opcode: [0xD9], reg: 6, rm: m)
            if case .mem(let b, let i, let sc, let d, let rip) = m {
                // Then clear the image's FCS and FDS: PVM runs guest ring 3 with the host's
                // selectors (CS 0x33, DS 0; the guest's are 0x2b, 0x23), so they differ by
                // construction.
                for field: Int32 in [16, 24] {
                    code += X86Encoder.encode(size: .w16, opcode: [0xC7], reg: 0, rm: .mem(base: b, index: i, scale: sc, disp: d + field, ripRelative: rip), imm: [0, 0])
                }
            }
        case 4: if !x.reserved.contains(0) { code += [0xDF, 0xE0] }                // fnstsw ax
        default: break
        }
        return code
    }
}
