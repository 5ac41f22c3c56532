/// Segment loads and far transfers (SDM Vol. 3 ch. 5, Vol. 2 MOV/JMP/CALL/RET/IRET).
extension X86CPU {
    /// The 8-byte descriptor for `selector` from the GDT or LDT; #GP(selector) past the limit.
    func readDescriptor(_ selector: UInt16, errorExt: UInt32 = 0) throws(X86Exception) -> UInt64 {
        let s = st
        let index = UInt64(selector & 0xFFF8)
        let code = UInt32(selector & 0xFFFC) + errorExt
        let base: UInt64, limit: UInt64
        if selector & 4 != 0 {
            guard s.pointee.ldtr.present else { throw X86Exception.gp(code) }
            base = s.pointee.ldtr.base; limit = UInt64(s.pointee.ldtr.limit)
        } else {
            base = s.pointee.gdtBase; limit = UInt64(s.pointee.gdtLimit)
        }
        guard index + 7 <= limit else { throw X86Exception.gp(code) }
        return try readSystem(base &+ index, 3)
    }

    /// Sets the descriptor's accessed bit in memory, as a segment load does.
    func markAccessed(_ selector: UInt16, _ desc: UInt64) throws(X86Exception) {
        guard desc & (1 << 40) == 0 else { return }
        let base = selector & 4 != 0 ? st.pointee.ldtr.base : st.pointee.gdtBase
        try writeSystem(base &+ UInt64(selector & 0xFFF8) &+ 5, 0, (desc >> 40) | 1)
    }

    /// MOV/POP to DS, ES, FS, GS or SS (SDM Vol. 2 MOV "Operation").
    func loadSegment(_ n: UInt8, _ selector: UInt16) throws(X86Exception) {
        let s = st
        if s.pointee.cr0 & CR0.pe == 0 || s.pointee.rflags & RFlags.vm != 0 {
            var seg = segment(n)
            seg.selector = selector
            seg.base = UInt64(selector) << 4
            setSegment(n, seg)
            return
        }
        let cpl = s.pointee.cpl
        let rpl = UInt8(selector & 3)
        let code = UInt32(selector & 0xFFFC)
        if selector & 0xFFFC == 0 {
            if n == UInt8(SegReg.ss) {
                // A null SS is allowed only in 64-bit mode below CPL 3, with RPL = CPL.
                guard s.pointee.codeMode == .long64 && cpl != 3 && rpl == cpl else { throw X86Exception.gp(0) }
                setSegment(n, SegmentCache(selector: selector, base: 0, limit: 0, attributes: 0x4093 | (UInt16(cpl) << 5)))
                return
            }
            // A null selector: the segment is unusable (P clear); 64-bit FS/GS keep their base.
            var seg = SegmentCache(selector: selector, base: 0, limit: 0, attributes: 0)
            if s.pointee.codeMode == .long64 && (n == 4 || n == 5) { seg.base = segment(n).base }
            setSegment(n, seg)
            return
        }
        let desc = try readDescriptor(selector)
        let seg = SegmentCache.fromDescriptor(selector: selector, low: desc)
        let isCodeOrData = seg.attributes & 0x10 != 0
        let isCode = seg.attributes & 8 != 0
        let readableOrWritable = seg.attributes & 2 != 0
        if n == UInt8(SegReg.ss) {
            guard isCodeOrData, !isCode, readableOrWritable, rpl == cpl, seg.dpl == cpl else { throw X86Exception.gp(code) }
            guard seg.present else { throw X86Exception.ss(code) }
        } else {
            guard isCodeOrData, !isCode || readableOrWritable else { throw X86Exception.gp(code) }
            let conforming = isCode && seg.attributes & 4 != 0
            if !conforming { guard rpl <= seg.dpl && cpl <= seg.dpl else { throw X86Exception.gp(code) } }
            guard seg.present else { throw X86Exception.np(code) }
        }
        try markAccessed(selector, desc)
        var loaded = seg
        loaded.attributes |= 1
        setSegment(n, loaded)
    }

