/// How an event reaches the CPU (SDM Vol. 3 §6.4-6.5): it decides the return address, the
/// gate DPL check and the EXT bit of error codes.
enum EventKind { case fault, software, softwareException, external }

extension X86CPU {
    /// Contributory exceptions (SDM Vol. 3 Table 6-4).
    static func isContributory(_ v: UInt8) -> Bool { v == 0 || (v >= 10 && v <= 13) }

    /// Delivers an exception or interrupt, turning nested faults into #DF and a fault while
    /// delivering #DF into a triple fault. Returns false on a triple fault (shutdown).
    @discardableResult
    func deliverEvent(vector: UInt8, errorCode: UInt32?, kind: EventKind) -> Bool {
        var vec = vector, code = errorCode, k = kind
        for _ in 0..<4 {
            do {
                try deliverOnce(vec, code, k)
                st.pointee.breakBlock = true
                return true
            } catch {
                let n = error.vector
                if vec == X86Exception.doubleFault {
                    st.pointee.tripleFaulted = true
                    return false
                }
                let benign = !(Self.isContributory(vec) || vec == X86Exception.pageFault)
                if !benign && (Self.isContributory(n) || (vec == X86Exception.pageFault && n == X86Exception.pageFault)) {
                    vec = X86Exception.doubleFault; code = 0
                } else {
                    vec = n; code = error.hasErrorCode ? error.errorCode : nil
                }
                k = .fault
            }
        }
        st.pointee.tripleFaulted = true
        return false
    }

    /// Reads with supervisor rights (descriptor tables, TSS, IDT: implicit supervisor accesses).
    func readSystem(_ la: UInt64, _ size: UInt8) throws(X86Exception) -> UInt64 {
        let saved = st.pointee.cpl
        st.pointee.cpl = 0
        defer { st.pointee.cpl = saved }
        return try readLinear(la, size)
    }

    func writeSystem(_ la: UInt64, _ size: UInt8, _ v: UInt64) throws(X86Exception) {
        let saved = st.pointee.cpl
        st.pointee.cpl = 0
        defer { st.pointee.cpl = saved }
        try writeLinear(la, size, v)
    }

    func deliverOnce(_ vector: UInt8, _ errorCode: UInt32?, _ kind: EventKind) throws(X86Exception) {
        let s = st
        s.pointee.halted = false
        if s.pointee.cr0 & CR0.pe == 0 {
            try deliverReal(vector)
            return
        }
        guard s.pointee.efer & EFER.lma != 0 else {
            // 32-bit protected-mode gates are not implemented: nothing in the 64-bit boot paths
            // takes an exception before long mode.
            throw X86Exception.gp(UInt32(vector) * 8 + 2)
        }
        let ext: UInt32 = kind == .external ? 1 : 0
        let idtCode = UInt32(vector) * 8 + 2 + ext
        let off = UInt64(vector) * 16
        guard off + 15 <= UInt64(s.pointee.idtLimit) else { throw X86Exception.gp(idtCode) }
        let lo = try readSystem(s.pointee.idtBase &+ off, 3)
        let hi = try readSystem(s.pointee.idtBase &+ off &+ 8, 3)
        let type = (lo >> 40) & 0x1F
        guard type == 0xE || type == 0xF else { throw X86Exception.gp(idtCode) }
        let gateDPL = UInt8((lo >> 45) & 3)
        let cpl = s.pointee.cpl
        if (kind == .software || kind == .softwareException) && gateDPL < cpl { throw X86Exception.gp(idtCode) }
        guard lo & (1 << 47) != 0 else { throw X86Exception.np(idtCode) }
        let selector = UInt16(truncatingIfNeeded: lo >> 16)
        let target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | (hi << 32)
        let ist = Int((lo >> 32) & 7)
        guard selector & 0xFFFC != 0 else { throw X86Exception.gp(ext) }
        let selCode = UInt32(selector & 0xFFFC) + ext
        let desc = try readDescriptor(selector, errorExt: ext)
        let cs = SegmentCache.fromDescriptor(selector: selector, low: desc)
        guard cs.attributes & 0x18 == 0x18, cs.long, !cs.defaultBig else { throw X86Exception.gp(selCode) }
        let conforming = cs.attributes & 4 != 0
        guard cs.dpl <= cpl else { throw X86Exception.gp(selCode) }
        guard cs.present else { throw X86Exception.np(selCode) }
        let newCPL = conforming ? cpl : cs.dpl

        var rsp: UInt64
        if ist != 0 {
            rsp = try readTSS64(0x24 + 8 * UInt64(ist - 1))
        } else if newCPL < cpl {
            rsp = try readTSS64(4 + 8 * UInt64(newCPL))
        } else {
            rsp = gpr[Int(Reg.rsp)]
        }
        guard Self.isCanonical(rsp) && Self.isCanonical(target) else { throw X86Exception.gp(0) }
        rsp &= ~0xF
        var rflags = s.pointee.currentRFlags()
        // SDM Vol. 3 §18.3.1.1: the RFLAGS image of a fault-class exception has RF set (so that
        // the faulting instruction restarts past its instruction breakpoint); #DB keeps the
        // current RF, traps and interrupts push it as it is, aborts do not return.
        if Self.pushesResumeFlag(vector, kind) { rflags |= RFlags.rf }
        var frame: [UInt64] = [UInt64(s.pointee.ss.selector), gpr[Int(Reg.rsp)], rflags, UInt64(s.pointee.cs.selector), s.pointee.rip]
        if let errorCode { frame.append(UInt64(errorCode)) }
        // Write the frame with the new privilege's rights before changing any register.
        let saved = s.pointee.cpl
        s.pointee.cpl = newCPL
        do {
            for v in frame {
                rsp &-= 8
                try writeLinear(rsp, 3, v)
            }
        } catch {
            s.pointee.cpl = saved
            throw error
        }
        if newCPL < cpl {
            s.pointee.ss = SegmentCache(selector: UInt16(newCPL), base: 0, limit: 0xFFFF_FFFF,
                                        attributes: 0x4093 | (UInt16(newCPL) << 5))
        }
        var newCS = cs
        newCS.selector = (selector & ~3) | UInt16(newCPL)
        s.pointee.cs = newCS
        gpr[Int(Reg.rsp)] = rsp
        s.pointee.rip = target
        var f = s.pointee.rflags & ~(RFlags.tf | RFlags.nt | RFlags.rf | RFlags.vm)
        if type == 0xE { f &= ~RFlags.if }
        s.pointee.rflags = f
        updateMode()
    }

