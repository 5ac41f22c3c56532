/// The instruction forms the translator emits as host code (BlockTranslator.isNative): the
/// interpreter's fast forms (FastPath.swift) in 64-bit mode, plus NEG, NOT and XCHG of registers.
/// Each loads its guest operands into rax/rcx, runs the same operation at the same operand
/// size, and writes the result back (a dword result zero-extended, a byte or word merged).
extension BlockTranslator {
    mutating func emitNative(_ k: Int) {
        let i = insns[k]
        if i.fast == FastForm.none || i.prefixes & Prefix.lock != 0 {
            emitNativeOp(k)
            return
        }
        let size = i.size
        let bytes = 1 << Int(size)
        switch i.fast {
        case FastForm.aluToRM: aluRegisters(i.sub, size, dst: i.rm, src: i.reg)
        case FastForm.aluToReg: aluRegisters(i.sub, size, dst: i.reg, src: i.rm)
        case FastForm.aluImm:
            loadGuest(A.rax, i.rm, size)
            a.aluImm(i.sub, size: size, dst: A.rax, i.imm)
            if i.sub != 7 { storeGuest(i.rm, A.rax, size) }
        case FastForm.aluLoad:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rcx, A.Mem(A.rsi), size: size)
            loadGuest(A.rax, i.reg, size)
            a.aluRR(i.sub, size: size, dst: A.rax, src: A.rcx)
            if i.sub != 7 { storeGuest(i.reg, A.rax, size) }
            resume(k, sites)
        case FastForm.cmpMemReg:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rax, A.Mem(A.rsi), size: size)
            loadGuest(A.rcx, i.reg, size)
            a.aluRR(7, size: size, dst: A.rax, src: A.rcx)
            resume(k, sites)
        case FastForm.cmpMemImm:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rax, A.Mem(A.rsi), size: size)
            a.aluImm(7, size: size, dst: A.rax, i.imm)
            resume(k, sites)
        case FastForm.movToRM:
            loadGuest(A.rax, i.reg, size); storeGuest(i.rm, A.rax, size)
        case FastForm.movToReg:
            loadGuest(A.rax, i.rm, size); storeGuest(i.reg, A.rax, size)
        case FastForm.load:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rcx, A.Mem(A.rsi), size: size)
            storeGuest(i.reg, A.rcx, size)
            resume(k, sites)
        case FastForm.store:
            let sites = memoryOperand(k, bytes: bytes, write: true)
            loadGuest(A.rax, i.reg, size)
            a.store(A.Mem(A.rsi), A.rax, size: size)
            resume(k, sites)
        case FastForm.movImm: moveImmediate(i.rm, i.imm, size)
        case FastForm.storeImm:
            let sites = memoryOperand(k, bytes: bytes, write: true)
            a.storeImm(A.Mem(A.rsi), i.imm, size: size)
            resume(k, sites)
        case FastForm.lea:
            address(k, segment: false)
            if size == 2 { a.movRR(A.rsi, A.rsi, size: 2) }
            storeGuest(i.reg, A.rsi, size)
        case FastForm.incReg, FastForm.decReg:
            loadGuest(A.rax, i.rm, size)
            a.unary(0xFF, digit: i.fast == FastForm.incReg ? 0 : 1, size: size, A.rax)
            storeGuest(i.rm, A.rax, size)
        case FastForm.testRegReg:
            loadGuest(A.rax, i.rm, size); loadGuest(A.rcx, i.reg, size)
            a.testRR(size: size, A.rax, A.rcx)
        case FastForm.testRegImm:
            loadGuest(A.rax, i.rm, size)
            a.testImm(size: size, A.rax, i.imm)
        case FastForm.testLoadImm:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rax, A.Mem(A.rsi), size: size)
            a.testImm(size: size, A.rax, i.imm)
            resume(k, sites)
        case FastForm.movzxReg:
            a.load(A.rcx, Self.slot(i.rm), size: i.sub)
            storeGuest(i.reg, A.rcx, size)
        case FastForm.movzxLoad:
            let sites = memoryOperand(k, bytes: 1 << Int(i.sub), write: false)
            a.load(A.rcx, A.Mem(A.rsi), size: i.sub)
            storeGuest(i.reg, A.rcx, size)
            resume(k, sites)
        case FastForm.movsxReg, FastForm.movsxdReg:
            let from: UInt8 = i.fast == FastForm.movsxdReg ? 2 : i.sub
            a.loadSigned(A.rcx, Self.slot(i.rm), size: from)
            signExtended(i.reg, size)
        case FastForm.movsxLoad, FastForm.movsxdLoad:
            let from: UInt8 = i.fast == FastForm.movsxdLoad ? 2 : i.sub
            let sites = memoryOperand(k, bytes: 1 << Int(from), write: false)
            a.loadSigned(A.rcx, A.Mem(A.rsi), size: from)
            signExtended(i.reg, size)
            resume(k, sites)
        case FastForm.imulRegReg:
            loadGuest(A.rax, i.reg, size); loadGuest(A.rcx, i.rm, size)
            a.rr(0x0FAF, size: size, reg: A.rax, rm: A.rcx)
            storeGuest(i.reg, A.rax, size)
        case FastForm.imulRegImm:
            loadGuest(A.rcx, i.rm, size)
            let s32 = Int32(truncatingIfNeeded: i.imm)
            if size == 1 {
                a.rr(0x69, size: 1, reg: A.rax, rm: A.rcx); a.u16(UInt16(truncatingIfNeeded: i.imm))
            } else if let s8 = Int8(exactly: s32) {
                a.rr(0x6B, size: size, reg: A.rax, rm: A.rcx); a.byte(UInt8(bitPattern: s8))
            } else {
                a.rr(0x69, size: size, reg: A.rax, rm: A.rcx); a.u32(UInt32(bitPattern: s32))
            }
            storeGuest(i.reg, A.rax, size)
        case FastForm.shiftReg:
            loadGuest(A.rax, i.rm, size)
            if i.prefixes & Prefix.countCL != 0 {
                a.load(A.rcx, Self.slot(Reg.rcx), size: 0)
                a.shift(digit: i.sub & 7, size: size, A.rax, count: nil)
            } else {
                a.shift(digit: i.sub & 7, size: size, A.rax, count: UInt8(truncatingIfNeeded: i.imm))
            }
            storeGuest(i.rm, A.rax, size)
        case FastForm.setccReg:
            a.mem(0x0F90 | UInt32(i.sub & 15), size: 0, reg: 0, Self.slot(i.rm))
        case FastForm.cmovReg:
            loadGuest(A.rax, i.reg, size); loadGuest(A.rcx, i.rm, size)
            a.rr(0x0F40 | UInt32(i.sub & 15), size: size, reg: A.rax, rm: A.rcx)
            storeGuest(i.reg, A.rax, size)
        case FastForm.cmovLoad:
            let sites = memoryOperand(k, bytes: bytes, write: false)
            a.load(A.rcx, A.Mem(A.rsi), size: size)
            loadGuest(A.rax, i.reg, size)
            a.rr(0x0F40 | UInt32(i.sub & 15), size: size, reg: A.rax, rm: A.rcx)
            storeGuest(i.reg, A.rax, size)
            resume(k, sites)
        case FastForm.nop:
            break
        case FastForm.jcc64:
            let next = offsets[k] + Int(i.length)
            let taken = a.jcc(i.sub & 15)
            exitStub(delta: next)
            a.patch(taken, to: a.pos)
            exitStub(delta: next + Int(Int64(bitPattern: i.imm)))
        case FastForm.jmp64:
            exitStub(delta: offsets[k] + Int(i.length) + Int(Int64(bitPattern: i.imm)))
        case FastForm.call64:
            let sites = pushToGuestStack { t in
                t.a.lea(A.rax, A.Mem(A.r12, t.offsets[k] + Int(i.length)))
                t.a.store(A.Mem(A.rsi), A.rax, size: 3)
            }
            colds.append(Cold(k: k, sites: sites, resume: -1, flags: coldFlags))
            exitStub(delta: offsets[k] + Int(i.length) + Int(Int64(bitPattern: i.imm)))
        case FastForm.ret64:
            loadGuest(A.rsi, Reg.rsp, 3)
            var sites: [Int] = []
            tlb(bytes: 8, write: false, cold: &sites)
            a.load(A.rax, A.Mem(A.rsi), size: 3)
            requireCanonicalRAX(&sites)
            adjustRSP(8)
            a.store(A.Mem(A.rbx, JITLayout.rip), A.rax, size: 3)
            colds.append(Cold(k: k, sites: sites, resume: -1, flags: coldFlags))
            a.jmp(to: code.indirectExit)
        case FastForm.push64:
            let sites = pushToGuestStack { t in
                t.loadGuest(A.rax, i.rm & 15, 3)
                t.a.store(A.Mem(A.rsi), A.rax, size: 3)
            }
            resume(k, sites)
        case FastForm.pop64:
            loadGuest(A.rsi, Reg.rsp, 3)
            var sites: [Int] = []
            tlb(bytes: 8, write: false, cold: &sites)
            a.load(A.rax, A.Mem(A.rsi), size: 3)
            adjustRSP(8)
            storeGuest(i.rm & 15, A.rax, 3)
            resume(k, sites)
        default:
            emitNativeOp(k)
        }
    }

    /// A branch target in rax that is not canonical is the interpreter's #GP: a jump to the cold
    /// path when rax minus its sign-extended bits 0-47 is not zero (flag-free; clobbers rcx,
    /// rdx, r8).
    mutating func requireCanonicalRAX(_ sites: inout [Int]) {
        a.movImm64(A.r8, 16)
        a.shiftx(.shlx, A.rdx, A.rax, count: A.r8)
        a.shiftx(.sarx, A.rdx, A.rdx, count: A.r8)
        a.not64(A.rdx)
        a.lea(A.rcx, A.Mem(A.rax, index: A.rdx, scale: 0, disp: 1))
        a.byte(0xE3); a.byte(5)
        sites.append(a.jmp())
    }

    /// Where instruction k's cold path returns: after its host code.
    mutating func resume(_ k: Int, _ sites: [Int]) {
        colds.append(Cold(k: k, sites: sites, resume: a.pos, flags: coldFlags))
    }

    mutating func aluRegisters(_ op: UInt8, _ size: UInt8, dst: UInt8, src: UInt8) {
        loadGuest(A.rax, dst, size); loadGuest(A.rcx, src, size)
        a.aluRR(op, size: size, dst: A.rax, src: A.rcx)
        if op != 7 { storeGuest(dst, A.rax, size) }
    }

    /// rcx (sign-extended to 64 bits) to a destination of `size`.
    mutating func signExtended(_ r: UInt8, _ size: UInt8) {
        if size == 2 { a.movRR(A.rcx, A.rcx, size: 2) }
        storeGuest(r, A.rcx, size)
    }

    mutating func moveImmediate(_ r: UInt8, _ v: UInt64, _ size: UInt8) {
        switch size {
        case 3:
            if Int32(exactly: Int64(bitPattern: v)) != nil {
                a.storeImm(Self.slot(r), v, size: 3)
            } else {
                a.movImm64(A.rax, v); storeGuest(r, A.rax, 3)
            }
        case 2:
            a.movImm64(A.rax, v & 0xFFFF_FFFF); storeGuest(r, A.rax, 2)
        default:
            a.storeImm(Self.slot(r), v, size: size)
        }
    }

    /// A 64-bit push: the TLB lookup for RSP - 8 (rsi then the host address), `store` writing
    /// the value there (rax and r11 are free for it), RSP lowered. Returns the cold-path sites.
    mutating func pushToGuestStack(_ store: (inout BlockTranslator) -> Void) -> [Int] {
        loadGuest(A.rsi, Reg.rsp, 3)
        a.lea(A.rsi, A.Mem(A.rsi, -8))
        var sites: [Int] = []
        tlb(bytes: 8, write: true, cold: &sites)
        store(&self)
        adjustRSP(-8)
        return sites
    }

    /// RSP += delta without touching the flags.
    mutating func adjustRSP(_ delta: Int) {
        loadGuest(A.rdx, Reg.rsp, 3)
        a.lea(A.rdx, A.Mem(A.rdx, delta))
        storeGuest(Reg.rsp, A.rdx, 3)
    }
}
