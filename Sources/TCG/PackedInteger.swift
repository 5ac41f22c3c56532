/// SSE2 packed-integer operations on 128-bit values (SDM Vol. 2: PADD*, PSUB*, PCMP*, PUNPCK*,
/// PACK*, PMIN/PMAX, PAVG, PMUL*, PSADBW, shifts, PSHUF*). Pure functions of the operands, keyed
/// by the 0F-map opcode byte, so tests can call them directly.
enum PackedInteger {
    typealias V = SIMD2<UInt64>

    @inline(__always) static func u8(_ v: V) -> SIMD16<UInt8> { unsafeBitCast(v, to: SIMD16<UInt8>.self) }
    @inline(__always) static func i8(_ v: V) -> SIMD16<Int8> { unsafeBitCast(v, to: SIMD16<Int8>.self) }
    @inline(__always) static func u16(_ v: V) -> SIMD8<UInt16> { unsafeBitCast(v, to: SIMD8<UInt16>.self) }
    @inline(__always) static func i16(_ v: V) -> SIMD8<Int16> { unsafeBitCast(v, to: SIMD8<Int16>.self) }
    @inline(__always) static func u32(_ v: V) -> SIMD4<UInt32> { unsafeBitCast(v, to: SIMD4<UInt32>.self) }
    @inline(__always) static func i32(_ v: V) -> SIMD4<Int32> { unsafeBitCast(v, to: SIMD4<Int32>.self) }
    @inline(__always) static func q<T: SIMD>(_ v: T) -> V { unsafeBitCast(v, to: V.self) }

    /// All-ones lanes where `m` holds.
    @inline(__always) static func mask<T: SIMD>(_ m: SIMDMask<T.MaskStorage>, _: T.Type) -> V where T.Scalar: FixedWidthInteger {
        q(T(repeating: 0).replacing(with: T(repeating: ~0), where: m))
    }

    @inline(__always) static func signedSaturate8(_ w: SIMD16<Int16>) -> SIMD16<Int8> {
        SIMD16<Int8>(truncatingIfNeeded: w.clamped(lowerBound: SIMD16(repeating: -128), upperBound: SIMD16(repeating: 127)))
    }

    @inline(__always) static func signedSaturate16(_ w: SIMD8<Int32>) -> SIMD8<Int16> {
        SIMD8<Int16>(truncatingIfNeeded: w.clamped(lowerBound: SIMD8(repeating: -32768), upperBound: SIMD8(repeating: 32767)))
    }

    /// Interleaves the low (or high) halves of `a` and `b` in units of `bytes`.
    static func unpack(_ a: V, _ b: V, bytes: Int, high: Bool) -> V {
        let x = u8(a), y = u8(b)
        var r = SIMD16<UInt8>()
        let start = high ? 8 : 0
        var k = 0
        while k < 16 {
            let unit = start + (k / (2 * bytes)) * bytes
            for j in 0..<bytes {
                r[k + j] = x[unit + j]
                r[k + bytes + j] = y[unit + j]
            }
            k += 2 * bytes
        }
        return q(r)
    }