    /// Whether delivering `vector` as `kind` pushes RF = 1: fault-class exceptions other than
    /// #DB (NMI, #DF and #MC are not faults).
    static func pushesResumeFlag(_ vector: UInt8, _ kind: EventKind) -> Bool {
        kind == .fault && vector != 1 && vector != 2 && vector != X86Exception.doubleFault && vector != 18
    }

    /// SDM Vol. 3 §6.15 (#SS): in 64-bit mode a non-canonical address in a memory reference
    /// through SS (an RSP or RBP base, an SS prefix, or the stack of push/pop/call/ret) raises
    /// #SS(0), not #GP(0). The page walk only sees a linear address, so the #GP(0) it raised is
    /// corrected here from the instruction.
    func stackSegmentFault(_ error: X86Exception, _ i: UnsafeMutablePointer<Instruction>) -> X86Exception {
        guard error.vector == X86Exception.generalProtection, error.errorCode == 0,
              st.pointee.codeMode == .long64 else { return error }
        if i.pointee.isMem && i.pointee.seg == 2 && !Self.isCanonical(linearAddress(i)) { return X86Exception.ss(0) }
        switch i.pointee.op {
        case .pushRM, .pushImm, .popRM, .pushSreg, .popSreg, .pushf, .popf, .callRel, .callRM, .ret, .retf,
             .callFarM, .iret:
            let sp = gpr[Int(Reg.rsp)]
            if !Self.isCanonical(sp) || !Self.isCanonical(sp &- 8) { return X86Exception.ss(0) }
        case .leave:
            if !Self.isCanonical(gpr[Int(Reg.rbp)]) { return X86Exception.ss(0) }
        case .enter:  // pushes through RSP, copies frame pointers through RBP
            let sp = gpr[Int(Reg.rsp)], bp = gpr[Int(Reg.rbp)]
            if !Self.isCanonical(sp) || !Self.isCanonical(sp &- 8) || !Self.isCanonical(bp) || !Self.isCanonical(bp &- 8) {
                return X86Exception.ss(0)
            }
        default: break
        }
        return error
    }

    /// Instructions after which no single-step trap follows: they deliver an event (clearing TF
    /// on the way into the handler) or enter the kernel through SYSCALL's flag mask.
    static func deliversItsOwnEvent(_ op: Op) -> Bool {
        switch op {
        case .int3, .intN, .int1, .into, .syscall: return true
        default: return false
        }
    }

    /// MOV SS and POP SS hold back a single-step trap until the next instruction has run (SDM
    /// Vol. 3 §6.8.3): the trap then reports both.
    static func delaysSingleStep(_ i: UnsafeMutablePointer<Instruction>) -> Bool {
        (i.pointee.op == .movSregRM || i.pointee.op == .popSreg) && i.pointee.reg == UInt8(SegReg.ss)
    }

    static func isCanonical(_ a: UInt64) -> Bool {
        let top = Int64(bitPattern: a) >> 47
        return top == 0 || top == -1
    }

    /// A 64-bit field of the current 64-bit TSS (RSPn, ISTn).
    func readTSS64(_ offset: UInt64) throws(X86Exception) -> UInt64 {
        let tr = st.pointee.tr
        guard offset + 7 <= UInt64(tr.limit) else { throw X86Exception.ts(UInt32(tr.selector & 0xFFFC)) }
        return try readSystem(tr.base &+ offset, 3)
    }

    /// Real-mode delivery through the interrupt vector table (SDM Vol. 3 §20.1.4).
    func deliverReal(_ vector: UInt8) throws(X86Exception) {
        let s = st
        let off = UInt64(vector) * 4
        guard off + 3 <= UInt64(s.pointee.idtLimit) else { throw X86Exception.gp(0) }
        let entry = try readLinear(s.pointee.idtBase &+ off, 2)
        let flags = s.pointee.currentRFlags()
        try push(flags & 0xFFFF, size: 1)
        try push(UInt64(s.pointee.cs.selector), size: 1)
        try push(s.pointee.rip & 0xFFFF, size: 1)
        let sel = UInt16(truncatingIfNeeded: entry >> 16)
        s.pointee.cs.selector = sel
        s.pointee.cs.base = UInt64(sel) << 4
        s.pointee.rip = entry & 0xFFFF
        s.pointee.rflags &= ~(RFlags.if | RFlags.tf | RFlags.ac)
    }
}
