/// Saving and restoring x87/SSE state: FNSTENV/FLDENV, FNSAVE/FRSTOR (SDM Vol. 1 §8.1.10,
/// Figures 8-9/8-10, 32-bit protected-mode format), FXSAVE/FXRSTOR (SDM Vol. 2 FXSAVE, Table
/// 3-53/3-56: the 512-byte image) and LDMXCSR/STMXCSR.
extension X86CPU {
    /// A physical register's 80 bits as stored, without passing through a host x87 register (an
    /// MMX value is any bit pattern).
    @inline(__always) func physicalBits(_ k: Int) -> (UInt64, UInt16) {
        let p = x87Slots + (k & 7) &* 16
        return (p.loadUnaligned(as: UInt64.self), p.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
    }

    @inline(__always) func setPhysicalBits(_ k: Int, _ significand: UInt64, _ signExponent: UInt16) {
        let p = x87Slots + (k & 7) &* 16
        p.storeBytes(of: significand, as: UInt64.self)
        p.storeBytes(of: UInt64(signExponent), toByteOffset: 8, as: UInt64.self)
    }

    /// The full 16-bit tag word (2 bits per physical register: valid, zero, special, empty).
    func fullTagWord() -> UInt16 {
        var w: UInt16 = 0
        for k in 0..<8 {
            let t: UInt16
            if fpu.pointee.ftw & (1 << UInt8(k)) == 0 {
                t = 3
            } else {
                let (sig, se) = physicalBits(k)
                let e = se & 0x7FFF
                if e == 0 && sig == 0 { t = 1 } else if e == 0x7FFF || e == 0 || sig >> 63 == 0 { t = 2 } else { t = 0 }
            }
            w |= t << UInt16(2 * k)
        }
        return w
    }

    func setFullTagWord(_ w: UInt16) {
        var t: UInt8 = 0
        for k in 0..<8 where (w >> UInt16(2 * k)) & 3 != 3 { t |= 1 << UInt8(k) }
        fpu.pointee.ftw = t
    }

    /// Checks that `bytes` at `la` can be written before the first store.
    func probeWrite(_ la: UInt64, _ bytes: Int) throws(X86Exception) {
        _ = try translate(la, .write)
        _ = try translate(la &+ UInt64(bytes - 1), .write)
    }

    /// FNSTENV: 28-byte image (14-byte with a 16-bit operand size).
    func storeEnvironment(_ la: UInt64, size: UInt8) throws(X86Exception) {
        let f = fpu
        if size == 1 {
            try probeWrite(la, 14)
            try writeLinear(la, 1, UInt64(f.pointee.fcw))
            try writeLinear(la &+ 2, 1, UInt64(reportedFSW))
            try writeLinear(la &+ 4, 1, UInt64(fullTagWord()))
            try writeLinear(la &+ 6, 1, f.pointee.fip & 0xFFFF)
            try writeLinear(la &+ 8, 1, UInt64(f.pointee.fcs))
            try writeLinear(la &+ 10, 1, f.pointee.fdp & 0xFFFF)
            try writeLinear(la &+ 12, 1, UInt64(f.pointee.fds))
            return
        }
        try probeWrite(la, 28)
        try writeLinear(la, 2, 0xFFFF_0000 | UInt64(f.pointee.fcw))
        try writeLinear(la &+ 4, 2, 0xFFFF_0000 | UInt64(reportedFSW))
        try writeLinear(la &+ 8, 2, 0xFFFF_0000 | UInt64(fullTagWord()))
        try writeLinear(la &+ 12, 2, f.pointee.fip & 0xFFFF_FFFF)
        try writeLinear(la &+ 16, 2, UInt64(f.pointee.fcs) | (UInt64(f.pointee.fop & 0x7FF) << 16))
        try writeLinear(la &+ 20, 2, f.pointee.fdp & 0xFFFF_FFFF)
        try writeLinear(la &+ 24, 2, 0xFFFF_0000 | UInt64(f.pointee.fds))
    }

    func loadEnvironment(_ la: UInt64, size: UInt8) throws(X86Exception) {
        let f = fpu
        let step: UInt64 = size == 1 ? 2 : 4
        let fcw = try readLinear(la, 1), fsw = try readLinear(la &+ step, 1), tag = try readLinear(la &+ 2 * step, 1)
        let fip = try readLinear(la &+ 3 * step, size == 1 ? 1 : 2)
        let fdp = try readLinear(la &+ 5 * step, size == 1 ? 1 : 2)
        f.pointee.fcw = UInt16(truncatingIfNeeded: fcw)
        f.pointee.fsw = UInt16(truncatingIfNeeded: fsw)
        setFullTagWord(UInt16(truncatingIfNeeded: tag))
        f.pointee.fip = fip; f.pointee.fdp = fdp
    }

    /// FNSAVE: the environment, then ST(0)..ST(7) as 10-byte values; then FNINIT.
    func saveState(_ la: UInt64, size: UInt8) throws(X86Exception) {
        let env: UInt64 = size == 1 ? 14 : 28
        try probeWrite(la, Int(env) + 80)
        try storeEnvironment(la, size: size)
        for k in 0..<8 {
            let (sig, se) = physicalBits((fpuTop + k) & 7)
            let a = la &+ env &+ UInt64(10 * k)
            try writeLinear(a, 3, sig)
            try writeLinear(a &+ 8, 1, UInt64(se))
        }
        fpuInit()
    }

    func restoreState(_ la: UInt64, size: UInt8) throws(X86Exception) {
        let env: UInt64 = size == 1 ? 14 : 28
        var regs: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                   UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        // Read everything first: a fault must leave the FPU unchanged.
        try withUnsafeMutableBytes(of: &regs) { (b: UnsafeMutableRawBufferPointer) throws(X86Exception) in
            for k in 0..<8 {
                let a = la &+ env &+ UInt64(10 * k)
                b.storeBytes(of: try readLinear(a, 3), toByteOffset: 16 * k, as: UInt64.self)
                b.storeBytes(of: try readLinear(a &+ 8, 1), toByteOffset: 16 * k + 8, as: UInt64.self)
            }
        }
        try loadEnvironment(la, size: size)
        withUnsafeBytes(of: &regs) { b in
            for k in 0..<8 {
                setPhysicalBits((fpuTop + k) & 7, b.load(fromByteOffset: 16 * k, as: UInt64.self),
                                UInt16(truncatingIfNeeded: b.load(fromByteOffset: 16 * k + 8, as: UInt64.self)))
            }
        }
    }

    /// FXSAVE/FXRSTOR/LDMXCSR/STMXCSR (0F AE /0-/3).
    func executeFXState(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        let la = linearAddress(i)
        switch i.pointee.op {
        case .fxsave, .fxrstor:
            if s.pointee.cr0 & (CR0.em | CR0.ts) != 0 { throw X86Exception(X86Exception.deviceNotAvailable) }
            guard la & 15 == 0 else { throw X86Exception.gp(0) }
            let wide = i.pointee.prefixes & Prefix.rexW != 0
            if i.pointee.op == .fxsave { try fxsave(la, wide: wide) } else { try fxrstor(la, wide: wide) }
        case .ldmxcsr:
            try checkSSE()
            let v = UInt32(truncatingIfNeeded: try readLinear(la, 2))
            guard v & ~FPUState.mxcsrMask == 0 else { throw X86Exception.gp(0) }
            fpu.pointee.mxcsr = v
        default:
            try checkSSE()
            try writeLinear(la, 2, UInt64(fpu.pointee.mxcsr))
        }
    }

    /// Registers in the image: XMM0-15 in 64-bit mode, XMM0-7 otherwise.
    var fxsaveXMMCount: Int { st.pointee.codeMode == .long64 ? 16 : 8 }

    func fxsave(_ la: UInt64, wide: Bool) throws(X86Exception) {
        let f = fpu
        try probeWrite(la, 512)
        try writeLinear(la, 1, UInt64(f.pointee.fcw))
        try writeLinear(la &+ 2, 1, UInt64(reportedFSW))
        try writeLinear(la &+ 4, 1, UInt64(f.pointee.ftw))
        try writeLinear(la &+ 6, 1, UInt64(f.pointee.fop & 0x7FF))
        if wide {
            try writeLinear(la &+ 8, 3, f.pointee.fip)
            try writeLinear(la &+ 16, 3, f.pointee.fdp)
        } else {
            try writeLinear(la &+ 8, 3, (f.pointee.fip & 0xFFFF_FFFF) | (UInt64(f.pointee.fcs) << 32))
            try writeLinear(la &+ 16, 3, (f.pointee.fdp & 0xFFFF_FFFF) | (UInt64(f.pointee.fds) << 32))
        }
        try writeLinear(la &+ 24, 2, UInt64(f.pointee.mxcsr))
        try writeLinear(la &+ 28, 2, UInt64(FPUState.mxcsrMask))
        for k in 0..<8 {
            let (sig, se) = physicalBits((fpuTop + k) & 7)
            let a = la &+ 32 &+ UInt64(16 * k)
            try writeLinear(a, 3, sig)
            try writeLinear(a &+ 8, 3, UInt64(se))
        }
        for k in 0..<fxsaveXMMCount {
            let a = la &+ 160 &+ UInt64(16 * k)
            try writeLinear(a, 3, xmmWords[2 * k])
            try writeLinear(a &+ 8, 3, xmmWords[2 * k + 1])
        }
    }

    func fxrstor(_ la: UInt64, wide: Bool) throws(X86Exception) {
        let mx = UInt32(truncatingIfNeeded: try readLinear(la &+ 24, 2))
        guard mx & ~FPUState.mxcsrMask == 0 else { throw X86Exception.gp(0) }
        // Fault on either page before any state changes.
        _ = try translate(la, .read)
        _ = try translate(la &+ 511, .read)
        let f = fpu
        f.pointee.fcw = UInt16(truncatingIfNeeded: try readLinear(la, 1))
        f.pointee.fsw = UInt16(truncatingIfNeeded: try readLinear(la &+ 2, 1))
        f.pointee.ftw = UInt8(truncatingIfNeeded: try readLinear(la &+ 4, 0))
        f.pointee.fop = UInt16(truncatingIfNeeded: try readLinear(la &+ 6, 1)) & 0x7FF
        let ip = try readLinear(la &+ 8, 3), dp = try readLinear(la &+ 16, 3)
        if wide {
            f.pointee.fip = ip; f.pointee.fdp = dp
        } else {
            f.pointee.fip = ip & 0xFFFF_FFFF; f.pointee.fcs = UInt16(truncatingIfNeeded: ip >> 32)
            f.pointee.fdp = dp & 0xFFFF_FFFF; f.pointee.fds = UInt16(truncatingIfNeeded: dp >> 32)
        }
        f.pointee.mxcsr = mx
        for k in 0..<8 {
            let a = la &+ 32 &+ UInt64(16 * k)
            let sig = try readLinear(a, 3), se = try readLinear(a &+ 8, 1)
            setPhysicalBits((fpuTop + k) & 7, sig, UInt16(truncatingIfNeeded: se))
        }
        for k in 0..<fxsaveXMMCount {
            let a = la &+ 160 &+ UInt64(16 * k)
            xmmWords[2 * k] = try readLinear(a, 3)
            xmmWords[2 * k + 1] = try readLinear(a &+ 8, 3)
        }
    }
}
