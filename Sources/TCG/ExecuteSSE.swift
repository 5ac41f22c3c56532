/// SSE/SSE2 moves, conversions and floating point (SDM Vol. 1 ch. 10-11, Vol. 2 instruction
/// pages). MXCSR rounding control applies to conversions; floating-point exception flags are not
/// accumulated and SIMD exceptions are never raised (all masked, as after reset).
extension X86CPU {
    /// CR0.EM or !CR4.OSFXSR: #UD; CR0.TS: #NM (SDM Vol. 3 §13.1.3, Table 2-20).
    @inline(__always) func checkSSE() throws(X86Exception) {
        let s = st
        if s.pointee.cr0 & CR0.em != 0 || s.pointee.cr4 & CR4.osfxsr == 0 { throw X86Exception.ud }
        if s.pointee.cr0 & CR0.ts != 0 { throw X86Exception(X86Exception.deviceNotAvailable) }
    }

    func read128(_ la: UInt64, aligned: Bool) throws(X86Exception) -> SIMD2<UInt64> {
        if aligned && la & 15 != 0 { throw X86Exception.gp(0) }
        // #AC takes the whole 16 bytes' alignment (measured with MOVDQU), not the halves'.
        if st.pointee.alignmentCheck { try checkAlignment(la, 16) }
        return SIMD2(try readLinear(la, 3), try readLinear(la &+ 8, 3))
    }

    func write128(_ la: UInt64, _ v: SIMD2<UInt64>, aligned: Bool) throws(X86Exception) {
        if aligned && la & 15 != 0 { throw X86Exception.gp(0) }
        if st.pointee.alignmentCheck { try checkAlignment(la, 16) }
        // Both pages are checked first so a fault leaves memory unchanged.
        if la & 0xFFF > 0xFF0 { _ = try translate(la, .write); _ = try translate(la &+ 15, .write) }
        try writeLinear(la, 3, v[0])
        try writeLinear(la &+ 8, 3, v[1])
    }

    /// The xmm/m128 source operand (legacy SSE requires 16-byte alignment unless stated).
    @inline(__always) func sseSource(_ i: UnsafeMutablePointer<Instruction>, aligned: Bool = true) throws(X86Exception) -> SIMD2<UInt64> {
        if i.pointee.isMem { return try read128(linearAddress(i), aligned: aligned) }
        return xmm(i.pointee.rm)
    }

    /// The low 64 (or 32) bits of an xmm/m64 (m32) source, unaligned.
    @inline(__always) func sseSourceLow(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8) throws(X86Exception) -> UInt64 {
        if i.pointee.isMem { return try readLinear(linearAddress(i), size) }
        let v = xmmWords[Int(i.pointee.rm & 15) &* 2]
        return size == 3 ? v : v & 0xFFFF_FFFF
    }

    @inline(__always) func sseStore(_ i: UnsafeMutablePointer<Instruction>, _ v: SIMD2<UInt64>, aligned: Bool) throws(X86Exception) {
        if i.pointee.isMem { try write128(linearAddress(i), v, aligned: aligned) } else { setXMM(i.pointee.rm, v) }
    }

    var mxcsrRounding: FloatingPointRoundingRule {
        switch (fpu.pointee.mxcsr >> 13) & 3 {
        case 0: return .toNearestOrEven
        case 1: return .down
        case 2: return .up
        default: return .towardZero
        }
    }

    /// An integer as a single (or a double, inexact only beyond 2^53) under MXCSR.RC: Swift's
    /// conversion rounds to nearest; when that went the wrong way for the rule, the neighbour on
    /// the other side is the answer (an inexact result is a whole number, so the comparison with
    /// `n` is exact).
    static func fromInteger<F: BinaryFloatingPoint>(_ n: Int64, _ rule: FloatingPointRoundingRule) -> F {
        let f = F(n)
        guard rule != .toNearestOrEven else { return f }
        // f is at most 2^63 (Int64.max rounded up), the one value Int64 cannot hold.
        let top = F(sign: .plus, exponent: 63, significand: 1)
        let above = f == top || Int64(f) > n
        let below = f != top && Int64(f) < n
        switch rule {
        case .down: return above ? f.nextDown : f
        case .up: return below ? f.nextUp : f
        default: return n > 0 && above ? f.nextDown : (n < 0 && below ? f.nextUp : f)
        }
    }

