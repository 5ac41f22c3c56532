/// Integer arithmetic and logic with exact flags (SDM Vol. 2; undefined flags as AMD Zen leaves them).
extension X86CPU {
    /// One of the eight classic ALU operations; returns the result (the caller skips the store for cmp).
    @inline(__always) func alu(_ op: UInt8, _ a: UInt64, _ b: UInt64, _ size: UInt8) -> UInt64 {
        st.pointee.aluResult(op, a, b, size)
    }

    @inline(__always) func incDec(_ v: UInt64, _ size: UInt8, dec: Bool) -> UInt64 {
        st.pointee.incDecResult(v, size, dec: dec)
    }

    /// Status flags from a result: ZF, SF, PF (the caller adds CF, OF, AF).
    @inline(__always) func szp(_ r: UInt64, _ size: UInt8) -> UInt64 {
        var f = parityFlag(r)
        if r & sizeMask(size) == 0 { f |= RFlags.zf }
        if r & signBit(size) != 0 { f |= RFlags.sf }
        return f
    }

    /// Shift and rotate group 2 (SDM Vol. 2 SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR).
    func shift(_ op: UInt8, _ v: UInt64, _ rawCount: UInt64, _ size: UInt8) -> UInt64 {
        let s = st
        let bits = UInt64(8) << UInt64(size)
        let count = rawCount & (size == 3 ? 63 : 31)
        let m = sizeMask(size), sign = signBit(size)
        if count == 0 { return v }
        // Shifts replace every status flag: only rotates read (and keep some of) the old ones,
        // so only they pay for materializing the lazy flags.
        var f: UInt64 = 0, cf0: UInt64 = 0
        if op & 7 < 4 {
            cf0 = s.pointee.carryFlag ? 1 : 0
            f = s.pointee.statusFlags()
        }
        switch op & 7 {
        case 0: // ROL
            let c = count % bits
            let r = c == 0 ? v : ((v << c) | (v >> (bits - c))) & m
            let cf = r & 1
            f = (f & ~(RFlags.cf | RFlags.of)) | cf | ((((r & sign) != 0 ? 1 : 0) ^ cf) != 0 ? RFlags.of : 0)
            s.pointee.setStatusFlags(f); return r
        case 1: // ROR
            let c = count % bits
            let r = c == 0 ? v : ((v >> c) | (v << (bits - c))) & m
            let msb: UInt64 = r & sign != 0 ? 1 : 0
            let msb2: UInt64 = r & (sign >> 1) != 0 ? 1 : 0
            f = (f & ~(RFlags.cf | RFlags.of)) | msb | ((msb ^ msb2) != 0 ? RFlags.of : 0)
            s.pointee.setStatusFlags(f); return r
        case 2: // RCL
            // A count that is a multiple of size+1 leaves the value and CF but still sets OF (AMD).
            let c = size < 2 ? count % (bits + 1) : count
            var r = v, cf = cf0
            for _ in 0..<c {
                let out: UInt64 = r & sign != 0 ? 1 : 0
                r = ((r << 1) | cf) & m
                cf = out
            }
            let msb: UInt64 = r & sign != 0 ? 1 : 0
            f = (f & ~(RFlags.cf | RFlags.of)) | cf | ((msb ^ cf) != 0 ? RFlags.of : 0)
            s.pointee.setStatusFlags(f); return r
        case 3: // RCR
            // A count that is a multiple of size+1 leaves the value and CF but still sets OF (AMD).
            let c = size < 2 ? count % (bits + 1) : count
            var r = v, cf = cf0
            for _ in 0..<c {
                let out = r & 1
                r = (r >> 1) | (cf != 0 ? sign : 0)
                cf = out
            }
            let msb: UInt64 = r & sign != 0 ? 1 : 0
            let msb2: UInt64 = r & (sign >> 1) != 0 ? 1 : 0
            f = (f & ~(RFlags.cf | RFlags.of)) | cf | ((msb ^ msb2) != 0 ? RFlags.of : 0)
            s.pointee.setStatusFlags(f); return r
        case 4, 6: // SHL/SAL
            let r = count >= bits ? 0 : (v << count) & m
            let cf: UInt64 = count > bits ? 0 : ((v >> (bits - count)) & 1)
            let of: UInt64 = ((r & sign != 0 ? 1 : 0) ^ cf) != 0 ? RFlags.of : 0
            f = szp(r, size) | cf | of | RFlags.af
            s.pointee.setStatusFlags(f); return r
        case 5: // SHR
            let r = count >= bits ? 0 : v >> count
            let cf: UInt64 = count > bits ? 0 : ((v >> (count - 1)) & 1)
            let of: UInt64 = (count == 1 ? (v & sign != 0) : false) ? RFlags.of : 0
            f = szp(r, size) | cf | of | RFlags.af
            s.pointee.setStatusFlags(f); return r
        default: // SAR
            let sv = signExtend(v, size)
            let c = count >= bits ? bits - 1 : count
            let r = UInt64(bitPattern: sv >> Int64(c)) & m
            let cf = UInt64(bitPattern: sv >> Int64(min(count - 1, 63))) & 1
            f = szp(r, size) | cf | RFlags.af
            s.pointee.setStatusFlags(f); return r
        }
    }

