/// Stack, branches, calls, software interrupts and string instructions.
extension X86CPU {
    @inline(__always) func branch(_ target: UInt64, _ size: UInt8) {
        switch size {
        case 1: st.pointee.rip = target & 0xFFFF
        case 2: st.pointee.rip = target & 0xFFFF_FFFF
        default: st.pointee.rip = target & ipMask
        }
    }

    func executeControl(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        let size = i.pointee.size
        switch i.pointee.op {
        case .jcc:
            if s.pointee.condition(i.pointee.sub) { branch(s.pointee.rip &+ i.pointee.imm, size) }
        case .jmpRel:
            branch(s.pointee.rip &+ i.pointee.imm, size)
        case .callRel:
            let ret = s.pointee.rip
            try push(ret, size: size)
            branch(ret &+ i.pointee.imm, size)
        case .jmpRM:
            let t = try readRM(i, size)
            if size == 3 && !Self.isCanonical(t) { throw X86Exception.gp(0) }
            branch(t, size)
        case .callRM:
            let t = try readRM(i, size)
            if size == 3 && !Self.isCanonical(t) { throw X86Exception.gp(0) }
            try push(s.pointee.rip, size: size)
            branch(t, size)
        case .ret:
            let t = try pop(size: size)
            if size == 3 && !Self.isCanonical(t) { throw X86Exception.gp(0) }
            if i.pointee.imm != 0 { setStackPointer(gpr[Int(Reg.rsp)] &+ i.pointee.imm) }
            branch(t, size)
        case .loop:
            let cnt = (reg(Reg.rcx, i.pointee.addrSize) &- 1) & sizeMask(i.pointee.addrSize)
            setReg(Reg.rcx, i.pointee.addrSize == 1 ? 1 : i.pointee.addrSize, cnt)
            var take = cnt != 0
            if i.pointee.sub == 0 { take = take && !s.pointee.zeroFlag }
            if i.pointee.sub == 1 { take = take && s.pointee.zeroFlag }
            if take { branch(s.pointee.rip &+ i.pointee.imm, size) }
        case .jrcxz:
            if reg(Reg.rcx, i.pointee.addrSize) == 0 { branch(s.pointee.rip &+ i.pointee.imm, size) }
        case .pushRM:
            let v = try readRM(i, size)
            try push(v, size: size)
        case .pushImm:
            try push(i.pointee.imm, size: size)
        case .popRM:
            // RSP is incremented before a memory destination's address is computed.
            let sp = gpr[Int(Reg.rsp)]
            let v = try readStack(sp, size)
            setStackPointer(sp &+ (UInt64(1) << UInt64(size)))
            do { try writeRM(i, size, v) } catch { gpr[Int(Reg.rsp)] = sp; throw error }
        case .pushSreg:
            try push(UInt64(segment(i.pointee.reg).selector), size: size)
        case .popSreg:
            let sp = gpr[Int(Reg.rsp)]
            let v = try readStack(sp, size)
            try loadSegment(i.pointee.reg, UInt16(truncatingIfNeeded: v))
            setStackPointer(sp &+ (UInt64(1) << UInt64(size)))
            if i.pointee.reg == UInt8(SegReg.ss) { s.pointee.interruptShadow = true }
        case .pushf:
            try push(s.pointee.currentRFlags() & 0x00FC_FFFF, size: size)
        case .popf:
            let v = try pop(size: size)
            setRFlags(v, size: size, cpl: s.pointee.cpl)
        case .leave:
            let bp = gpr[Int(Reg.rbp)]
            let v = try readStack(bp, size)
            setStackPointer(bp &+ (UInt64(1) << UInt64(size)))
            setReg(Reg.rbp, size, v)
        case .enter:
            let frame = i.pointee.imm & 0xFFFF
            let level = i.pointee.imm2 & 31
            let sp0 = gpr[Int(Reg.rsp)]
            do {
                try push(gpr[Int(Reg.rbp)], size: size)
                let frameTemp = gpr[Int(Reg.rsp)]
                if level > 0 {
                    var bp = gpr[Int(Reg.rbp)]
                    let step = UInt64(1) << UInt64(size)
                    for _ in 1..<Int(level) {
                        bp &-= step
                        try push(try readStack(bp, size), size: size)
                    }
                    try push(frameTemp, size: size)
                }
                setReg(Reg.rbp, size, frameTemp)
                setStackPointer(gpr[Int(Reg.rsp)] &- frame)
            } catch {
                gpr[Int(Reg.rsp)] = sp0
                throw error
            }
        case .retf:
            try farReturn(size: s.pointee.codeMode == .long64 && size == 2 && i.pointee.prefixes & Prefix.rexW == 0 ? 2 : size,
                          release: i.pointee.imm)
        case .jmpFarImm:
            try farJump(i.pointee.imm2, i.pointee.imm)
        case .jmpFarM, .callFarM:
            let la = linearAddress(i)
            let off = try readLinear(la, size)
            let sel = UInt16(truncatingIfNeeded: try readLinear(la &+ (UInt64(1) << UInt64(size)), 1))
            if i.pointee.op == .jmpFarM { try farJump(sel, off) } else { try farCall(sel, off, size: size) }
        case .iret:
            try interruptReturn(size: size)
        case .int3:
            softwareInterrupt(3, kind: .softwareException)
        case .intN:
            softwareInterrupt(UInt8(truncatingIfNeeded: i.pointee.imm), kind: .software)
        case .int1:
            softwareInterrupt(1, kind: .softwareException)
        case .into:
            s.pointee.materializeFlags()
            if s.pointee.rflags & RFlags.of != 0 { softwareInterrupt(4, kind: .softwareException) }
        case .ud2, .invalid:
            throw X86Exception.ud
        case .string:
            try executeString(i)
        case .inPort, .outPort:
            try portIO(i)
        default:
            try executeSystem(i)
        }
    }

