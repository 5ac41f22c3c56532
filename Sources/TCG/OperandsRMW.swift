/// Read-modify-write of an r/m operand in two steps, without a closure: closures that call
/// methods on the CPU retain and release it on every instruction, which cost more than the
/// instruction itself. LOCKed forms keep using `modifyRM` (one host atomic operation).
struct RMWTarget {
    /// 0 register, 1 host pointer into RAM (a TLB hit), 2 linear address (slow path).
    var kind: UInt8
    var host: UnsafeMutableRawPointer?
    var la: UInt64
}

extension X86CPU {
    /// Reads the operand and checks that it can be written (a fault leaves nothing changed).
    @inline(__always)
    func rmwRead(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8) throws(X86Exception) -> (UInt64, RMWTarget) {
        if !i.pointee.isMem { return (reg(i.pointee.rm, size), RMWTarget(kind: 0, host: nil, la: 0)) }
        let la = linearAddress(i)
        let n = 1 << Int(size)
        let e = tlbSlot(la)
        let off = Int(la & 0xFFF)
        if e.pointee.writeTag == ((la >> 12) << 1) | userBit, off <= 4096 - n, let h = e.pointee.host {
            let p = h + off
            let v: UInt64
            switch size {
            case 0: v = UInt64(p.load(as: UInt8.self))
            case 1: v = UInt64(p.loadUnaligned(as: UInt16.self))
            case 2: v = UInt64(p.loadUnaligned(as: UInt32.self))
            default: v = p.loadUnaligned(as: UInt64.self)
            }
            return (v, RMWTarget(kind: 1, host: p, la: la))
        }
        _ = try translate(la, .write)
        if off + n > 4096 { _ = try translate(la &+ UInt64(n - 1), .write) }
        return (try readSlow(la, n, .read), RMWTarget(kind: 2, host: nil, la: la))
    }

    @inline(__always)
    func rmwWrite(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8, _ t: RMWTarget, _ v: UInt64) throws(X86Exception) {
        switch t.kind {
        case 0: setReg(i.pointee.rm, size, v)
        case 1:
            guard let p = t.host else { return }
            switch size {
            case 0: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
            case 1: p.storeBytes(of: UInt16(truncatingIfNeeded: v), as: UInt16.self)
            case 2: p.storeBytes(of: UInt32(truncatingIfNeeded: v), as: UInt32.self)
            default: p.storeBytes(of: v, as: UInt64.self)
            }
        default: try writeSlow(t.la, 1 << Int(size), v)
        }
    }

    @inline(__always) func isLocked(_ i: UnsafeMutablePointer<Instruction>) -> Bool {
        i.pointee.prefixes & Prefix.lock != 0
    }
}
