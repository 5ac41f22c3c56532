import Glibc

/// The x87 FPU (SDM Vol. 1 ch. 8): the register stack with tags, loads and stores of the real,
/// integer and extended formats, arithmetic, comparisons (FCOM/FUCOM/FCOMI), FCMOVcc, constants
/// and the transcendental instructions, computed with the host's 80-bit extended precision.
/// Exceptions are always answered as masked (the masked response is stored): the status word
/// records them, and an unmasked one raises #MF at the next waiting x87 or MMX instruction.
extension X86CPU {
    @inline(__always) var fpuTop: Int { Int((fpu.pointee.fsw >> 11) & 7) }

    @inline(__always) func setFPUTop(_ t: Int) {
        fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.top) | (UInt16(t & 7) << 11)
    }

    @inline(__always) func loadPhysical(_ k: Int) -> Float80 {
        (x87Slots + (k & 7) &* 16).loadUnaligned(as: Float80.self)
    }

    @inline(__always) func storePhysical(_ k: Int, _ v: Float80) {
        let p = x87Slots + (k & 7) &* 16
        p.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: v, as: Float80.self)
    }

    /// The QNaN "real indefinite" stored on invalid operations.
    static var indefinite: Float80 { float80(0xC000_0000_0000_0000, 0xFFFF) }

    static func float80(_ significand: UInt64, _ signExponent: UInt16) -> Float80 {
        var t: (UInt64, UInt64) = (significand, UInt64(signExponent))
        return withUnsafeBytes(of: &t) { $0.loadUnaligned(as: Float80.self) }
    }

    static func bits80(_ v: Float80) -> (UInt64, UInt16) {
        var t: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &t) { $0.storeBytes(of: v, as: Float80.self) }
        return (t.0, UInt16(truncatingIfNeeded: t.1))
    }

    /// ST(i); an empty register is a stack underflow (IE, SF) and reads as the indefinite.
    @inline(__always) func stReg(_ i: Int) -> Float80 {
        let k = (fpuTop + i) & 7
        if fpu.pointee.ftw & (1 << UInt8(k)) == 0 {
            fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.c1) | FSW.ie | FSW.sf
            return Self.indefinite
        }
        return loadPhysical(k)
    }

    /// Stack underflow: an arithmetic instruction with an empty operand register stores the
    /// real indefinite (masked response), whatever the other operand holds.
    @inline(__always) func isEmptyST(_ i: Int) -> Bool {
        fpu.pointee.ftw & (1 << UInt8((fpuTop + i) & 7)) == 0
    }

    @inline(__always) func setSTReg(_ i: Int, _ v: Float80) {
        let k = (fpuTop + i) & 7
        storePhysical(k, v)
        fpu.pointee.ftw |= 1 << UInt8(k)
    }

    func fpuPush(_ v: Float80) {
        let t = (fpuTop - 1) & 7
        var value = v
        if fpu.pointee.ftw & (1 << UInt8(t)) != 0 {
            fpu.pointee.fsw |= FSW.ie | FSW.sf | FSW.c1
            value = Self.indefinite
        } else {
            // Loads clear C1 unless the stack overflowed (SDM Vol. 2 FLD, FILD, FLD1...).
            fpu.pointee.fsw &= ~FSW.c1
        }
        setFPUTop(t)
        storePhysical(t, value)
        fpu.pointee.ftw |= 1 << UInt8(t)
    }

    func fpuPop() {
        let t = fpuTop
        fpu.pointee.ftw &= ~(1 << UInt8(t))
        setFPUTop(t + 1)
    }

    var x87Rounding: FloatingPointRoundingRule {
        switch (fpu.pointee.fcw >> 10) & 3 {
        case 0: return .toNearestOrEven
        case 1: return .down
        case 2: return .up
        default: return .towardZero
        }
    }

    /// FNINIT's state (SDM Vol. 1 Table 8-...): FCW 0x37F, everything else clear, all empty.
    func fpuInit() {
        let f = fpu
        f.pointee.fcw = 0x037F; f.pointee.fsw = 0; f.pointee.ftw = 0
        f.pointee.fop = 0; f.pointee.fip = 0; f.pointee.fdp = 0; f.pointee.fcs = 0; f.pointee.fds = 0
    }

    /// C3 C2 C0 after comparing a with b (unordered: all three).
    static func compareCodes(_ a: Float80, _ b: Float80) -> UInt16 {
        if a.isNaN || b.isNaN || isUnsupported(a) || isUnsupported(b) { return FSW.c3 | FSW.c2 | FSW.c0 }
        if a < b { return FSW.c0 }
        return a == b ? FSW.c3 : 0
    }

    /// The exceptions of a comparison: IE for any NaN (FCOM, FCOMI, FTST) or only for a
    /// signaling one (FUCOM, FUCOMI); otherwise DE for a denormal operand.
    func noteCompareExceptions(_ a: Float80, _ b: Float80, quiet: Bool) {
        if Self.isUnsupported(a) || Self.isUnsupported(b) {
            // Unnormals, pseudo-NaNs and pseudo-infinities are invalid operands even to FUCOM.
            fpu.pointee.fsw |= FSW.ie
        } else if a.isNaN || b.isNaN {
            if !quiet || a.isSignalingNaN || b.isSignalingNaN { fpu.pointee.fsw |= FSW.ie }
        } else if a.isSubnormal || b.isSubnormal {
            fpu.pointee.fsw |= FSW.de
        }
    }

    func setConditionCodes(_ c: UInt16) {
        fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.conditions) | c
    }

    /// FCOMI/FUCOMI: ZF, PF, CF from the comparison; OF, SF, AF cleared.
    func setCompareFlags(_ a: Float80, _ b: Float80) {
        let f: UInt64
        if a.isNaN || b.isNaN || Self.isUnsupported(a) || Self.isUnsupported(b) { f = RFlags.zf | RFlags.pf | RFlags.cf } else if a < b { f = RFlags.cf } else { f = a == b ? RFlags.zf : 0 }
        st.pointee.setStatusFlags(f)
        // C1 is left as it was: measured on this host (AMD Zen) by DifferentialKVMTests.
    }

    /// Runs one host x87 operation and ORs the exception flags it raised into FSW: the host
    /// computes the same IEEE result, so its flags (IE DE ZE OE UE PE, the same bits in glibc's
    /// fenv and in FSW) are the guest's. DifferentialKVMTests found PE missing without this.
    @inline(never) func withHostFPFlags<T>(_ body: () -> T) -> T {
        feclearexcept(0x3F)
        let r = body()
        fpu.pointee.fsw |= UInt16(truncatingIfNeeded: fetestexcept(0x3F)) & 0x3F
        return r
    }

    /// C1 after a rounded result: set when the rounding increased the magnitude ("rounded up",
    /// SDM Vol. 1 §8.1.3.2), cleared otherwise. `exactMinusResult` is the sign of exact − result.
    func setRoundedUp(_ result: Float80, exactMinusResult: Float80) {
        let up = result.isFinite ? result != 0 && exactMinusResult != 0 && (exactMinusResult < 0) == (result > 0)
            : fpu.pointee.fsw & FSW.oe != 0 && exactMinusResult.isNaN == false && exactMinusResult != 0
        fpu.pointee.fsw = up ? fpu.pointee.fsw | FSW.c1 : fpu.pointee.fsw & ~FSW.c1
    }

    /// m32/m64 operands: IE for a signaling NaN (host flags), DE for a denormal (glibc's fenv
    /// does not report the x87 denormal flag).
    func loadSingle(_ bits: UInt32) -> Float80 {
        let f = Float(bitPattern: bits)
        if f.isSubnormal { fpu.pointee.fsw |= FSW.de }
        return withHostFPFlags { Float80(f) }
    }

    func loadDouble(_ bits: UInt64) -> Float80 {
        let d = Double(bitPattern: bits)
        if d.isSubnormal { fpu.pointee.fsw |= FSW.de }
        return withHostFPFlags { Float80(d) }
    }

    /// The rounding error of a + b (TwoSum): a + b = s + e exactly.
    static func sumError(_ a: Float80, _ b: Float80, _ s: Float80) -> Float80 {
        let bp = s - a, ap = s - bp
        return (a - ap) + (b - bp)
    }

    /// The rounding error of a * b (Dekker's TwoProduct with a 2^32 + 1 split of the 64-bit
    /// significand): a * b = p + e exactly, barring overflow.
    static func productError(_ a: Float80, _ b: Float80, _ p: Float80) -> Float80 {
        let splitter: Float80 = 4_294_967_297
        let ca = splitter * a, ah = ca - (ca - a), al = a - ah
        let cb = splitter * b, bh = cb - (cb - b), bl = b - bh
        return ((ah * bh - p) + ah * bl + al * bh) + al * bl
    }

    /// An arithmetic result with the host's exception flags and C1.
    func x87ArithFlags(_ op: UInt8, _ dst: Float80, _ src: Float80) -> Float80 {
        let before = fpu.pointee.fsw
        let r = withHostFPFlags { x87Arith(op, dst, src) }
        // DE ranks below invalid operation and divide-by-zero (SDM Vol. 1 §4.9.2): a denormal
        // divided by zero is ZE alone (measured).
        if (dst.isSubnormal || src.isSubnormal) && !dst.isNaN && !src.isNaN && (fpu.pointee.fsw & ~before) & (FSW.ie | FSW.ze) == 0 {
            fpu.pointee.fsw |= FSW.de
        }
        guard r.isFinite, dst.isFinite, src.isFinite else { fpu.pointee.fsw &= ~FSW.c1; return r }
        let err: Float80
        switch op {
        case 0: err = Self.sumError(dst, src, r)
        case 4: err = Self.sumError(dst, -src, r)
        case 5: err = Self.sumError(src, -dst, r)
        case 1: err = Self.productError(dst, src, r)
        default:
            // a / b = q + rem / b with rem = a - q * b (exact from TwoProduct).
            let (a, b) = op == 6 ? (dst, src) : (src, dst)
            let p = r * b, pe = Self.productError(r, b, p)
            let rem = (a - p) - pe
            err = b < 0 ? -rem : rem
        }
        setRoundedUp(r, exactMinusResult: err)
        return r
    }

    /// Arithmetic of D8/DC/DA/DE: 0 add, 1 mul, 4 dst-src, 5 src-dst, 6 dst/src, 7 src/dst.
    @inline(__always) func x87Arith(_ op: UInt8, _ dst: Float80, _ src: Float80) -> Float80 {
        switch op {
        case 0: return dst + src
        case 1: return dst * src
        case 4: return dst - src
        case 5: return src - dst
        case 6:
            if src == 0 && !dst.isNaN && dst != 0 { fpu.pointee.fsw |= FSW.ze }
            return dst / src
        default:
            if dst == 0 && !src.isNaN && src != 0 { fpu.pointee.fsw |= FSW.ze }
            return src / dst
        }
    }

    /// A value rounded by FCW.RC to a signed integer of `bytes`; out of range gives the integer
    /// indefinite and IE.
    func x87ToInteger(_ v: Float80, bytes: Int, truncate: Bool) -> UInt64 {
        let r = v.rounded(truncate ? .towardZero : x87Rounding)
        let limit = Float80(sign: .plus, exponent: bytes * 8 - 1, significand: 1)
        if r.isNaN || r >= limit || r < -limit {
            fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.c1) | FSW.ie
            return UInt64(1) << UInt64(bytes * 8 - 1)
        }
        if r != v { fpu.pointee.fsw |= FSW.pe }
        setRoundedUp(r, exactMinusResult: v - r)
        return UInt64(bitPattern: Int64(r))
    }

    func executeX87(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        if s.pointee.cr0 & (CR0.em | CR0.ts) != 0 { throw X86Exception(X86Exception.deviceNotAvailable) }
        let group = i.pointee.sub, m = UInt8(truncatingIfNeeded: i.pointee.imm)
        let reg = (m >> 3) & 7
        if !Self.isNonWaiting(group, m, isMem: i.pointee.isMem) { try checkPendingX87() }
        if i.pointee.isMem {
            let la = linearAddress(i)
            // Control instructions (FLDCW, FNSTCW, FNSTSW, environment) leave FIP/FDP/FOP alone.
            let control = (group == 1 && reg >= 4) || (group == 5 && reg >= 4)
            // A store that faults (#PF, #AC) after the value was converted leaves the status
            // word (and the pointers) as they were: the instruction did not happen.
            let f = fpu, saved = (f.pointee.fsw, f.pointee.fop, f.pointee.fip, f.pointee.fdp, f.pointee.fcs, f.pointee.fds)
            if !control {
                f.pointee.fop = (UInt16(group) << 8) | UInt16(m)
                f.pointee.fip = s.pointee.currentRIP; f.pointee.fdp = la
                f.pointee.fcs = s.pointee.cs.selector; f.pointee.fds = segment(i.pointee.seg).selector
            }
            do {
                try x87Memory(i, group, reg, la)
            } catch {
                (f.pointee.fsw, f.pointee.fop, f.pointee.fip, f.pointee.fdp, f.pointee.fcs, f.pointee.fds) = saved
                throw error
            }
        } else {
            if !(group == 3 && (m == 0xE2 || m == 0xE3)) && !(group == 7 && m == 0xE0) {
                fpu.pointee.fop = (UInt16(group) << 8) | UInt16(m)
                fpu.pointee.fip = s.pointee.currentRIP; fpu.pointee.fcs = s.pointee.cs.selector
            }
            try x87Register(group, m)
        }
    }

    /// FNINIT, FNCLEX, FNSTSW, FNSTCW, FNSTENV, FNSAVE (and the 8087 FNENI/FNDISI/FNSETPM)
    /// do not first take a pending unmasked exception; every other x87 instruction does (SDM
    /// Vol. 1 §8.3.11, §8.6).
    @inline(__always) static func isNonWaiting(_ group: UInt8, _ m: UInt8, isMem: Bool) -> Bool {
        if isMem { return (group == 1 || group == 5) && (m >> 3) & 7 >= 6 }
        return (group == 3 && m >= 0xE0 && m <= 0xE4) || (group == 7 && m == 0xE0)
    }

    func x87Memory(_ i: UnsafeMutablePointer<Instruction>, _ group: UInt8, _ reg: UInt8, _ la: UInt64) throws(X86Exception) {
        switch (group, reg) {
        case (0, _), (2, _), (4, _), (6, _):
            let deBefore = fpu.pointee.fsw & FSW.de
            let v: Float80
            switch group {
            case 0: let b = UInt32(truncatingIfNeeded: try readLinear(la, 2)); v = loadSingle(b)
            case 4: let b = try readLinear(la, 3); v = loadDouble(b)
            case 2: v = Float80(Int32(truncatingIfNeeded: try readLinear(la, 2)))
            default: v = Float80(Int16(truncatingIfNeeded: try readLinear(la, 1)))
            }
            let a = stReg(0)
            // A NaN operand (an empty ST(0) included) is an invalid operation: no DE for the
            // denormal memory operand then (measured).
            if a.isNaN || v.isNaN { fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.de) | deBefore }
            switch reg {
            case 2, 3:
                noteCompareExceptions(a, v, quiet: false)
                setConditionCodes(Self.compareCodes(a, v))
                if reg == 3 { fpuPop() }
            default:
                let before = fpu.pointee.fsw
                setSTReg(0, isEmptyST(0) ? Self.indefinite : x87ArithFlags(reg, a, v))
                // The memory operand's DE (set as it loaded) yields to IE and ZE as well.
                if (fpu.pointee.fsw & ~before) & (FSW.ie | FSW.ze) != 0 { fpu.pointee.fsw = (fpu.pointee.fsw & ~FSW.de) | deBefore }
            }
        case (1, 0):
            let b = UInt32(truncatingIfNeeded: try readLinear(la, 2))
            fpuPush(loadSingle(b))
        case (1, 2), (1, 3):
            let v = stReg(0)
            let f = withHostFPFlags { Float(v) }
            setRoundedUp(Float80(f), exactMinusResult: v.isFinite ? (f.isFinite ? v - Float80(f) : 1) : 0)
            try writeLinear(la, 2, UInt64(f.bitPattern))
            if reg == 3 { fpuPop() }
        case (1, 4): try loadEnvironment(la, size: i.pointee.size)
        case (1, 5): fpu.pointee.fcw = UInt16(truncatingIfNeeded: try readLinear(la, 1))
        case (1, 6):
            try storeEnvironment(la, size: i.pointee.size)
            fpu.pointee.fcw |= 0x3F
        case (1, 7): try writeLinear(la, 1, UInt64(fpu.pointee.fcw))
        case (3, 0): fpuPush(Float80(Int32(truncatingIfNeeded: try readLinear(la, 2))))
        case (3, 1), (3, 2), (3, 3):
            try writeLinear(la, 2, x87ToInteger(stReg(0), bytes: 4, truncate: reg == 1))
            if reg != 2 { fpuPop() }
        case (3, 5):
            let lo = try readLinear(la, 3), hi = try readLinear(la &+ 8, 1)
            fpuPush(Self.float80(lo, UInt16(truncatingIfNeeded: hi)))
        case (3, 7):
            let (lo, hi) = Self.bits80(stReg(0))
            _ = try translate(la &+ 9, .write)
            try writeLinear(la, 3, lo); try writeLinear(la &+ 8, 1, UInt64(hi))
            fpuPop()
        case (5, 0):
            let b = try readLinear(la, 3)
            fpuPush(loadDouble(b))
        case (5, 1):
            try writeLinear(la, 3, x87ToInteger(stReg(0), bytes: 8, truncate: true))
            fpuPop()
        case (5, 2), (5, 3):
            let v = stReg(0)
            let d = withHostFPFlags { Double(v) }
            setRoundedUp(Float80(d), exactMinusResult: v.isFinite ? (d.isFinite ? v - Float80(d) : 1) : 0)
            try writeLinear(la, 3, d.bitPattern)
            if reg == 3 { fpuPop() }
        case (5, 4): try restoreState(la, size: i.pointee.size)
        case (5, 6): try saveState(la, size: i.pointee.size)
        case (5, 7): try writeLinear(la, 1, UInt64(reportedFSW))
        case (7, 0): fpuPush(Float80(Int16(truncatingIfNeeded: try readLinear(la, 1))))
        case (7, 1), (7, 2), (7, 3):
            try writeLinear(la, 1, x87ToInteger(stReg(0), bytes: 2, truncate: reg == 1))
            if reg != 2 { fpuPop() }
        case (7, 5): fpuPush(Float80(Int64(bitPattern: try readLinear(la, 3))))
        case (7, 7):
            try writeLinear(la, 3, x87ToInteger(stReg(0), bytes: 8, truncate: false))
            fpuPop()
        default:
            // FBLD/FBSTP (packed BCD) and the reserved encodings.
            throw X86Exception.ud
        }
    }

    func x87Register(_ group: UInt8, _ m: UInt8) throws(X86Exception) {
        let reg = (m >> 3) & 7, k = Int(m & 7)
        switch group {
        case 0:
            let a = stReg(0), b = stReg(k)
            if reg == 2 || reg == 3 {
                noteCompareExceptions(a, b, quiet: false)
                setConditionCodes(Self.compareCodes(a, b))
                if reg == 3 { fpuPop() }
            } else {
                setSTReg(0, isEmptyST(0) || isEmptyST(k) ? Self.indefinite : x87ArithFlags(reg, a, b))
            }
        case 4, 6:
            if reg == 2 || reg == 3 {
                // DC D0-DF: FCOM/FCOMP aliases; DE D9: FCOMPP.
                if group == 6 && m != 0xD9 { throw X86Exception.ud }
                noteCompareExceptions(stReg(0), stReg(k), quiet: false)
                setConditionCodes(Self.compareCodes(stReg(0), stReg(k)))
                fpuPop()
                if group == 6 { fpuPop() }
                return
            }
            let op = reg >= 4 ? reg ^ 1 : reg
            let (d, t) = (stReg(k), stReg(0))
            setSTReg(k, isEmptyST(0) || isEmptyST(k) ? Self.indefinite : x87ArithFlags(op, d, t))
            if group == 6 { fpuPop() }
        case 1: try x87D9(m)
        case 2, 3:
            if reg < 4 {
                // FCMOVcc: DA B, E, BE, U; DB the negations.
                let c: Bool
                switch reg {
                case 0: c = st.pointee.condition(2)
                case 1: c = st.pointee.condition(4)
                case 2: c = st.pointee.condition(6)
                default: c = st.pointee.condition(0xA)
                }
                if c != (group == 3) { setSTReg(0, stReg(k)) }
                return
            }
            switch (group, m) {
            case (2, 0xE9):
                noteCompareExceptions(stReg(0), stReg(1), quiet: true)
                setConditionCodes(Self.compareCodes(stReg(0), stReg(1)))
                fpuPop(); fpuPop()
            case (3, 0xE2): fpu.pointee.fsw &= ~(FSW.ie | FSW.de | FSW.ze | FSW.oe | FSW.ue | FSW.pe | FSW.sf | FSW.es | 0x8000)
            case (3, 0xE3): fpuInit()
            case (3, 0xE0), (3, 0xE1), (3, 0xE4): break  // FENI, FDISI, FSETPM: no-ops since the 287
            case (3, _) where reg == 5 || reg == 6:
                noteCompareExceptions(stReg(0), stReg(k), quiet: reg == 5)
                setCompareFlags(stReg(0), stReg(k))
            default: throw X86Exception.ud
            }
        case 5:
            switch reg {
            case 0: fpu.pointee.ftw &= ~(1 << UInt8((fpuTop + k) & 7))
            case 2, 3:
                setSTReg(k, stReg(0))
                if reg == 3 { fpuPop() }
            case 4, 5:
                noteCompareExceptions(stReg(0), stReg(k), quiet: true)
                setConditionCodes(Self.compareCodes(stReg(0), stReg(k)))
                if reg == 5 { fpuPop() }
            default: throw X86Exception.ud
            }
        default:
            switch reg {
            case 0:
                // FFREEP (undocumented, used by some code as "free and pop").
                fpu.pointee.ftw &= ~(1 << UInt8((fpuTop + k) & 7)); fpuPop()
            case 4 where m == 0xE0: setReg(Reg.rax, 1, UInt64(reportedFSW))
            case 5, 6:
                noteCompareExceptions(stReg(0), stReg(k), quiet: reg == 5)
                setCompareFlags(stReg(0), stReg(k))
                fpuPop()
            default: throw X86Exception.ud
            }
        }
    }

    /// D9 register forms: FLD ST(i), FXCH, FNOP, sign and class operations, constants, and the
    /// transcendental group.
    func x87D9(_ m: UInt8) throws(X86Exception) {
        let k = Int(m & 7)
        switch m {
        case 0xC0...0xC7: fpuPush(stReg(k))
        case 0xC8...0xCF:
            let a = stReg(0), b = stReg(k)
            setSTReg(0, b); setSTReg(k, a)
            fpu.pointee.fsw &= ~FSW.c1
        case 0xD0: break
        case 0xE0, 0xE1:  // FCHS, FABS: clear C1; on an empty ST(0) the result is the indefinite
            let empty = fpu.pointee.ftw & (1 << UInt8(fpuTop & 7)) == 0
            let v = stReg(0)
            setSTReg(0, empty ? v : (m == 0xE0 ? -v : abs(v)))
            fpu.pointee.fsw &= ~FSW.c1
        case 0xE4:
            noteCompareExceptions(stReg(0), 0, quiet: false)
            setConditionCodes(Self.compareCodes(stReg(0), 0))
        case 0xE5: fxam()
        case 0xE8: fpuPush(1)
        case 0xE9: fpuPush(3.32192809488736234787031942948939017586)
        case 0xEA: fpuPush(1.44269504088896340735992468100189213743)
        case 0xEB: fpuPush(Float80.pi)
        case 0xEC: fpuPush(0.301029995663981195213738894724493026768)
        case 0xED: fpuPush(0.693147180559945309417232121458176568076)
        case 0xEE: fpuPush(0)
        case 0xF0: setSTReg(0, expm1l(stReg(0) * 0.693147180559945309417232121458176568076))
        case 0xF1:
            let r = stReg(1) * log2l(stReg(0))
            fpuPop(); setSTReg(0, r)
        case 0xF2:
            setSTReg(0, tanl(stReg(0))); fpuPush(1)
            fpu.pointee.fsw &= ~FSW.c2
        case 0xF3:
            let r = atan2l(stReg(1), stReg(0))
            fpuPop(); setSTReg(0, r)
        case 0xF4:
            let v = stReg(0)
            if v == 0 {
                fpu.pointee.fsw |= FSW.ze
                setSTReg(0, -Float80.infinity); fpuPush(v)
            } else if v.isFinite {
                setSTReg(0, Float80(v.exponent)); fpuPush(Float80(sign: v.sign, exponent: 0, significand: v.significand))
            } else {
                setSTReg(0, v); fpuPush(v)
            }
        case 0xF5, 0xF8:
            let x = stReg(0), y = stReg(1)
            let nearest = m == 0xF5
            let r = nearest ? x.remainder(dividingBy: y) : x.truncatingRemainder(dividingBy: y)
            let q = (x / y).rounded(nearest ? .toNearestOrEven : .towardZero)
            let bits: UInt64 = q.isFinite && abs(q) < 0x1p63 ? UInt64(abs(q)) : 0
            var c: UInt16 = 0
            if bits & 4 != 0 { c |= FSW.c0 }
            if bits & 2 != 0 { c |= FSW.c3 }
            if bits & 1 != 0 { c |= FSW.c1 }
            setConditionCodes(c)
            setSTReg(0, r)
        case 0xF6: setFPUTop(fpuTop - 1); fpu.pointee.fsw &= ~FSW.c1
        case 0xF7: setFPUTop(fpuTop + 1); fpu.pointee.fsw &= ~FSW.c1
        case 0xF9:
            let r = stReg(1) * (log1pl(stReg(0)) / 0.693147180559945309417232121458176568076)
            fpuPop(); setSTReg(0, r)
        case 0xFA:
            let v = stReg(0), r = withHostFPFlags { v.squareRoot() }
            if r.isFinite && r > 0 {
                let p = r * r
                setRoundedUp(r, exactMinusResult: (v - p) - Self.productError(r, r, p))
            } else { fpu.pointee.fsw &= ~FSW.c1 }
            setSTReg(0, r)
        case 0xFB:
            let v = stReg(0)
            setSTReg(0, sinl(v)); fpuPush(cosl(v))
            fpu.pointee.fsw &= ~FSW.c2
        case 0xFC:
            let v = stReg(0), rule = x87Rounding, r = withHostFPFlags { v.rounded(rule) }
            setRoundedUp(r, exactMinusResult: v.isFinite ? v - r : 0)
            setSTReg(0, r)
        case 0xFD:
            let e = stReg(1).rounded(.towardZero)
            let n = e.isNaN ? 0 : Int32(max(-100_000, min(100_000, e)))
            setSTReg(0, scalbnl(stReg(0), n))
        case 0xFE: setSTReg(0, sinl(stReg(0))); fpu.pointee.fsw &= ~FSW.c2
        case 0xFF: setSTReg(0, cosl(stReg(0))); fpu.pointee.fsw &= ~FSW.c2
        default: throw X86Exception.ud
        }
    }

    /// An encoding the 387 and later reject as an operand (SDM Vol. 1 §8.2.2, Table 8-3): a
    /// nonzero exponent with the integer bit clear (unnormal, pseudo-NaN, pseudo-infinity).
    static func isUnsupported(_ v: Float80) -> Bool {
        let (sig, se) = bits80(v)
        return se & 0x7FFF != 0 && sig >> 63 == 0
    }

    /// FXAM: the class of ST(0) in C3 C2 C0, its sign in C1, from the register's bits (SDM Vol.
    /// 2 FXAM): unsupported encodings are class 000; pseudo-denormals are denormals.
    func fxam() {
        let k = fpuTop
        let (sig, se) = physicalBits(k)
        let e = se & 0x7FFF, integer = sig >> 63 != 0
        var c: UInt16 = se & 0x8000 != 0 ? FSW.c1 : 0
        if fpu.pointee.ftw & (1 << UInt8(k)) == 0 { c |= FSW.c3 | FSW.c0 }
        else if e == 0 { c |= sig == 0 ? FSW.c3 : FSW.c3 | FSW.c2 }
        else if !integer { }
        else if e == 0x7FFF { c |= sig << 1 == 0 ? FSW.c2 | FSW.c0 : FSW.c0 }
        else { c |= FSW.c2 }
        setConditionCodes(c)
    }

    /// FWAIT: with CR0.MP and CR0.TS, #NM (SDM Vol. 3 Table 2-2); then a pending exception's #MF.
    func fwait() throws(X86Exception) {
        let cr0 = st.pointee.cr0
        if cr0 & CR0.mp != 0 && cr0 & CR0.ts != 0 { throw X86Exception(X86Exception.deviceNotAvailable) }
        try checkPendingX87()
    }
}