    /// Checks and loads a code segment for a far JMP/CALL/RET to the same or (for RET/IRET) an
    /// outer privilege level. Call gates and task switches are not implemented (#GP).
    func codeSegment(_ selector: UInt16, forReturn: Bool) throws(X86Exception) -> SegmentCache {
        let s = st
        let code = UInt32(selector & 0xFFFC)
        guard selector & 0xFFFC != 0 else { throw X86Exception.gp(0) }
        let desc = try readDescriptor(selector)
        var seg = SegmentCache.fromDescriptor(selector: selector, low: desc)
        guard seg.attributes & 0x18 == 0x18 else { throw X86Exception.gp(code) }
        let cpl = s.pointee.cpl
        let rpl = UInt8(selector & 3)
        let conforming = seg.attributes & 4 != 0
        if forReturn {
            guard rpl >= cpl else { throw X86Exception.gp(code) }
            if conforming { guard seg.dpl <= rpl else { throw X86Exception.gp(code) } }
            else { guard seg.dpl == rpl else { throw X86Exception.gp(code) } }
        } else if conforming {
            guard seg.dpl <= cpl else { throw X86Exception.gp(code) }
        } else {
            guard rpl <= cpl && seg.dpl == cpl else { throw X86Exception.gp(code) }
        }
        if seg.long && seg.defaultBig && s.pointee.efer & EFER.lma != 0 { throw X86Exception.gp(code) }
        guard seg.present else { throw X86Exception.np(code) }
        try markAccessed(selector, desc)
        seg.attributes |= 1
        seg.selector = (selector & ~3) | UInt16(forReturn ? rpl : cpl)
        return seg
    }

    /// Far JMP to selector:offset.
    func farJump(_ selector: UInt16, _ offset: UInt64) throws(X86Exception) {
        let s = st
        if s.pointee.cr0 & CR0.pe == 0 {
            s.pointee.cs.selector = selector
            s.pointee.cs.base = UInt64(selector) << 4
            s.pointee.rip = offset & 0xFFFF
            updateMode()
            return
        }
        let seg = try codeSegment(selector, forReturn: false)
        s.pointee.cs = seg
        updateMode()
        s.pointee.rip = offset & ipMask
    }

    /// Far CALL: pushes CS and the return address with the current operand size.
    func farCall(_ selector: UInt16, _ offset: UInt64, size: UInt8) throws(X86Exception) {
        let s = st
        let retCS = UInt64(s.pointee.cs.selector), retIP = s.pointee.rip
        let saveRSP = gpr[Int(Reg.rsp)]
        do {
            try push(retCS, size: size)
            try push(retIP, size: size)
            try farJump(selector, offset)
        } catch {
            gpr[Int(Reg.rsp)] = saveRSP
            throw error
        }
    }

    /// Far RET (RETF imm16): same privilege, or to an outer one (then SS:RSP are popped too).
    func farReturn(size: UInt8, release: UInt64) throws(X86Exception) {
        let s = st
        let bytes = UInt64(1) << UInt64(size)
        let sp = gpr[Int(Reg.rsp)]
        let ip = try readStack(sp, size)
        let sel = UInt16(truncatingIfNeeded: try readStack(sp &+ bytes, size))
        if s.pointee.cr0 & CR0.pe == 0 {
            setStackPointer(sp &+ 2 &* bytes &+ release)
            s.pointee.cs.selector = sel
            s.pointee.cs.base = UInt64(sel) << 4
            s.pointee.rip = ip & 0xFFFF
            return
        }
        let cs = try codeSegment(sel, forReturn: true)
        let outer = UInt8(sel & 3) > s.pointee.cpl
        var newSP = sp &+ 2 &* bytes &+ release
        if outer {
            let outerSP = try readStack(newSP, size)
            let ssSel = UInt16(truncatingIfNeeded: try readStack(newSP &+ bytes, size))
            s.pointee.cs = cs
            updateMode()
            try loadSegment(UInt8(SegReg.ss), ssSel)
            newSP = outerSP &+ release
            gpr[Int(Reg.rsp)] = newSP
        } else {
            s.pointee.cs = cs
            updateMode()
            setStackPointer(newSP)
        }
        s.pointee.rip = ip & ipMask
    }