    static func single(_ n: Int64, _ rule: FloatingPointRoundingRule) -> Float { fromInteger(n, rule) }
    static func double(_ n: Int64, _ rule: FloatingPointRoundingRule) -> Double { fromInteger(n, rule) }

    func executeSSE(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        try checkSSE()
        let op = i.pointee.sub
        let p = UInt8(truncatingIfNeeded: i.pointee.imm2)
        let d = i.pointee.reg
        let mem = i.pointee.isMem
        switch op {
        case 0x10:
            switch p {
            case 0, 1: setXMM(d, try sseSource(i, aligned: false))
            case 2:
                let v = try sseSourceLow(i, 2)
                if mem { setXMM(d, SIMD2(v, 0)) } else { setXMMLow(d, (xmm(d)[0] & ~0xFFFF_FFFF) | v) }
            default:
                let v = try sseSourceLow(i, 3)
                if mem { setXMM(d, SIMD2(v, 0)) } else { setXMMLow(d, v) }
            }
        case 0x11:
            let v = xmm(d)
            switch p {
            case 0, 1: try sseStore(i, v, aligned: false)
            case 2:
                if mem { try writeLinear(linearAddress(i), 2, v[0]) }
                else { setXMMLow(i.pointee.rm, (xmm(i.pointee.rm)[0] & ~0xFFFF_FFFF) | (v[0] & 0xFFFF_FFFF)) }
            default:
                if mem { try writeLinear(linearAddress(i), 3, v[0]) } else { setXMMLow(i.pointee.rm, v[0]) }
            }
        case 0x12:
            // MOVLPS/MOVLPD m64, or MOVHLPS from a register.
            let v = mem ? try readLinear(linearAddress(i), 3) : xmm(i.pointee.rm)[1]
            setXMMLow(d, v)
        case 0x13: try writeLinear(linearAddress(i), 3, xmm(d)[0])
        case 0x16:
            // MOVHPS/MOVHPD m64, or MOVLHPS from a register.
            let v = mem ? try readLinear(linearAddress(i), 3) : xmm(i.pointee.rm)[0]
            xmmWords[Int(d & 15) &* 2 &+ 1] = v
        case 0x17: try writeLinear(linearAddress(i), 3, xmm(d)[1])
        case 0x14, 0x15:
            let a = xmm(d), b = try sseSource(i)
            let high = op == 0x15
            if p == 1 {
                setXMM(d, high ? SIMD2(a[1], b[1]) : SIMD2(a[0], b[0]))
            } else {
                let x = high ? a[1] : a[0], y = high ? b[1] : b[0]
                setXMM(d, SIMD2((x & 0xFFFF_FFFF) | (y << 32), (x >> 32) | (y & ~0xFFFF_FFFF)))
            }
        case 0x28: setXMM(d, try sseSource(i))
        case 0x29, 0x2B, 0xE7: try sseStore(i, xmm(d), aligned: true)
        case 0x6F: setXMM(d, try sseSource(i, aligned: p == 1))
        case 0x7F: try sseStore(i, xmm(d), aligned: p == 1)
        case 0x6E:
            // MOVD/MOVQ xmm, r/m32 or r/m64.
            let size: UInt8 = i.pointee.prefixes & Prefix.rexW != 0 ? 3 : 2
            setXMM(d, SIMD2(try readRM(i, size), 0))
        case 0x7E:
            if p == 2 {
                setXMM(d, SIMD2(try sseSourceLow(i, 3), 0))
            } else {
                let size: UInt8 = i.pointee.prefixes & Prefix.rexW != 0 ? 3 : 2
                try writeRM(i, size, size == 3 ? xmm(d)[0] : xmm(d)[0] & 0xFFFF_FFFF)
            }
        case 0xD6:
            if mem { try writeLinear(linearAddress(i), 3, xmm(d)[0]) } else { setXMM(i.pointee.rm, SIMD2(xmm(d)[0], 0)) }
        case 0x50:
            let v = xmm(i.pointee.rm)
            let m: UInt64 = p == 1
                ? (v[0] >> 63) | ((v[1] >> 63) << 1)
                : ((v[0] >> 31) & 1) | ((v[0] >> 62) & 2) | (((v[1] >> 31) & 1) << 2) | (((v[1] >> 63) & 1) << 3)
            setReg(d, 2, m)
        case 0x54, 0x55, 0x56, 0x57:
            let a = xmm(d), b = try sseSource(i)
            switch op {
            case 0x54: setXMM(d, a & b)
            case 0x55: setXMM(d, ~a & b)
            case 0x56: setXMM(d, a | b)
            default: setXMM(d, a ^ b)
            }
        case 0x51, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F:
            try floatArithmetic(i, op, p)
        case 0xC2:
            try floatCompare(i, p)
        case 0x2E, 0x2F:
            let a = xmm(d)[0]
            let b = try sseSourceLow(i, p == 1 ? 3 : 2)
            let lt: Bool, eq: Bool, unordered: Bool
            if p == 1 {
                let x = Double(bitPattern: a), y = Double(bitPattern: b)
                unordered = x.isNaN || y.isNaN; lt = x < y; eq = x == y
            } else {
                let x = Float(bitPattern: UInt32(truncatingIfNeeded: a)), y = Float(bitPattern: UInt32(truncatingIfNeeded: b))
                unordered = x.isNaN || y.isNaN; lt = x < y; eq = x == y
            }
            let f: UInt64 = unordered ? RFlags.zf | RFlags.pf | RFlags.cf : (lt ? RFlags.cf : (eq ? RFlags.zf : 0))
            st.pointee.setStatusFlags(f)
        case 0xC6:
            let a = xmm(d), b = try sseSource(i), imm = i.pointee.imm
            if p == 1 {
                setXMM(d, SIMD2(a[Int(imm & 1)], b[Int((imm >> 1) & 1)]))
            } else {
                let x = unsafeBitCast(a, to: SIMD4<UInt32>.self), y = unsafeBitCast(b, to: SIMD4<UInt32>.self)
                let r = SIMD4<UInt32>(x[Int(imm & 3)], x[Int((imm >> 2) & 3)], y[Int((imm >> 4) & 3)], y[Int((imm >> 6) & 3)])
                setXMM(d, unsafeBitCast(r, to: SIMD2<UInt64>.self))
            }
        case 0x2A, 0x2C, 0x2D, 0x5A, 0x5B, 0xE6:
            try convert(i, op, p)
        case 0xC4:
            let w = try readRM(i, 1), k = UInt64(i.pointee.imm & 7)
            let q = Int(k >> 2), shift = (k & 3) * 16
            let p64 = xmmWords + (Int(d & 15) &* 2 &+ q)
            p64.pointee = (p64.pointee & ~(0xFFFF << shift)) | (w << shift)
        case 0xC5:
            let k = UInt64(i.pointee.imm & 7)
            setReg(d, 2, (xmm(i.pointee.rm)[Int(k >> 2)] >> ((k & 3) * 16)) & 0xFFFF)
        case 0xD7:
            setReg(d, 2, UInt64(PackedInteger.moveMask(xmm(i.pointee.rm))))
        case 0xF7:
            try maskedStore(i, data: xmm(d), mask: xmm(i.pointee.rm), bytes: 16)
        case 0x70:
            setXMM(d, PackedInteger.shuffle(p, UInt8(truncatingIfNeeded: i.pointee.imm), try sseSource(i)))
        case 0x71, 0x72, 0x73:
            let ext = UInt8(truncatingIfNeeded: i.pointee.imm2 >> 8)
            let r = i.pointee.rm
            setXMM(r, PackedInteger.shiftImmediate(op, ext, i.pointee.imm & 0xFF, xmm(r)))
        case 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3:
            let count = try sseSource(i)
            setXMM(d, PackedInteger.shiftByCount(op, count[0], xmm(d)))
        default:
            setXMM(d, PackedInteger.binary(op, xmm(d), try sseSource(i)))
        }
    }

