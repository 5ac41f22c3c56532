/// MMX (SDM Vol. 1 ch. 9) and the SSE/SSE2 instructions on MMX registers. MM0-7 are the low 64
/// bits of the x87 physical registers R0-R7 (§9.5): every MMX instruction but EMMS sets TOP to 0
/// and tags all registers valid; a write sets bits 79:64 of the register to all ones. The
/// arithmetic is PackedInteger's, on a 64-bit operand in the low lane.
extension X86CPU {
    /// An unmasked x87 exception waits in FSW for the next waiting x87 or MMX instruction
    /// (SDM Vol. 1 §8.6): any exception flag whose FCW mask bit is clear.
    var x87ExceptionPending: Bool { fpu.pointee.fsw & ~fpu.pointee.fcw & 0x3F != 0 }

    /// FSW as FNSTSW, FNSTENV and FXSAVE show it: ES (and B, which mirrors it) summarise the
    /// pending exceptions.
    var reportedFSW: UInt16 {
        (fpu.pointee.fsw & ~(FSW.es | 0x8000)) | (x87ExceptionPending ? FSW.es | 0x8000 : 0)
    }

    /// #MF for a pending x87 exception. With CR0.NE clear a PC would signal FERR# to the
    /// interrupt controller instead; that path is not modelled, so #MF is raised either way.
    @inline(__always) func checkPendingX87() throws(X86Exception) {
        if x87ExceptionPending { throw X86Exception(X86Exception.x87) }
    }

    /// MMX instructions (SDM Vol. 2, the MMX instruction pages): CR0.EM #UD, CR0.TS #NM, then a
    /// pending x87 exception #MF.
    @inline(__always) func checkMMX() throws(X86Exception) {
        let cr0 = st.pointee.cr0
        if cr0 & CR0.em != 0 { throw X86Exception.ud }
        if cr0 & CR0.ts != 0 { throw X86Exception(X86Exception.deviceNotAvailable) }
        try checkPendingX87()
    }

    /// The x87-to-MMX transition (SDM Vol. 1 Table 9-2): TOP 0, all tags valid.
    @inline(__always) func enterMMX() {
        fpu.pointee.fsw &= ~FSW.top
        fpu.pointee.ftw = 0xFF
    }

    @inline(__always) func mm(_ r: UInt8) -> UInt64 {
        (x87Slots + Int(r & 7) &* 16).loadUnaligned(as: UInt64.self)
    }

    @inline(__always) func setMM(_ r: UInt8, _ v: UInt64) {
        let p = x87Slots + Int(r & 7) &* 16
        p.storeBytes(of: v, as: UInt64.self)
        p.storeBytes(of: 0xFFFF, toByteOffset: 8, as: UInt64.self)
    }

    /// The mm/m64 source operand.
    @inline(__always) func mmSource(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) -> UInt64 {
        i.pointee.isMem ? try readLinear(linearAddress(i), 3) : mm(i.pointee.rm)
    }

    func executeMMX(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let op = i.pointee.sub
        let p = UInt8(truncatingIfNeeded: i.pointee.imm2)
        if p != 0 || op == 0x2A || op == 0x2C || op == 0x2D {
            // SSE/SSE2 instructions with an MMX operand: the SSE checks, then #MF.
            try checkSSE()
            try checkPendingX87()
            try mmxWithXMM(i, op, p)
            return
        }
        try checkMMX()
        if op == 0x77 {
            fpu.pointee.ftw = 0
            return
        }
        let d = i.pointee.reg
        switch op {
        case 0x6E:
            // MOVD/MOVQ mm, r/m32 or r/m64 (zero-extended).
            let v = try readRM(i, i.pointee.prefixes & Prefix.rexW != 0 ? 3 : 2)
            enterMMX(); setMM(d, v)
        case 0x7E:
            let wide = i.pointee.prefixes & Prefix.rexW != 0
            let v = mm(d)
            try writeRM(i, wide ? 3 : 2, wide ? v : v & 0xFFFF_FFFF)
            enterMMX()
        case 0x6F:
            let v = try mmSource(i)
            enterMMX(); setMM(d, v)
        case 0x7F, 0xE7:
            if i.pointee.isMem { try writeLinear(linearAddress(i), 3, mm(d)) } else { setMM(i.pointee.rm, mm(d)) }
            enterMMX()
        case 0x70:
            let v = try mmSource(i)
            enterMMX()
            setMM(d, PackedInteger.shuffle(3, UInt8(truncatingIfNeeded: i.pointee.imm), SIMD2(v, 0))[0])
        case 0x71, 0x72, 0x73:
            let ext = UInt8(truncatingIfNeeded: i.pointee.imm2 >> 8), r = i.pointee.rm
            enterMMX()
            setMM(r, PackedInteger.shiftImmediate(op, ext, i.pointee.imm & 0xFF, SIMD2(mm(r), 0))[0])
        case 0xC4:
            // PINSRW mm, r32/m16, imm8.
            let w = try readRM(i, 1), shift = (i.pointee.imm & 3) * 16
            enterMMX()
            setMM(d, (mm(d) & ~(0xFFFF << shift)) | (w << shift))
        case 0xC5:
            enterMMX()
            setReg(d, 2, (mm(i.pointee.rm) >> ((i.pointee.imm & 3) * 16)) & 0xFFFF)
        case 0xD7:
            enterMMX()
            setReg(d, 2, UInt64(PackedInteger.moveMask(SIMD2(mm(i.pointee.rm), 0)) & 0xFF))
        case 0xF7:
            try maskedStore(i, data: SIMD2(mm(d), 0), mask: SIMD2(mm(i.pointee.rm), 0), bytes: 8)
            enterMMX()
        case 0x60, 0x61, 0x62:
            // PUNPCKL*: the source is mm/m32.
            let b = i.pointee.isMem ? try readLinear(linearAddress(i), 2) : mm(i.pointee.rm)
            enterMMX()
            setMM(d, Self.mmxBinary(op, mm(d), b))
        case 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3:
            let count = try mmSource(i)
            enterMMX()
            setMM(d, PackedInteger.shiftByCount(op, count, SIMD2(mm(d), 0))[0])
        default:
            let b = try mmSource(i)
            enterMMX()
            setMM(d, Self.mmxBinary(op, mm(d), b))
        }
    }

