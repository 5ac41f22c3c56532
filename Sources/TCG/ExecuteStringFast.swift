import Glibc

extension X86CPU {
    /// A host pointer to the RAM page holding `la` if the software TLB lets `access` touch it
    /// without a walk (filling the entry first). nil: MMIO, or a page with decoded code (stores to
    /// it must invalidate blocks), so the caller takes the element-by-element path.
    @inline(__always)
    func directPage(_ la: UInt64, _ access: Access) throws(X86Exception) -> UnsafeMutableRawPointer? {
        let key = ((la >> 12) << 1) | userBit
        let e = tlbSlot(la)
        func hit() -> Bool { access == .write ? e.pointee.writeTag == key : e.pointee.readTag == key }
        if !hit() {
            _ = try translate(la, access)
            if !hit() { return nil }
        }
        return e.pointee.host
    }

    /// REP MOVS and REP STOS going forward (DF=0), as many elements as fit in the current source
    /// and destination pages at once (SDM Vol. 2B "REP": the iterations are architecturally
    /// separate, but with both pages translated first and no device or code page involved, doing
    /// them together is indistinguishable). Linux clears and copies pages this way, so element by
    /// element cost most of a page's worth of TLB lookups.
    /// Returns false when nothing was done: the caller runs one element the general way.
    @inline(__always)
    func repStringChunk(kind: UInt8, size: UInt8, addrSize a: UInt8, amask: UInt64, srcSeg: UInt8,
                        budget: inout Int) throws(X86Exception) -> Bool {
        let n = 1 << Int(size)
        let count = gpr[1] & amask
        let di = gpr[Int(Reg.rdi)] & amask
        let dla = addressOf(di, seg: 0, addrSize: a)
        var elems = (4096 - Int(dla & 0xFFF)) / n
        var room = UInt64(elems)
        if a == 2 { room = min(room, (0x1_0000_0000 - di) / UInt64(n)) }
        var src: UnsafeMutableRawPointer? = nil
        var si: UInt64 = 0
        if kind == 0 {
            si = gpr[Int(Reg.rsi)] & amask
            let sla = addressOf(si, seg: srcSeg, addrSize: a)
            elems = min(elems, (4096 - Int(sla & 0xFFF)) / n)
            room = min(room, UInt64(elems))
            if a == 2 { room = min(room, (0x1_0000_0000 - si) / UInt64(n)) }
            guard room > 0, let h = try directPage(sla, .read) else { return false }
            src = h + Int(sla & 0xFFF)
        }
        guard room > 0, let dh = try directPage(dla, .write) else { return false }
        let dst = dh + Int(dla & 0xFFF)
        let k = Int(min(room, count, UInt64(max(budget, 1))))
        let bytes = k << Int(size)
        if let src {
            let gap = dst > src ? dst - src : src - dst
            if gap >= bytes || dst < src {
                // Disjoint, or copying downwards: a forward element loop and memmove agree.
                memmove(dst, src, bytes)
            } else {
                // Overlapping upwards: element by element, each read whole before it is stored (a
                // byte loop differs when the gap is smaller than an element: found by
                // DifferentialKVMTests with rep movsd, rdi = rsi + 2).
                for j in 0..<k { memmove(dst + (j << Int(size)), src + (j << Int(size)), n) }
            }
            advance(Reg.rsi, UInt64(bytes), a)
        } else {
            let v = gpr[0]
            switch size {
            case 0: memset(dst, Int32(truncatingIfNeeded: v & 0xFF), bytes)
            case 1: for j in 0..<k { dst.storeBytes(of: UInt16(truncatingIfNeeded: v), toByteOffset: j << 1, as: UInt16.self) }
            case 2: for j in 0..<k { dst.storeBytes(of: UInt32(truncatingIfNeeded: v), toByteOffset: j << 2, as: UInt32.self) }
            default: for j in 0..<k { dst.storeBytes(of: v, toByteOffset: j << 3, as: UInt64.self) }
            }
        }
        advance(Reg.rdi, UInt64(bytes), a)
        setReg(Reg.rcx, a, (count &- UInt64(k)) & amask)
        budget -= k
        return true
    }
}