    /// The packed (ps/pd) forms of SQRT, ADD, MUL, SUB, MIN, DIV, MAX on `a` (destination) and
    /// `b` (source). MIN/MAX return the source unless the comparison holds, as the SDM says (so a
    /// NaN in either operand, or two zeros, give the source).
    @inline(__always)
    static func packedArithmetic<V: SIMD>(_ op: UInt8, _ a: V, _ b: V) -> V where V.Scalar: BinaryFloatingPoint {
        switch op {
        case 0x51: return b.squareRoot()
        case 0x58: return a + b
        case 0x59: return a * b
        case 0x5C: return a - b
        case 0x5D: return b.replacing(with: a, where: a .< b)
        case 0x5E: return a / b
        default: return b.replacing(with: a, where: a .> b)
        }
    }

    /// SQRT, ADD, MUL, SUB, MIN, DIV, MAX in the ps, pd, ss and sd forms.
    func floatArithmetic(_ i: UnsafeMutablePointer<Instruction>, _ op: UInt8, _ p: UInt8) throws(X86Exception) {
        let d = i.pointee.reg
        switch p {
        case 0:
            let r = Self.packedArithmetic(op, unsafeBitCast(xmm(d), to: SIMD4<Float>.self),
                                          unsafeBitCast(try sseSource(i), to: SIMD4<Float>.self))
            setXMM(d, unsafeBitCast(r, to: SIMD2<UInt64>.self))
        case 1:
            let r = Self.packedArithmetic(op, unsafeBitCast(xmm(d), to: SIMD2<Double>.self),
                                          unsafeBitCast(try sseSource(i), to: SIMD2<Double>.self))
            setXMM(d, unsafeBitCast(r, to: SIMD2<UInt64>.self))
        case 2:
            let old = xmm(d)[0]
            let a = Float(bitPattern: UInt32(truncatingIfNeeded: old))
            let b = Float(bitPattern: UInt32(truncatingIfNeeded: try sseSourceLow(i, 2)))
            let r = Self.scalar(op, a, b)
            setXMMLow(d, (old & ~0xFFFF_FFFF) | UInt64(r.bitPattern))
        default:
            let a = Double(bitPattern: xmm(d)[0])
            let b = Double(bitPattern: try sseSourceLow(i, 3))
            setXMMLow(d, Self.scalar(op, a, b).bitPattern)
        }
    }

