/// The operations the interpreter's hot path is made of, on the raw state (registers, CPUState,
/// the software TLB) rather than on X86CPU. They are transparent: the optimizer's inlining budget
/// for a large caller (the run loop) does not apply to them, where an `@inline(__always)` method
/// of the class was left out of line once the caller grew, costing a call per operand. The
/// X86CPU methods of the same names delegate here, so there is one definition of each.

/// A register operand of `size` (0-3); byte registers 16-19 are AH..BH.
@_transparent func readGPR(_ gpr: UnsafeMutablePointer<UInt64>, _ r: UInt8, _ size: UInt8) -> UInt64 {
    switch size {
    case 0:
        if r >= 16 { return (gpr[Int(r & 3)] >> 8) & 0xFF }
        return gpr[Int(r & 15)] & 0xFF
    case 1: return gpr[Int(r & 15)] & 0xFFFF
    case 2: return gpr[Int(r & 15)] & 0xFFFF_FFFF
    default: return gpr[Int(r & 15)]
    }
}

/// Writes a register operand: 32-bit writes zero the upper half, 8/16-bit writes merge.
@_transparent func writeGPR(_ gpr: UnsafeMutablePointer<UInt64>, _ r: UInt8, _ size: UInt8, _ v: UInt64) {
    switch size {
    case 0:
        if r >= 16 {
            let p = gpr + Int(r & 3)
            p.pointee = (p.pointee & ~0xFF00) | ((v & 0xFF) << 8)
        } else {
            let p = gpr + Int(r & 15)
            p.pointee = (p.pointee & ~0xFF) | (v & 0xFF)
        }
    case 1:
        let p = gpr + Int(r & 15)
        p.pointee = (p.pointee & ~0xFFFF) | (v & 0xFFFF)
    case 2: gpr[Int(r & 15)] = v & 0xFFFF_FFFF
    default: gpr[Int(r & 15)] = v
    }
}

/// The table of privilege `user` (the tag's privilege bit): supervisor's first, then user's.
@_transparent func tlbTable(_ tlb: UnsafeMutablePointer<TLBEntry>, user: UInt64) -> UnsafeMutablePointer<TLBEntry> {
    tlb + Int(truncatingIfNeeded: (user & 1) << UInt64(TLBEntry.indexBits))
}

/// The entry for `la` in the table of privilege `user`.
@_transparent func tlbEntry(_ tlb: UnsafeMutablePointer<TLBEntry>, _ la: UInt64, user: UInt64) -> UnsafeMutablePointer<TLBEntry> {
    tlbTable(tlb, user: user) + Int(truncatingIfNeeded: (la >> 12) & UInt64(TLBEntry.count - 1))
}

/// A TLB hit for a read of `1 << size` bytes inside one RAM page; nil: take the slow path.
/// `user` is the tag's privilege bit (1 at CPL 3).
@_transparent func tlbRead(_ tlb: UnsafeMutablePointer<TLBEntry>, _ la: UInt64, _ size: UInt8, user: UInt64) -> UInt64? {
    let e = tlbEntry(tlb, la, user: user)
    let off = Int(la & 0xFFF)
    guard e.pointee.readTag == ((la >> 12) << 1) | user, off <= 4096 - (1 << Int(size)), let h = e.pointee.host else { return nil }
    switch size {
    case 0: return UInt64(h.load(fromByteOffset: off, as: UInt8.self))
    case 1: return UInt64(h.loadUnaligned(fromByteOffset: off, as: UInt16.self))
    case 2: return UInt64(h.loadUnaligned(fromByteOffset: off, as: UInt32.self))
    default: return h.loadUnaligned(fromByteOffset: off, as: UInt64.self)
    }
}

/// A TLB hit for a write; false: take the slow path (nothing was written).
@_transparent func tlbWrite(_ tlb: UnsafeMutablePointer<TLBEntry>, _ la: UInt64, _ size: UInt8, _ v: UInt64, user: UInt64) -> Bool {
    let e = tlbEntry(tlb, la, user: user)
    let off = Int(la & 0xFFF)
    guard e.pointee.writeTag == ((la >> 12) << 1) | user, off <= 4096 - (1 << Int(size)), let h = e.pointee.host else { return false }
    switch size {
    case 0: h.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: off, as: UInt8.self)
    case 1: h.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: off, as: UInt16.self)
    case 2: h.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: off, as: UInt32.self)
    default: h.storeBytes(of: v, toByteOffset: off, as: UInt64.self)
    }
    return true
}

extension CPUState {
    @_transparent var userTag: UInt64 { cpl == 3 ? 1 : 0 }

    /// Base added to an offset in segment `n` (in 64-bit mode only FS and GS have one).
    @_transparent func segmentBase(_ n: UInt8) -> UInt64 {
        if codeMode == .long64 {
            if n == 4 { return fs.base }
            if n == 5 { return gs.base }
            return 0
        }
        switch n {
        case 0: return es.base
        case 1: return cs.base
        case 2: return ss.base
        case 3: return ds.base
        case 4: return fs.base
        case 5: return gs.base
        case 6: return ldtr.base
        default: return tr.base
        }
    }

    /// seg:offset to linear, with the offset truncated to the address size.
    @_transparent func linear(_ offset: UInt64, seg: UInt8, addrSize: UInt8) -> UInt64 {
        switch addrSize {
        case 3: return segmentBase(seg) &+ offset
        case 2: return (segmentBase(seg) &+ (offset & 0xFFFF_FFFF)) & (codeMode == .long64 ? ~0 : 0xFFFF_FFFF)
        default: return (segmentBase(seg) &+ (offset & 0xFFFF)) & (codeMode == .long64 ? ~0 : 0xFFFF_FFFF)
        }
    }