    static func binary(_ op: UInt8, _ a: V, _ b: V) -> V {
        switch op {
        case 0x60: return unpack(a, b, bytes: 1, high: false)
        case 0x61: return unpack(a, b, bytes: 2, high: false)
        case 0x62: return unpack(a, b, bytes: 4, high: false)
        case 0x6C: return V(a[0], b[0])
        case 0x68: return unpack(a, b, bytes: 1, high: true)
        case 0x69: return unpack(a, b, bytes: 2, high: true)
        case 0x6A: return unpack(a, b, bytes: 4, high: true)
        case 0x6D: return V(a[1], b[1])
        case 0x63:
            return q(signedSaturate8(SIMD16<Int16>(lowHalf: i16(a), highHalf: i16(b))))
        case 0x67:
            let w = SIMD16<Int16>(lowHalf: i16(a), highHalf: i16(b))
            return q(SIMD16<UInt8>(truncatingIfNeeded: w.clamped(lowerBound: SIMD16(repeating: 0), upperBound: SIMD16(repeating: 255))))
        case 0x6B:
            return q(signedSaturate16(SIMD8(lowHalf: i32(a), highHalf: i32(b))))
        case 0x64: return mask(i8(a) .> i8(b), SIMD16<Int8>.self)
        case 0x65: return mask(i16(a) .> i16(b), SIMD8<Int16>.self)
        case 0x66: return mask(i32(a) .> i32(b), SIMD4<Int32>.self)
        case 0x74: return mask(u8(a) .== u8(b), SIMD16<UInt8>.self)
        case 0x75: return mask(u16(a) .== u16(b), SIMD8<UInt16>.self)
        case 0x76: return mask(u32(a) .== u32(b), SIMD4<UInt32>.self)
        case 0xD4: return a &+ b
        case 0xFB: return a &- b
        case 0xFC: return q(u8(a) &+ u8(b))
        case 0xFD: return q(u16(a) &+ u16(b))
        case 0xFE: return q(u32(a) &+ u32(b))
        case 0xF8: return q(u8(a) &- u8(b))
        case 0xF9: return q(u16(a) &- u16(b))
        case 0xFA: return q(u32(a) &- u32(b))
        case 0xD5: return q(u16(a) &* u16(b))
        case 0xD8:
            let x = u8(a), y = u8(b)
            return q((x &- y).replacing(with: 0, where: x .< y))
        case 0xD9:
            let x = u16(a), y = u16(b)
            return q((x &- y).replacing(with: 0, where: x .< y))
        case 0xDC:
            let s = u8(a) &+ u8(b)
            return q(s.replacing(with: 0xFF, where: s .< u8(a)))
        case 0xDD:
            let s = u16(a) &+ u16(b)
            return q(s.replacing(with: 0xFFFF, where: s .< u16(a)))
        case 0xE8: return q(signedSaturate8(SIMD16<Int16>(truncatingIfNeeded: i8(a)) &- SIMD16<Int16>(truncatingIfNeeded: i8(b))))
        case 0xEC: return q(signedSaturate8(SIMD16<Int16>(truncatingIfNeeded: i8(a)) &+ SIMD16<Int16>(truncatingIfNeeded: i8(b))))
        case 0xE9: return q(signedSaturate16(SIMD8<Int32>(truncatingIfNeeded: i16(a)) &- SIMD8<Int32>(truncatingIfNeeded: i16(b))))
        case 0xED: return q(signedSaturate16(SIMD8<Int32>(truncatingIfNeeded: i16(a)) &+ SIMD8<Int32>(truncatingIfNeeded: i16(b))))
        case 0xDA: return q(pointwiseMin(u8(a), u8(b)))
        case 0xDE: return q(pointwiseMax(u8(a), u8(b)))
        case 0xEA: return q(pointwiseMin(i16(a), i16(b)))
        case 0xEE: return q(pointwiseMax(i16(a), i16(b)))
        case 0xDB: return a & b
        case 0xDF: return ~a & b
        case 0xEB: return a | b
        case 0xEF: return a ^ b
        case 0xE0:
            let s = SIMD16<UInt16>(truncatingIfNeeded: u8(a)) &+ SIMD16<UInt16>(truncatingIfNeeded: u8(b)) &+ 1
            return q(SIMD16<UInt8>(truncatingIfNeeded: s &>> 1))
        case 0xE3:
            let s = SIMD8<UInt32>(truncatingIfNeeded: u16(a)) &+ SIMD8<UInt32>(truncatingIfNeeded: u16(b)) &+ 1
            return q(SIMD8<UInt16>(truncatingIfNeeded: s &>> 1))
        case 0xE4:
            let p = SIMD8<UInt32>(truncatingIfNeeded: u16(a)) &* SIMD8<UInt32>(truncatingIfNeeded: u16(b))
            return q(SIMD8<UInt16>(truncatingIfNeeded: p &>> 16))
        case 0xE5:
            let p = SIMD8<Int32>(truncatingIfNeeded: i16(a)) &* SIMD8<Int32>(truncatingIfNeeded: i16(b))
            return q(SIMD8<Int16>(truncatingIfNeeded: p &>> 16))
        case 0xF4:
            return V((a[0] & 0xFFFF_FFFF) &* (b[0] & 0xFFFF_FFFF), (a[1] & 0xFFFF_FFFF) &* (b[1] & 0xFFFF_FFFF))
        case 0xF5:
            let p = SIMD8<Int32>(truncatingIfNeeded: i16(a)) &* SIMD8<Int32>(truncatingIfNeeded: i16(b))
            let r = SIMD4<Int32>(p[0] &+ p[1], p[2] &+ p[3], p[4] &+ p[5], p[6] &+ p[7])
            return q(r)
        case 0xF6:
            let x = u8(a), y = u8(b)
            let diff = pointwiseMax(x, y) &- pointwiseMin(x, y)
            var lo: UInt64 = 0, hi: UInt64 = 0
            for k in 0..<8 { lo &+= UInt64(diff[k]); hi &+= UInt64(diff[k + 8]) }
            return V(lo, hi)
        default:
            return a
        }
    }