    @inline(__always) static func scalar<F: BinaryFloatingPoint>(_ op: UInt8, _ a: F, _ b: F) -> F {
        switch op {
        case 0x51: return b.squareRoot()
        case 0x58: return a + b
        case 0x59: return a * b
        case 0x5C: return a - b
        case 0x5D: return a < b ? a : b
        case 0x5E: return a / b
        default: return a > b ? a : b
        }
    }

    /// CMPPS/CMPPD/CMPSS/CMPSD with predicates 0-7 (EQ LT LE UNORD NEQ NLT NLE ORD).
    func floatCompare(_ i: UnsafeMutablePointer<Instruction>, _ p: UInt8) throws(X86Exception) {
        let d = i.pointee.reg, pred = UInt8(truncatingIfNeeded: i.pointee.imm & 7)
        func test<F: BinaryFloatingPoint>(_ a: F, _ b: F) -> Bool {
            switch pred {
            case 0: return a == b
            case 1: return a < b
            case 2: return a <= b
            case 3: return a.isNaN || b.isNaN
            case 4: return !(a == b)
            case 5: return !(a < b)
            case 6: return !(a <= b)
            default: return !a.isNaN && !b.isNaN
            }
        }
        switch p {
        case 0:
            let a = unsafeBitCast(xmm(d), to: SIMD4<UInt32>.self), b = unsafeBitCast(try sseSource(i), to: SIMD4<UInt32>.self)
            var r = SIMD4<UInt32>()
            for k in 0..<4 where test(Float(bitPattern: a[k]), Float(bitPattern: b[k])) { r[k] = ~0 }
            setXMM(d, unsafeBitCast(r, to: SIMD2<UInt64>.self))
        case 1:
            let a = xmm(d), b = try sseSource(i)
            var r = SIMD2<UInt64>()
            for k in 0..<2 where test(Double(bitPattern: a[k]), Double(bitPattern: b[k])) { r[k] = ~0 }
            setXMM(d, r)
        case 2:
            let old = xmm(d)[0]
            let ok = test(Float(bitPattern: UInt32(truncatingIfNeeded: old)), Float(bitPattern: UInt32(truncatingIfNeeded: try sseSourceLow(i, 2))))
            setXMMLow(d, (old & ~0xFFFF_FFFF) | (ok ? 0xFFFF_FFFF : 0))
        default:
            let ok = test(Double(bitPattern: xmm(d)[0]), Double(bitPattern: try sseSourceLow(i, 3)))
            setXMMLow(d, ok ? ~0 : 0)
        }
    }

