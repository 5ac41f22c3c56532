/// More native forms: multiplies and sign extensions of RAX, bit scans and counts, double
/// shifts of registers, CMPXCHG8B/16B, SETcc to memory, the two the kernel's local_irq_save()
/// is made of (PUSHF and CLI), SWAPGS, and indirect JMP and CALL. A register destination is
/// loaded and stored whole (64 bits), so whatever the host leaves in its upper half (a dword
/// result zero-extended, a word merged, a BSF of zero unchanged) is what the guest gets.
extension BlockTranslator {
    mutating func emitNativeOther(_ k: Int) {
        let i = insns[k]
        let size = i.size
        let lock = i.prefixes & Prefix.lock != 0
        switch i.op {
        case .mulRM, .imulRM:
            var sites: [Int] = []
            source(k, into: A.rcx, size: size, sites: &sites)
            a.load(A.rax, Self.slot(Reg.rax), size: 3)
            a.load(A.rdx, Self.slot(Reg.rdx), size: 3)
            a.rr(size == 0 ? 0xF6 : 0xF7, size: size, reg: i.op == .mulRM ? 4 : 5, rm: A.rcx)
            a.store(Self.slot(Reg.rax), A.rax, size: 3)
            a.store(Self.slot(Reg.rdx), A.rdx, size: 3)
            finish(k, sites)
        case .cbw, .cwd:
            a.load(A.rax, Self.slot(Reg.rax), size: 3)
            a.load(A.rdx, Self.slot(Reg.rdx), size: 3)
            if size == 1 { a.byte(0x66) } else if size == 3 { a.byte(0x48) }
            a.byte(i.op == .cbw ? 0x98 : 0x99)
            a.store(Self.slot(Reg.rax), A.rax, size: 3)
            a.store(Self.slot(Reg.rdx), A.rdx, size: 3)
        case .imulRegRM:
            var sites: [Int] = []
            source(k, into: A.rcx, size: size, sites: &sites)
            a.load(A.rax, Self.slot(i.reg), size: 3)
            a.rr(0x0FAF, size: size, reg: A.rax, rm: A.rcx)
            a.store(Self.slot(i.reg), A.rax, size: 3)
            finish(k, sites)
        case .bsf, .bsr, .tzcnt, .lzcnt, .popcnt:
            var sites: [Int] = []
            source(k, into: A.rcx, size: size, sites: &sites)
            a.load(A.rax, Self.slot(i.reg), size: 3)
            let op: UInt32
            switch i.op {
            case .bsf, .tzcnt: op = 0x0FBC
            case .bsr, .lzcnt: op = 0x0FBD
            default: op = 0x0FB8
            }
            if i.op == .tzcnt || i.op == .lzcnt || i.op == .popcnt { a.byte(0xF3) }
            a.rr(op, size: size, reg: A.rax, rm: A.rcx)
            a.store(Self.slot(i.reg), A.rax, size: 3)
            finish(k, sites)
        case .shld, .shrd:
            a.load(A.rax, Self.slot(i.rm), size: 3)
            a.load(A.rdx, Self.slot(i.reg), size: 3)
            let byCL = i.prefixes & Prefix.countCL != 0
            if byCL { a.load(A.rcx, Self.slot(Reg.rcx), size: 0) }
            let op: UInt32 = (i.op == .shld ? 0x0FA4 : 0x0FAC) | (byCL ? 1 : 0)
            a.rr(op, size: size, reg: A.rdx, rm: A.rax)
            if !byCL { a.byte(UInt8(truncatingIfNeeded: i.imm)) }
            a.store(Self.slot(i.rm), A.rax, size: 3)
        case .cmpxchg8b16b:
            let bytes = size == 3 ? 16 : 8
            var sites = memoryOperand(k, bytes: bytes, write: true)
            // CMPXCHG16B needs 16-byte alignment (else the interpreter's #GP).
            if lock || bytes == 16 { aligned(bytes, &sites) }
            a.push(A.rbx)  // RCX:RBX is an operand
            a.load(A.rax, Self.slot(Reg.rax), size: 3)
            a.load(A.rdx, Self.slot(Reg.rdx), size: 3)
            a.load(A.rcx, Self.slot(Reg.rcx), size: 3)
            a.load(A.rbx, Self.slot(Reg.rbx), size: 3)
            a.mem(0x0FC7, size: size == 3 ? 3 : 2, reg: 1, A.Mem(A.rsi), lock: lock)
            a.store(Self.slot(Reg.rax), A.rax, size: 3)
            a.store(Self.slot(Reg.rdx), A.rdx, size: 3)
            a.pop(A.rbx)
            resume(k, sites)
        case .setcc:
            let sites = memoryOperand(k, bytes: 1, write: true)
            a.mem(0x0F90 | UInt32(i.sub & 15), size: 0, reg: 0, A.Mem(A.rsi))
            resume(k, sites)
        case .cli:
            // CPL 0 only (elsewhere IOPL decides: the interpreter).
            a.load(A.rcx, A.Mem(A.rbx, JITLayout.cpl), size: 0)
            a.byte(0xE3); a.byte(5)
            let sites = [a.jmp()]
            a.pushfq(); a.pop(A.r11)
            a.load(A.rax, A.Mem(A.rbx, JITLayout.rflags), size: 3)
            a.aluImm(4, size: 3, dst: A.rax, ~RFlags.if)
            a.store(A.Mem(A.rbx, JITLayout.rflags), A.rax, size: 3)
            a.movRR(A.rax, A.r11, size: 2)
            TranslatedCode.loadFlagsFromRAX(&a)
            resume(k, sites)
        case .swapgs:
            // CPL 0 only (else the interpreter's #GP). Translated code reads the GS base from
            // CPUState at every access, so SWAPGS need not end its block.
            a.load(A.rcx, A.Mem(A.rbx, JITLayout.cpl), size: 0)
            a.byte(0xE3); a.byte(5)
            let sites = [a.jmp()]
            a.load(A.rax, A.Mem(A.rbx, JITLayout.gsBase), size: 3)
            a.load(A.rdx, A.Mem(A.rbx, JITLayout.kernelGSBase), size: 3)
            a.store(A.Mem(A.rbx, JITLayout.gsBase), A.rdx, size: 3)
            a.store(A.Mem(A.rbx, JITLayout.kernelGSBase), A.rax, size: 3)
            resume(k, sites)
        case .pushf:
            // The image: RFLAGS without RF and VM, the status flags from the host's.
            a.pushfq(); a.pop(A.r11)
            a.load(A.rcx, A.Mem(A.rbx, JITLayout.rflags), size: 3)
            a.aluImm(4, size: 3, dst: A.rcx, 0x00FC_FFFF & ~UInt64(JITLayout.arithFlags))
            a.movRR(A.r10, A.r11)
            a.aluImm(4, size: 2, dst: A.r10, UInt64(JITLayout.arithFlags))
            a.aluRR(1, size: 3, dst: A.rcx, src: A.r10)
            a.movRR(A.rax, A.r11, size: 2)
            TranslatedCode.loadFlagsFromRAX(&a)
            a.movRR(A.r11, A.rcx)
            let sites = pushToGuestStack { t in t.a.store(A.Mem(A.rsi), A.r11, size: 3) }
            resume(k, sites)
        case .jmpRM, .callRM:
            emitIndirectBranch(k)
        case .fence:
            // MFENCE as itself (see the interpreter's); LFENCE and SFENCE need nothing on TSO.
            if i.sub == 6 { a.byte(0x0F); a.byte(0xAE); a.byte(0xF0) }
        default:
            emitInterpreted(k)
        }
    }

