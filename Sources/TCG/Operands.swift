import Synchronization

/// Operand access shared by the executors: effective addresses, r/m operands, the stack.
extension X86CPU {
    /// The linear address of an instruction's memory operand.
    @inline(__always) func linearAddress(_ i: UnsafeMutablePointer<Instruction>) -> UInt64 {
        st.pointee.operandAddress(i, gpr)
    }

    /// seg:offset to linear, with the offset truncated to the address size.
    @inline(__always) func addressOf(_ offset: UInt64, seg: UInt8, addrSize: UInt8) -> UInt64 {
        st.pointee.linear(offset, seg: seg, addrSize: addrSize)
    }

    /// The r/m operand's value.
    @inline(__always) func readRM(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8) throws(X86Exception) -> UInt64 {
        if i.pointee.isMem { return try readLinear(linearAddress(i), size) }
        return reg(i.pointee.rm, size)
    }

    @inline(__always) func writeRM(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8, _ v: UInt64) throws(X86Exception) {
        if i.pointee.isMem { try writeLinear(linearAddress(i), size, v) } else { setReg(i.pointee.rm, size, v) }
    }

    /// Read-modify-write of the r/m operand: `body` maps the old value to the new one (and sets
    /// flags); `store` false only reads. With LOCK on RAM the update is one host atomic operation.
    @inline(__always)
    func modifyRM(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8, store: Bool = true,
                  _ body: (UInt64) -> UInt64) throws(X86Exception) {
        if !i.pointee.isMem {
            let r = body(reg(i.pointee.rm, size))
            if store { setReg(i.pointee.rm, size, r) }
            return
        }
        let la = linearAddress(i)
        if !store {
            _ = body(try readLinear(la, size))
            return
        }
        try modifyLinear(la, size, locked: i.pointee.prefixes & Prefix.lock != 0, body)
    }

    @inline(__always)
    func modifyLinear(_ la: UInt64, _ size: UInt8, locked: Bool, _ body: (UInt64) -> UInt64) throws(X86Exception) {
        let n = 1 << Int(size)
        let e = tlbSlot(la)
        let off = Int(la & 0xFFF)
        if !locked, e.pointee.writeTag == ((la >> 12) << 1) | userBit, off <= 4096 - n, let h = e.pointee.host {
            let p = h + off
            switch size {
            case 0: p.storeBytes(of: UInt8(truncatingIfNeeded: body(UInt64(p.load(as: UInt8.self)))), as: UInt8.self)
            case 1: p.storeBytes(of: UInt16(truncatingIfNeeded: body(UInt64(p.loadUnaligned(as: UInt16.self)))), as: UInt16.self)
            case 2: p.storeBytes(of: UInt32(truncatingIfNeeded: body(UInt64(p.loadUnaligned(as: UInt32.self)))), as: UInt32.self)
            default: p.storeBytes(of: body(p.loadUnaligned(as: UInt64.self)), as: UInt64.self)
            }
            return
        }
        // Check write access (both pages) before the read so a fault leaves nothing changed.
        _ = try translate(la, .write)
        if off + n > 4096 { _ = try translate(la &+ UInt64(n - 1), .write) }
        if locked, let p = try atomicPointer(la, n) {
            _ = atomicUpdate(p, size, body)
            return
        }
        let old = try readSlow(la, n, .read)
        try writeSlow(la, n, body(old))
    }

    /// Compare-and-swap loop on naturally aligned RAM; returns the old value.
    @inline(__always)
    func atomicUpdate(_ p: UnsafeMutableRawPointer, _ size: UInt8, _ body: (UInt64) -> UInt64) -> UInt64 {
        switch size {
        case 0:
            let a = p.assumingMemoryBound(to: Atomic<UInt8>.self)
            var old = a.pointee.load(ordering: .relaxed)
            while true {
                let new = UInt8(truncatingIfNeeded: body(UInt64(old)))
                let r = a.pointee.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
                if r.exchanged { return UInt64(old) }
                old = r.original
            }
        case 1:
            let a = p.assumingMemoryBound(to: Atomic<UInt16>.self)
            var old = a.pointee.load(ordering: .relaxed)
            while true {
                let new = UInt16(truncatingIfNeeded: body(UInt64(old)))
                let r = a.pointee.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
                if r.exchanged { return UInt64(old) }
                old = r.original
            }
        case 2:
            let a = p.assumingMemoryBound(to: Atomic<UInt32>.self)
            var old = a.pointee.load(ordering: .relaxed)
            while true {
                let new = UInt32(truncatingIfNeeded: body(UInt64(old)))
                let r = a.pointee.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
                if r.exchanged { return UInt64(old) }
                old = r.original
            }
        default:
            let a = p.assumingMemoryBound(to: Atomic<UInt64>.self)
            var old = a.pointee.load(ordering: .relaxed)
            while true {
                let new = body(old)
                let r = a.pointee.compareExchange(expected: old, desired: new, ordering: .sequentiallyConsistent)
                if r.exchanged { return old }
                old = r.original
            }
        }
    }

    // MARK: - Stack

    @inline(__always) func stackLinear(_ sp: UInt64) -> UInt64 {
        switch stackAddrSize {
        case 3: return sp
        case 2: return (st.pointee.ss.base &+ (sp & 0xFFFF_FFFF)) & 0xFFFF_FFFF
        default: return (st.pointee.ss.base &+ (sp & 0xFFFF)) & 0xFFFF_FFFF
        }
    }

    @inline(__always) func readStack(_ sp: UInt64, _ size: UInt8) throws(X86Exception) -> UInt64 {
        try readLinear(stackLinear(sp), size)
    }

    /// Sets RSP/ESP/SP according to the stack address size.
    @inline(__always) func setStackPointer(_ v: UInt64) {
        switch stackAddrSize {
        case 3: gpr[Int(Reg.rsp)] = v
        case 2: gpr[Int(Reg.rsp)] = v & 0xFFFF_FFFF
        default: gpr[Int(Reg.rsp)] = (gpr[Int(Reg.rsp)] & ~0xFFFF) | (v & 0xFFFF)
        }
    }

    @inline(__always) func push(_ v: UInt64, size: UInt8) throws(X86Exception) {
        let sp = gpr[Int(Reg.rsp)] &- (UInt64(1) << UInt64(size))
        try writeLinear(stackLinear(sp), size, v)
        setStackPointer(sp)
    }

    @inline(__always) func pop(size: UInt8) throws(X86Exception) -> UInt64 {
        let sp = gpr[Int(Reg.rsp)]
        let v = try readLinear(stackLinear(sp), size)
        setStackPointer(sp &+ (UInt64(1) << UInt64(size)))
        return v
    }
}