    /// SHLD/SHRD (SDM Vol. 2): count masked to 5 or 6 bits. A 16-bit count above 16 leaves the
    /// result and flags undefined; this host (AMD Zen) shifts through a third copy of the source
    /// (dst:src:src left, src:src:dst right) and then clears CF, and clears OF on SHLD — measured
    /// against the host CPU by DifferentialKVMTests.
    func doubleShift(left: Bool, _ dst: UInt64, _ src: UInt64, _ rawCount: UInt64, _ size: UInt8) -> UInt64 {
        let bits = UInt64(8) << UInt64(size)
        let count = rawCount & (size == 3 ? 63 : 31)
        if count == 0 { return dst }
        let m = sizeMask(size), sign = signBit(size)
        var r: UInt64, cf: UInt64
        if size == 1 {
            if left {
                let wide = (dst << 32) | (src << 16) | src
                r = (wide << count) >> 32 & 0xFFFF
                cf = count <= 16 ? (wide >> (48 - count)) & 1 : 0
            } else {
                let wide = dst | (src << 16) | (src << 32)
                r = (wide >> count) & 0xFFFF
                cf = count <= 16 ? (wide >> (count - 1)) & 1 : 0
            }
        } else if left {
            r = ((dst << count) | (src >> (bits - count))) & m
            cf = (dst >> (bits - count)) & 1
        } else {
            r = ((dst >> count) | (src << (bits - count))) & m
            cf = (dst >> (count - 1)) & 1
        }
        // OF as AMD Zen computes it for every count: SHLD MSB(r) ^ CF, SHRD MSB(r) ^ MSB-1(r).
        let msb: UInt64 = r & sign != 0 ? 1 : 0
        let other: UInt64 = left ? cf : (r & (sign >> 1) != 0 ? 1 : 0)
        var of: UInt64 = msb ^ other != 0 ? RFlags.of : 0
        if size == 1 && left && count == 16 { of = cf != 0 ? RFlags.of : 0 }  // measured on Zen
        if size == 1 && left && count > 16 { of = 0 }
        st.pointee.setStatusFlags(szp(r, size) | cf | of | RFlags.af)
        return r
    }

    /// MUL/IMUL one-operand forms: rDX:rAX (or AX) = rAX * src.
    func multiply(_ src: UInt64, _ size: UInt8, signed: Bool) {
        let a = reg(Reg.rax, size)
        var lo: UInt64, hi: UInt64, overflow: Bool
        switch size {
        case 3:
            if signed {
                let p = Int64(bitPattern: a).multipliedFullWidth(by: Int64(bitPattern: src))
                lo = p.low; hi = UInt64(bitPattern: p.high)
                overflow = Int64(bitPattern: lo) >> 63 != p.high
            } else {
                let p = a.multipliedFullWidth(by: src)
                lo = p.low; hi = p.high
                overflow = hi != 0
            }
        default:
            let bits = UInt64(8) << UInt64(size)
            if signed {
                let p = signExtend(a, size) &* signExtend(src, size)
                lo = UInt64(bitPattern: p) & sizeMask(size)
                hi = UInt64(bitPattern: p >> Int64(bits)) & sizeMask(size)
                overflow = signExtend(lo, size) != p
            } else {
                let p = a &* src
                lo = p & sizeMask(size); hi = p >> bits
                overflow = hi != 0
            }
        }
        if size == 0 { setReg(Reg.rax, 1, (hi << 8) | lo) } else { setReg(Reg.rax, size, lo); setReg(Reg.rdx, size, hi) }
        st.pointee.setStatusFlags(mulFlags(lo, size, overflow))
    }

    /// Flags after a multiply: CF = OF = overflow; SF, ZF, AF, PF (undefined) are left
    /// unchanged, as AMD Zen does.
    @inline(__always) func mulFlags(_ lo: UInt64, _ size: UInt8, _ overflow: Bool) -> UInt64 {
        var f = st.pointee.statusFlags() & ~(RFlags.cf | RFlags.of)
        if overflow { f |= RFlags.cf | RFlags.of }
        return f
    }