    /// JMP or CALL through a register or memory (FF /4, FF /2, 64-bit operand): the target to
    /// CPUState.rip, the return address pushed, then the shared indirect exit, as RET does. The
    /// kernel's indirect-branch thunks are one such JMP each: interpreted, every indirect call
    /// went back to the dispatcher. A non-canonical target (#GP) or a TLB miss on the operand or
    /// the stack: the interpreter runs the instruction.
    mutating func emitIndirectBranch(_ k: Int) {
        let i = insns[k]
        var sites: [Int] = []
        source(k, into: A.rax, size: 3, sites: &sites)
        requireCanonicalRAX(&sites)
        colds.append(Cold(k: k, sites: sites, resume: -1, flags: coldFlags))
        a.store(A.Mem(A.rbx, JITLayout.rip), A.rax, size: 3)
        if i.op == .callRM {
            let pushed = pushToGuestStack { t in
                t.a.lea(A.rax, A.Mem(A.r12, t.offsets[k] + Int(i.length)))
                t.a.store(A.Mem(A.rsi), A.rax, size: 3)
            }
            colds.append(Cold(k: k, sites: pushed, resume: -1, flags: coldFlags))
        }
        if flagsSaved { restoreFlags() }
        a.jmp(to: code.indirectExit)
    }

    /// The r/m source operand of `size` into host register `h` (zero-extended): a memory
    /// operand through the TLB (its cold-path sites appended), or a guest register.
    mutating func source(_ k: Int, into h: UInt8, size: UInt8, sites: inout [Int]) {
        let i = insns[k]
        if i.isMem {
            sites = memoryOperand(k, bytes: 1 << Int(size), write: false)
            a.load(h, A.Mem(A.rsi), size: size)
        } else {
            loadGuest(h, i.rm, size)
        }
    }

    /// After an instruction whose operand may have been in memory: its cold path, if any.
    mutating func finish(_ k: Int, _ sites: [Int]) {
        if !sites.isEmpty { resume(k, sites) }
    }
}
