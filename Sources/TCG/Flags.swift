/// The operation whose operands decide the status flags (lazy flags, as QEMU's cc_op): the
/// common ALU instructions only record operands and result; flags are computed when read.
public enum FlagOp: UInt8 {
    /// Status flags are in `rflags`.
    case none = 0
    case add, adc, sub, sbb, logic, inc, dec
    /// SHL/SAL, SHR, SAR with a nonzero count: `flagSrc1` the operand, `flagSrc2` the masked count.
    case shl, shr, sar
}

@_transparent func sizeMask(_ size: UInt8) -> UInt64 {
    size >= 3 ? ~0 : (UInt64(1) << (UInt64(8) << UInt64(size))) &- 1
}

@_transparent func signBit(_ size: UInt8) -> UInt64 {
    UInt64(1) << ((UInt64(8) << UInt64(size & 3)) &- 1)
}

/// Sign-extends the low 8 << size bits.
@_transparent func signExtend(_ v: UInt64, _ size: UInt8) -> Int64 {
    switch size {
    case 0: return Int64(Int8(truncatingIfNeeded: v))
    case 1: return Int64(Int16(truncatingIfNeeded: v))
    case 2: return Int64(Int32(truncatingIfNeeded: v))
    default: return Int64(bitPattern: v)
    }
}

@_transparent func parityFlag(_ v: UInt64) -> UInt64 {
    (UInt8(truncatingIfNeeded: v).nonzeroBitCount & 1) == 0 ? RFlags.pf : 0
}

extension CPUState {
    @_transparent mutating func setLazy(_ op: FlagOp, _ size: UInt8, res: UInt64, a: UInt64, b: UInt64) {
        flagOp = op; flagSize = size; flagRes = res; flagSrc1 = a; flagSrc2 = b
    }

    @_transparent var carryFlag: Bool {
        switch flagOp {
        case .none: return rflags & RFlags.cf != 0
        case .add: return flagRes < flagSrc1
        case .adc: return flagCarry != 0 ? flagRes <= flagSrc1 : flagRes < flagSrc1
        case .sub: return flagSrc1 < flagSrc2
        case .sbb: return flagCarry != 0 ? flagSrc1 <= flagSrc2 : flagSrc1 < flagSrc2
        case .logic: return false
        case .inc, .dec: return flagCarry != 0
        case .shl:
            let bits = UInt64(8) << UInt64(flagSize)
            return flagSrc2 <= bits && (flagSrc1 >> (bits &- flagSrc2)) & 1 != 0
        case .shr:
            let bits = UInt64(8) << UInt64(flagSize)
            return flagSrc2 <= bits && (flagSrc1 >> (flagSrc2 &- 1)) & 1 != 0
        case .sar:
            return (signExtend(flagSrc1, flagSize) >> Int64(min(flagSrc2 &- 1, 63))) & 1 != 0
        }
    }

    @_transparent var zeroFlag: Bool {
        flagOp == .none ? rflags & RFlags.zf != 0 : flagRes == 0
    }

    @_transparent var signFlag: Bool {
        flagOp == .none ? rflags & RFlags.sf != 0 : flagRes & signBit(flagSize) != 0
    }

    @_transparent var overflowFlag: Bool {
        let sign = signBit(flagSize)
        switch flagOp {
        case .none: return rflags & RFlags.of != 0
        case .add, .adc: return ((flagSrc1 ^ flagRes) & (flagSrc2 ^ flagRes)) & sign != 0
        case .sub, .sbb: return ((flagSrc1 ^ flagSrc2) & (flagSrc1 ^ flagRes)) & sign != 0
        case .logic: return false
        case .inc: return flagRes == sign
        case .dec: return flagSrc1 == sign
        // As this host (AMD Zen) computes OF for every count (see ExecuteALU.shift).
        case .shl: return (flagRes & sign != 0) != carryFlag
        case .shr: return flagSrc2 == 1 && flagSrc1 & sign != 0
        case .sar: return false
        }
    }

    @_transparent var parityFlagSet: Bool {
        flagOp == .none ? rflags & RFlags.pf != 0 : parityFlag(flagRes) != 0
    }

    @_transparent var adjustFlag: Bool {
        switch flagOp {
        case .none: return rflags & RFlags.af != 0
        case .logic: return false
        case .shl, .shr, .sar: return true  // set, as AMD Zen does (undefined in the SDM)
        default: return (flagSrc1 ^ flagSrc2 ^ flagRes) & 0x10 != 0
        }
    }

    /// Writes the status flags into `rflags` and drops the lazy state.
    @_transparent mutating func materializeFlags() {
        guard flagOp != .none else { return }
        var f = rflags & ~RFlags.arith
        f |= parityFlag(flagRes)
        if flagRes == 0 { f |= RFlags.zf }
        if flagRes & signBit(flagSize) != 0 { f |= RFlags.sf }
        if flagOp == .logic {
            // CF, OF and AF are clear after and/or/xor/test: no per-op decode.
            rflags = f
            flagOp = .none
            return
        }
        if carryFlag { f |= RFlags.cf }
        if adjustFlag { f |= RFlags.af }
        if overflowFlag { f |= RFlags.of }
        rflags = f
        flagOp = .none
    }

    /// RFLAGS with status flags computed (pushf, interrupt frames).
    @inline(__always) mutating func currentRFlags() -> UInt64 {
        materializeFlags()
        return rflags
    }

    /// Replaces the status flags (eager instructions: shifts, multiplies, bit scans).
    @inline(__always) mutating func setStatusFlags(_ f: UInt64) {
        flagOp = .none
        rflags = (rflags & ~RFlags.arith) | (f & RFlags.arith)
    }

    /// Status flags with CF (or another subset) taken from the current state, the rest from `f`.
    @inline(__always) mutating func statusFlags() -> UInt64 {
        materializeFlags()
        return rflags & RFlags.arith
    }

    /// Condition codes tttn (SDM Vol. 1 Appendix B), with fast paths for cmp/sub and test.
    @_transparent mutating func condition(_ cc: UInt8) -> Bool {
        let r: Bool
        if flagOp == .sub {
            let a = flagSrc1, b = flagSrc2
            switch cc >> 1 {
            case 1: r = a < b
            case 2: r = a == b
            case 3: r = a <= b
            case 6: r = signExtend(a, flagSize) < signExtend(b, flagSize)
            case 7: r = signExtend(a, flagSize) <= signExtend(b, flagSize)
            default: r = slowCondition(cc >> 1)
            }
        } else if flagOp == .logic {
            switch cc >> 1 {
            case 0, 1: r = false
            case 2, 3: r = flagRes == 0
            case 4: r = flagRes & signBit(flagSize) != 0
            case 6: r = flagRes & signBit(flagSize) != 0
            case 7: r = flagRes == 0 || flagRes & signBit(flagSize) != 0
            default: r = slowCondition(cc >> 1)
            }
        } else if flagOp != .none && cc >> 1 == 2 {
            r = flagRes == 0  // ZF of every lazy op (dec; jnz)
        } else {
            r = slowCondition(cc >> 1)
        }
        return cc & 1 != 0 ? !r : r
    }

    mutating func slowCondition(_ c: UInt8) -> Bool {
        switch c & 7 {
        case 0: return overflowFlag
        case 1: return carryFlag
        case 2: return zeroFlag
        case 3: return carryFlag || zeroFlag
        case 4: return signFlag
        case 5: return parityFlagSet
        case 6: return signFlag != overflowFlag
        default: return zeroFlag || (signFlag != overflowFlag)
        }
    }
}