    /// INT n / INT3 / INTO: delivered with the next instruction as the return address.
    func softwareInterrupt(_ vector: UInt8, kind: EventKind) {
        if !deliverEvent(vector: vector, errorCode: nil, kind: kind) { return }
    }

    // MARK: - Port I/O

    /// Whether the TSS I/O permission bitmap allows `bytes` ports at `port` (SDM Vol. 1 §19.5).
    func checkIOPermission(_ port: UInt16, _ bytes: Int) throws(X86Exception) {
        let s = st
        let iopl = UInt8((s.pointee.rflags >> 12) & 3)
        guard s.pointee.cr0 & CR0.pe != 0, s.pointee.cpl > iopl else { return }
        let tr = s.pointee.tr
        guard tr.limit >= 0x67 else { throw X86Exception.gp(0) }
        let base = try readSystem(tr.base &+ 0x66, 1)
        let byteOff = base &+ UInt64(port >> 3)
        guard byteOff &+ 1 <= UInt64(tr.limit) else { throw X86Exception.gp(0) }
        let bitsWord = try readSystem(tr.base &+ byteOff, 1)
        let mask = ((UInt64(1) << UInt64(bytes)) - 1) << UInt64(port & 7)
        if bitsWord & mask != 0 { throw X86Exception.gp(0) }
    }

    func portIO(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let size = i.pointee.size
        let port = i.pointee.sub == 1 ? UInt16(truncatingIfNeeded: gpr[2]) : UInt16(truncatingIfNeeded: i.pointee.imm)
        let n = 1 << Int(size)
        try checkIOPermission(port, n)
        if i.pointee.op == .inPort {
            setReg(Reg.rax, size, platform.portRead(port, size: n))
        } else {
            platform.portWrite(port, size: n, value: reg(Reg.rax, size))
            afterDeviceWrite()
        }
    }

    // MARK: - Strings