    /// IRET/IRETD/IRETQ in real mode and long mode (SDM Vol. 2 IRET).
    func interruptReturn(size: UInt8) throws(X86Exception) {
        let s = st
        let bytes = UInt64(1) << UInt64(size)
        let sp = gpr[Int(Reg.rsp)]
        let ip = try readStack(sp, size)
        let sel = UInt16(truncatingIfNeeded: try readStack(sp &+ bytes, size))
        let flags = try readStack(sp &+ 2 &* bytes, size)
        let cpl = s.pointee.cpl
        // IRET ends NMI blocking (SDM Vol. 3 §6.7.1), even one that faults later.
        s.pointee.nmiBlocked = false
        if s.pointee.cr0 & CR0.pe == 0 {
            setStackPointer(sp &+ 3 &* bytes)
            s.pointee.cs.selector = sel
            s.pointee.cs.base = UInt64(sel) << 4
            s.pointee.rip = ip & 0xFFFF
            setRFlags(flags, size: size, cpl: 0)
            return
        }
        guard s.pointee.efer & EFER.lma != 0 else { throw X86Exception.gp(0) }  // 32-bit IRET: not implemented
        guard flags & RFlags.nt == 0 else { throw X86Exception.gp(0) }
        let cs = try codeSegment(sel, forReturn: true)
        let newCPL = UInt8(sel & 3)
        var newSP = sp &+ 3 &* bytes
        var ssSel: UInt16 = 0
        let popStack = s.pointee.codeMode == .long64 || newCPL > cpl
        if popStack {
            let rsp = try readStack(newSP, size)
            ssSel = UInt16(truncatingIfNeeded: try readStack(newSP &+ bytes, size))
            newSP = rsp
        }
        guard Self.isCanonical(ip) || !cs.long else { throw X86Exception.gp(0) }
        s.pointee.cs = cs
        updateMode()
        setRFlags(flags, size: size, cpl: cpl)
        if popStack {
            try loadSegment(UInt8(SegReg.ss), ssSel)
            gpr[Int(Reg.rsp)] = newSP
        } else {
            setStackPointer(newSP)
        }
        s.pointee.rip = ip & ipMask
        if newCPL > cpl {
            // Data segments the outer level may not use become null (SDM Vol. 2 IRET).
            for n: UInt8 in [0, 3, 4, 5] {
                let seg = segment(n)
                let conformingCode = seg.attributes & 0x1C == 0x1C
                if seg.dpl < newCPL && !conformingCode && seg.attributes & 0x10 != 0 {
                    var null = seg
                    null.selector = 0; null.attributes = 0
                    if s.pointee.codeMode == .long64 && (n == 4 || n == 5) { null.base = seg.base }
                    setSegment(n, null)
                }
            }
        }
    }

    /// Writes RFLAGS from POPF/IRET with the privilege rules: IOPL only at CPL 0, IF only when
    /// CPL <= IOPL; VM, VIP, VIF, RF handling kept simple (no virtual-8086 mode).
    func setRFlags(_ value: UInt64, size: UInt8, cpl: UInt8) {
        let s = st
        var changeable = RFlags.writable & ~(RFlags.vm | RFlags.vif | RFlags.vip)
        let iopl = UInt8((s.pointee.rflags >> 12) & 3)
        if cpl > 0 { changeable &= ~RFlags.iopl }
        if cpl > iopl { changeable &= ~RFlags.if }
        if size == 1 { changeable &= 0xFFFF }
        s.pointee.flagOp = .none
        s.pointee.rflags = (s.pointee.rflags & ~changeable) | (value & changeable) | 2
        // Setting TF ends the block so that the interpreter single-steps from the next instruction.
        if value & changeable & RFlags.tf != 0 { s.pointee.breakBlock = true }
    }
}