    /// A packed-integer operation on 64-bit operands through the 128-bit one: lane-wise
    /// operations use the low lane; packs saturate both operands' lanes into one result; the
    /// high unpacks interleave the upper halves.
    static func mmxBinary(_ op: UInt8, _ a: UInt64, _ b: UInt64) -> UInt64 {
        switch op {
        case 0x63, 0x67, 0x6B: return PackedInteger.binary(op, SIMD2(a, b), SIMD2())[0]
        case 0x68, 0x69, 0x6A: return PackedInteger.binary(op - 8, SIMD2(a >> 32, 0), SIMD2(b >> 32, 0))[0]
        default: return PackedInteger.binary(op, SIMD2(a, 0), SIMD2(b, 0))[0]
        }
    }

    /// MASKMOVQ / MASKMOVDQU: the bytes of `data` whose `mask` byte has its top bit set go to
    /// DS:rDI (segment overridable); both ends of the selected span are checked first so a fault
    /// stores nothing.
    func maskedStore(_ i: UnsafeMutablePointer<Instruction>, data: SIMD2<UInt64>, mask: SIMD2<UInt64>, bytes: Int) throws(X86Exception) {
        let la = addressOf(gpr[Int(Reg.rdi)], seg: i.pointee.seg, addrSize: i.pointee.addrSize)
        // Alignment checking applies whatever the mask, to 8 bytes for both forms (measured:
        // MASKMOVDQU at an 8-aligned rDI does not fault).
        if st.pointee.alignmentCheck { try checkAlignment(la, 8) }
        var first = -1, last = -1
        for k in 0..<bytes where (mask[k >> 3] >> UInt64((k & 7) * 8 + 7)) & 1 != 0 {
            if first < 0 { first = k }
            last = k
        }
        guard first >= 0 else { return }
        _ = try translate(la &+ UInt64(first), .write)
        _ = try translate(la &+ UInt64(last), .write)
        for k in first...last where (mask[k >> 3] >> UInt64((k & 7) * 8 + 7)) & 1 != 0 {
            try writeLinear(la &+ UInt64(k), 0, (data[k >> 3] >> UInt64((k & 7) * 8)) & 0xFF)
        }
    }

    /// A double to int32 as CVT(T)PS2PI/CVT(T)PD2PI do, with MXCSR's IE for NaN or out of range
    /// (the integer indefinite results) and PE for an inexact conversion.
    func convertToInt32(_ x: Double, _ rule: FloatingPointRoundingRule) -> UInt64 {
        let r = x.rounded(rule)
        if r.isNaN || r >= 0x1p31 || r < -0x1p31 {
            fpu.pointee.mxcsr |= 0x01
        } else if r != x {
            fpu.pointee.mxcsr |= 0x20
        }
        return Self.toInteger(x, rule, bits64: false)
    }

    /// MOVQ2DQ, MOVDQ2Q and the conversions between MMX integers and packed singles/doubles.
    func mmxWithXMM(_ i: UnsafeMutablePointer<Instruction>, _ op: UInt8, _ p: UInt8) throws(X86Exception) {
        let d = i.pointee.reg, mem = i.pointee.isMem
        switch (op, p) {
        case (0xD6, 2):
            enterMMX(); setXMM(d, SIMD2(mm(i.pointee.rm), 0))
        case (0xD6, _):
            enterMMX(); setMM(d, xmm(i.pointee.rm)[0])
        case (0x2A, _):
            // CVTPI2PS (low quadword of xmm, the high one kept) / CVTPI2PD.
            let v = try mmSource(i)
            // Only an MMX register source leaves x87 mode (measured on this host, an AMD Zen, by
            // MMXDifferentialTests; the SDM's pages say both forms do).
            if !mem { enterMMX() }
            let lo = Int32(truncatingIfNeeded: v), hi = Int32(truncatingIfNeeded: v >> 32)
            if p == 0 {
                let a = Self.single(Int64(lo), mxcsrRounding), b = Self.single(Int64(hi), mxcsrRounding)
                // PE when a 32-bit integer has more significant bits than a single holds.
                if Double(a) != Double(lo) || Double(b) != Double(hi) { fpu.pointee.mxcsr |= 0x20 }
                setXMMLow(d, UInt64(a.bitPattern) | UInt64(b.bitPattern) << 32)
            } else {
                setXMM(d, SIMD2(Double(lo).bitPattern, Double(hi).bitPattern))
            }
        default:
            // CVT(T)PS2PI mm, xmm/m64 and CVT(T)PD2PI mm, xmm/m128 (aligned).
            let rule: FloatingPointRoundingRule = op == 0x2C ? .towardZero : mxcsrRounding
            let a: Double, b: Double
            if p == 0 {
                let v = try sseSourceLow(i, 3)
                a = Double(Float(bitPattern: UInt32(truncatingIfNeeded: v)))
                b = Double(Float(bitPattern: UInt32(truncatingIfNeeded: v >> 32)))
            } else {
                let v = try sseSource(i)
                a = Double(bitPattern: v[0]); b = Double(bitPattern: v[1])
            }
            enterMMX()
            setMM(d, convertToInt32(a, rule) | convertToInt32(b, rule) << 32)
        }
    }
}