    /// The linear address of an instruction's memory operand: seg:[base + index << scale + disp].
    /// RIP-relative operands use `rip`, already advanced past the instruction.
    @_transparent func operandAddress(_ i: UnsafeMutablePointer<Instruction>, _ gpr: UnsafeMutablePointer<UInt64>) -> UInt64 {
        var a = UInt64(bitPattern: Int64(i.pointee.disp))
        let b = i.pointee.base
        if b < 16 { a &+= gpr[Int(b)] } else if b == Reg.rip { a &+= rip }
        let x = i.pointee.index
        if x < 16 { a &+= gpr[Int(x)] << UInt64(i.pointee.scale) }
        return linear(a, seg: i.pointee.seg, addrSize: i.pointee.addrSize)
    }

    /// One of the eight classic ALU operations (0 add, 1 or, 2 adc, 3 sbb, 4 and, 5 sub, 6 xor,
    /// 7 cmp): records the lazy flags and returns the result (the caller skips the store for cmp).
    @_transparent mutating func aluResult(_ op: UInt8, _ a: UInt64, _ b: UInt64, _ size: UInt8) -> UInt64 {
        let m = sizeMask(size)
        switch op & 7 {
        case 0:
            let r = (a &+ b) & m
            setLazy(.add, size, res: r, a: a, b: b); return r
        case 1:
            let r = a | b
            setLazy(.logic, size, res: r, a: a, b: b); return r
        case 2:
            let c: UInt64 = carryFlag ? 1 : 0
            let r = (a &+ b &+ c) & m
            flagCarry = c
            setLazy(.adc, size, res: r, a: a, b: b); return r
        case 3:
            let c: UInt64 = carryFlag ? 1 : 0
            let r = (a &- b &- c) & m
            flagCarry = c
            setLazy(.sbb, size, res: r, a: a, b: b); return r
        case 4:
            let r = a & b
            setLazy(.logic, size, res: r, a: a, b: b); return r
        case 6:
            let r = a ^ b
            setLazy(.logic, size, res: r, a: a, b: b); return r
        default:
            let r = (a &- b) & m
            setLazy(.sub, size, res: r, a: a, b: b); return r
        }
    }

    /// INC/DEC: CF is kept (recorded in `flagCarry`), the rest computed lazily.
    @_transparent mutating func incDecResult(_ v: UInt64, _ size: UInt8, dec: Bool) -> UInt64 {
        let c: UInt64 = carryFlag ? 1 : 0
        let r = (dec ? v &- 1 : v &+ 1) & sizeMask(size)
        flagCarry = c
        setLazy(dec ? .dec : .inc, size, res: r, a: v, b: 1)
        return r
    }

    /// IMUL r, r/m and r, r/m, imm: CF = OF = the product did not fit; SF, ZF, AF, PF
    /// (undefined) are left as they were, as this host (AMD Zen) does.
    @_transparent mutating func imulResult(_ a: UInt64, _ b: UInt64, _ size: UInt8) -> UInt64 {
        let lo: UInt64, overflow: Bool
        if size == 3 {
            let p = Int64(bitPattern: a).multipliedReportingOverflow(by: Int64(bitPattern: b))
            lo = UInt64(bitPattern: p.partialValue); overflow = p.overflow
        } else {
            let p = signExtend(a, size) &* signExtend(b, size)
            lo = UInt64(bitPattern: p) & sizeMask(size)
            overflow = signExtend(lo, size) != p
        }
        materializeFlags()
        rflags = (rflags & ~(RFlags.cf | RFlags.of)) | (overflow ? RFlags.cf | RFlags.of : 0)
        return lo
    }

    /// Group 2 shifts and rotates of a register with a nonzero masked `count` (SDM Vol. 2
    /// SAL/SAR/SHL/SHR, ROL/ROR). Shifts leave their flags lazy; rotates keep SF, ZF, AF, PF.
    /// RCL/RCR (`op` 2, 3) are not handled here: nil.
    @_transparent mutating func shiftResult(_ op: UInt8, _ v: UInt64, _ count: UInt64, _ size: UInt8) -> UInt64? {
        let bits = UInt64(8) << UInt64(size)
        let m = sizeMask(size), sign = signBit(size)
        switch op & 7 {
        case 0, 1:
            let c = count % bits
            let left = op & 7 == 0
            let r = c == 0 ? v : (left ? ((v << c) | (v >> (bits - c))) : ((v >> c) | (v << (bits - c)))) & m
            let msb: UInt64 = r & sign != 0 ? 1 : 0
            let cf = left ? r & 1 : msb
            let other = left ? cf : (r & (sign >> 1) != 0 ? 1 : 0)
            materializeFlags()
            rflags = (rflags & ~(RFlags.cf | RFlags.of)) | cf | (msb ^ other != 0 ? RFlags.of : 0)
            return r
        case 4, 6:
            let r = count >= bits ? 0 : (v << count) & m
            setLazy(.shl, size, res: r, a: v, b: count); return r
        case 5:
            let r = count >= bits ? 0 : v >> count
            setLazy(.shr, size, res: r, a: v, b: count); return r
        case 7:
            let c = count >= bits ? bits - 1 : count
            let r = UInt64(bitPattern: signExtend(v, size) >> Int64(c)) & m
            setLazy(.sar, size, res: r, a: v, b: count); return r
        default:
            return nil
        }
    }
}