    /// MOVS/CMPS/STOS/LODS/SCAS/INS/OUTS with REP/REPE/REPNE (SDM Vol. 2). A REP instruction
    /// runs in chunks: after 4096 iterations it restarts itself so stops and interrupts get in.
    func executeString(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        let size = i.pointee.size, kind = i.pointee.sub
        let a = i.pointee.addrSize
        let amask = sizeMask(a == 1 ? 1 : (a == 2 ? 2 : 3))
        let step: UInt64 = s.pointee.rflags & RFlags.df != 0 ? 0 &- (UInt64(1) << UInt64(size)) : UInt64(1) << UInt64(size)
        let rep = i.pointee.prefixes & (Prefix.rep | Prefix.repne) != 0
        let repne = i.pointee.prefixes & Prefix.repne != 0
        let srcSeg = i.pointee.seg
        let n = 1 << Int(size)
        if kind >= 5 { try checkIOPermission(UInt16(truncatingIfNeeded: gpr[2]), n) }
        var budget = 4096
        let chunked = rep && (kind == 0 || kind == 2) && (a == 2 || a == 3) && step == UInt64(n)
        while true {
            if rep && gpr[1] & amask == 0 { return }
            if chunked, try repStringChunk(kind: kind, size: size, addrSize: a, amask: amask, srcSeg: srcSeg, budget: &budget) {
                if budget <= 0 && gpr[1] & amask != 0 { s.pointee.rip = s.pointee.currentRIP; return }
                continue
            }
            let si = gpr[Int(Reg.rsi)] & amask, di = gpr[Int(Reg.rdi)] & amask
            var stopOnFlags = false
            switch kind {
            case 0:
                let v = try readLinear(addressOf(si, seg: srcSeg, addrSize: a), size)
                try writeLinear(addressOf(di, seg: 0, addrSize: a), size, v)
                advance(Reg.rsi, step, a); advance(Reg.rdi, step, a)
            case 1:
                let x = try readLinear(addressOf(si, seg: srcSeg, addrSize: a), size)
                let y = try readLinear(addressOf(di, seg: 0, addrSize: a), size)
                _ = alu(7, x, y, size)
                advance(Reg.rsi, step, a); advance(Reg.rdi, step, a)
                stopOnFlags = true
            case 2:
                try writeLinear(addressOf(di, seg: 0, addrSize: a), size, reg(Reg.rax, size))
                advance(Reg.rdi, step, a)
            case 3:
                setReg(Reg.rax, size, try readLinear(addressOf(si, seg: srcSeg, addrSize: a), size))
                advance(Reg.rsi, step, a)
            case 4:
                let y = try readLinear(addressOf(di, seg: 0, addrSize: a), size)
                _ = alu(7, reg(Reg.rax, size), y, size)
                advance(Reg.rdi, step, a)
                stopOnFlags = true
            case 5:
                let la = addressOf(di, seg: 0, addrSize: a)
                _ = try translate(la, .write)
                let v = platform.portRead(UInt16(truncatingIfNeeded: gpr[2]), size: n)
                try writeLinear(la, size, v)
                advance(Reg.rdi, step, a)
            default:
                let v = try readLinear(addressOf(si, seg: srcSeg, addrSize: a), size)
                platform.portWrite(UInt16(truncatingIfNeeded: gpr[2]), size: n, value: v)
                afterDeviceWrite()
                advance(Reg.rsi, step, a)
            }
            if !rep { return }
            setReg(Reg.rcx, a == 1 ? 1 : a, (gpr[1] &- 1) & amask)
            if stopOnFlags && (s.pointee.zeroFlag == repne) { return }
            budget -= 1
            if budget == 0 {
                if gpr[1] & amask != 0 { s.pointee.rip = s.pointee.currentRIP }
                return
            }
        }
    }

    @inline(__always) func advance(_ r: UInt8, _ step: UInt64, _ a: UInt8) {
        let v = gpr[Int(r)] &+ step
        switch a {
        case 1: setReg(r, 1, v)
        case 2: setReg(r, 2, v)
        default: gpr[Int(r)] = v
        }
    }
}