    /// A double to a 32- or 64-bit integer; out of range or NaN gives the integer indefinite.
    @inline(__always) static func toInteger(_ x: Double, _ rule: FloatingPointRoundingRule, bits64: Bool) -> UInt64 {
        let r = x.rounded(rule)
        if bits64 {
            if r.isNaN || r >= 0x1p63 || r < -0x1p63 { return 0x8000_0000_0000_0000 }
            return UInt64(bitPattern: Int64(r))
        }
        if r.isNaN || r >= 0x1p31 || r < -0x1p31 { return 0x8000_0000 }
        return UInt64(UInt32(bitPattern: Int32(r)))
    }

    func convert(_ i: UnsafeMutablePointer<Instruction>, _ op: UInt8, _ p: UInt8) throws(X86Exception) {
        let d = i.pointee.reg
        let wide = i.pointee.prefixes & Prefix.rexW != 0
        switch op {
        case 0x2A:
            // CVTSI2SS/SD xmm, r/m32 or r/m64.
            let v = try readRM(i, wide ? 3 : 2)
            let n = wide ? Int64(bitPattern: v) : Int64(Int32(truncatingIfNeeded: v))
            if p == 2 {
                setXMMLow(d, (xmm(d)[0] & ~0xFFFF_FFFF) | UInt64(Self.single(n, mxcsrRounding).bitPattern))
            } else {
                setXMMLow(d, Self.double(n, mxcsrRounding).bitPattern)
            }
        case 0x2C, 0x2D:
            let rule: FloatingPointRoundingRule = op == 0x2C ? .towardZero : mxcsrRounding
            let x: Double = p == 2
                ? Double(Float(bitPattern: UInt32(truncatingIfNeeded: try sseSourceLow(i, 2))))
                : Double(bitPattern: try sseSourceLow(i, 3))
            setReg(d, wide ? 3 : 2, Self.toInteger(x, rule, bits64: wide))
        case 0x5A:
            switch p {
            case 0:
                let v = try sseSourceLow(i, 3)
                let a = Double(Float(bitPattern: UInt32(truncatingIfNeeded: v))), b = Double(Float(bitPattern: UInt32(truncatingIfNeeded: v >> 32)))
                setXMM(d, SIMD2(a.bitPattern, b.bitPattern))
            case 1:
                let v = try sseSource(i)
                let a = Float(Double(bitPattern: v[0])), b = Float(Double(bitPattern: v[1]))
                setXMM(d, SIMD2(UInt64(a.bitPattern) | (UInt64(b.bitPattern) << 32), 0))
            case 2:
                let v = try sseSourceLow(i, 2)
                setXMMLow(d, Double(Float(bitPattern: UInt32(truncatingIfNeeded: v))).bitPattern)
            default:
                let v = try sseSourceLow(i, 3)
                setXMMLow(d, (xmm(d)[0] & ~0xFFFF_FFFF) | UInt64(Float(Double(bitPattern: v)).bitPattern))
            }
        case 0x5B:
            let v = unsafeBitCast(try sseSource(i), to: SIMD4<UInt32>.self)
            var r = SIMD4<UInt32>()
            for k in 0..<4 {
                if p == 0 {
                    r[k] = Self.single(Int64(Int32(bitPattern: v[k])), mxcsrRounding).bitPattern
                } else {
                    let x = Double(Float(bitPattern: v[k]))
                    r[k] = UInt32(truncatingIfNeeded: Self.toInteger(x, p == 2 ? .towardZero : mxcsrRounding, bits64: false))
                }
            }
            setXMM(d, unsafeBitCast(r, to: SIMD2<UInt64>.self))
        default:
            // 0xE6: CVTTPD2DQ (66), CVTDQ2PD (F3), CVTPD2DQ (F2).
            if p == 2 {
                let v = try sseSourceLow(i, 3)
                let a = Double(Int32(truncatingIfNeeded: v)), b = Double(Int32(truncatingIfNeeded: v >> 32))
                setXMM(d, SIMD2(a.bitPattern, b.bitPattern))
            } else {
                let v = try sseSource(i)
                let rule: FloatingPointRoundingRule = p == 1 ? .towardZero : mxcsrRounding
                let a = Self.toInteger(Double(bitPattern: v[0]), rule, bits64: false)
                let b = Self.toInteger(Double(bitPattern: v[1]), rule, bits64: false)
                setXMM(d, SIMD2(a | (b << 32), 0))
            }
        }
    }
}