    /// PSRLW/D/Q, PSRAW/D, PSLLW/D/Q by a 64-bit count (from xmm/m128).
    static func shiftByCount(_ op: UInt8, _ count: UInt64, _ a: V) -> V {
        switch op {
        case 0xD1: return count > 15 ? V() : q(u16(a) &>> UInt16(count))
        case 0xD2: return count > 31 ? V() : q(u32(a) &>> UInt32(count))
        case 0xD3: return count > 63 ? V() : a &>> count
        case 0xE1: return q(i16(a) &>> Int16(min(count, 15)))
        case 0xE2: return q(i32(a) &>> Int32(min(count, 31)))
        case 0xF1: return count > 15 ? V() : q(u16(a) &<< UInt16(count))
        case 0xF2: return count > 31 ? V() : q(u32(a) &<< UInt32(count))
        default: return count > 63 ? V() : a &<< count
        }
    }

    /// Groups 12-14 (0F 71-73 /ext ib): word, dword, qword shifts and the PSRLDQ/PSLLDQ byte shifts.
    static func shiftImmediate(_ group: UInt8, _ ext: UInt8, _ imm: UInt64, _ a: V) -> V {
        switch (group, ext) {
        case (0x71, 2): return shiftByCount(0xD1, imm, a)
        case (0x71, 4): return shiftByCount(0xE1, imm, a)
        case (0x71, 6): return shiftByCount(0xF1, imm, a)
        case (0x72, 2): return shiftByCount(0xD2, imm, a)
        case (0x72, 4): return shiftByCount(0xE2, imm, a)
        case (0x72, 6): return shiftByCount(0xF2, imm, a)
        case (0x73, 2): return shiftByCount(0xD3, imm, a)
        case (0x73, 6): return shiftByCount(0xF3, imm, a)
        default:
            let n = imm > 15 ? 16 : Int(imm)
            let v = UInt128(a[1]) << 64 | UInt128(a[0])
            let r = n == 16 ? 0 : (ext == 3 ? v >> (n * 8) : v << (n * 8))
            return V(UInt64(truncatingIfNeeded: r), UInt64(truncatingIfNeeded: r >> 64))
        }
    }

    /// PSHUFD (66), PSHUFHW (F3), PSHUFLW (F2).
    static func shuffle(_ prefix: UInt8, _ imm: UInt8, _ b: V) -> V {
        let sel = (Int(imm & 3), Int((imm >> 2) & 3), Int((imm >> 4) & 3), Int((imm >> 6) & 3))
        switch prefix {
        case 1:
            let x = u32(b)
            return q(SIMD4<UInt32>(x[sel.0], x[sel.1], x[sel.2], x[sel.3]))
        case 2:
            let x = u16(b)
            return q(SIMD8<UInt16>(x[0], x[1], x[2], x[3], x[4 + sel.0], x[4 + sel.1], x[4 + sel.2], x[4 + sel.3]))
        default:
            let x = u16(b)
            return q(SIMD8<UInt16>(x[sel.0], x[sel.1], x[sel.2], x[sel.3], x[4], x[5], x[6], x[7]))
        }
    }

    /// PMOVMSKB: the top bit of each byte.
    static func moveMask(_ a: V) -> UInt32 {
        var m: UInt32 = 0
        for k in 0..<8 {
            m |= UInt32((a[0] >> UInt64(8 * k + 7)) & 1) << UInt32(k)
            m |= UInt32((a[1] >> UInt64(8 * k + 7)) & 1) << UInt32(k + 8)
        }
        return m
    }
}