    /// IMUL two/three-operand forms.
    func imul2(_ a: UInt64, _ b: UInt64, _ size: UInt8) -> UInt64 {
        st.pointee.imulResult(a, b, size)
    }

    /// DIV/IDIV: #DE on a zero divisor or a quotient that does not fit.
    func divide(_ src: UInt64, _ size: UInt8, signed: Bool) throws(X86Exception) {
        guard src != 0 else { throw X86Exception.de }
        try divideValues(src, size, signed: signed)
        // Flags are undefined; AMD Zen leaves CF and OF, sets AF and clears the rest.
        let cf = st.pointee.statusFlags() & (RFlags.cf | RFlags.of)
        st.pointee.setStatusFlags(cf | RFlags.af)
    }

    func divideValues(_ src: UInt64, _ size: UInt8, signed: Bool) throws(X86Exception) {
        let m = sizeMask(size)
        if size == 3 {
            let lo = gpr[0], hi = gpr[2]
            if signed {
                let d = Int64(bitPattern: src)
                let negative = Int64(bitPattern: hi) < 0
                // |dividend| as 128-bit unsigned.
                var (ulo, uhi) = (lo, hi)
                if negative { ulo = ~lo &+ 1; uhi = ~hi &+ (ulo == 0 ? 1 : 0) }
                let ud = d < 0 ? UInt64(bitPattern: 0 &- d) : UInt64(d)
                guard uhi < ud else { throw X86Exception.de }
                let (q, r) = ud.dividingFullWidth((high: uhi, low: ulo))
                let qNeg = negative != (d < 0)
                if qNeg { guard q <= UInt64(1) << 63 else { throw X86Exception.de } } else { guard q < UInt64(1) << 63 else { throw X86Exception.de } }
                gpr[0] = qNeg ? 0 &- q : q
                gpr[2] = negative ? 0 &- r : r
            } else {
                guard hi < src else { throw X86Exception.de }
                let (q, r) = src.dividingFullWidth((high: hi, low: lo))
                gpr[0] = q; gpr[2] = r
            }
        } else {
            let bits = UInt64(8) << UInt64(size)
            let dividend: UInt64 = size == 0 ? reg(Reg.rax, 1) : (reg(Reg.rdx, size) << bits) | reg(Reg.rax, size)
            var q: UInt64, r: UInt64
            if signed {
                let n = size == 0 ? Int64(Int16(truncatingIfNeeded: dividend)) : signExtend(dividend, size + 1)
                let d = signExtend(src, size)
                let sq = n / d, sr = n % d
                guard signExtend(UInt64(bitPattern: sq) & m, size) == sq else { throw X86Exception.de }
                q = UInt64(bitPattern: sq) & m; r = UInt64(bitPattern: sr) & m
            } else {
                q = dividend / src; r = dividend % src
                guard q <= m else { throw X86Exception.de }
            }
            if size == 0 { setReg(Reg.rax, 1, (r << 8) | q) } else { setReg(Reg.rax, size, q); setReg(Reg.rdx, size, r) }
        }
    }

    /// BSF/BSR/TZCNT/LZCNT/POPCNT.
    func bitScan(_ op: Op, _ v: UInt64, _ size: UInt8, dst: UInt8) {
        let bits = UInt64(8) << UInt64(size)
        let s = st
        switch op {
        case .bsf, .bsr:
            // Undefined flags as AMD Zen leaves them: PF from the result (set for a zero source), CF OF SF AF clear.
            if v == 0 {
                s.pointee.setStatusFlags(RFlags.zf | RFlags.pf)  // destination unchanged (AMD documents this)
                return
            }
            let r = op == .bsf ? UInt64(v.trailingZeroBitCount) : UInt64(63 - v.leadingZeroBitCount)
            setReg(dst, size, r)
            s.pointee.setStatusFlags(parityFlag(r))
        case .tzcnt:
            let r = v == 0 ? bits : UInt64(v.trailingZeroBitCount)
            setReg(dst, size, r)
            s.pointee.setStatusFlags((s.pointee.statusFlags() & RFlags.of) | (v == 0 ? RFlags.cf : 0) | (r == 0 ? RFlags.zf : 0))
        case .lzcnt:
            let r = v == 0 ? bits : UInt64(v.leadingZeroBitCount) - (64 - bits)
            setReg(dst, size, r)
            // OF is left unchanged on AMD Zen (undefined in the SDM).
            s.pointee.setStatusFlags((s.pointee.statusFlags() & RFlags.of) | (v == 0 ? RFlags.cf : 0) | (r == 0 ? RFlags.zf : 0))
        default:
            let r = UInt64(v.nonzeroBitCount)
            setReg(dst, size, r)
            s.pointee.setStatusFlags(v == 0 ? RFlags.zf : 0)
        }
    }
}
