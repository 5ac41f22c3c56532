/// Native forms without an interpreter fast form: read-modify-write of memory (LOCKed too, as
/// the same LOCKed host instruction on the guest's page, so it stays atomic against other
/// vCPUs), CMPXCHG, XADD, BT* with an immediate, BSWAP, NEG/NOT/XCHG of registers, PUSH imm,
/// MOV r, Sreg and unsigned DIV.
extension BlockTranslator {
    mutating func emitNativeOp(_ k: Int) {
        let i = insns[k]
        let size = i.size
        let bytes = 1 << Int(size)
        let lock = i.prefixes & Prefix.lock != 0
        let readModifyWrite: Bool
        switch i.op {
        case .aluRMReg, .aluRMImm, .incRM, .decRM, .negRM, .notRM: readModifyWrite = i.isMem
        default: readModifyWrite = false
        }
        if readModifyWrite {
            var sites = memoryOperand(k, bytes: bytes, write: true)
            if lock { aligned(bytes, &sites) }
            let m = A.Mem(A.rsi)
            switch i.op {
            case .aluRMReg:
                loadGuest(A.rcx, i.reg, size)
                a.mem(UInt32(i.sub & 7) << 3 | (size == 0 ? 0 : 1), size: size, reg: A.rcx, m, lock: lock)
            case .aluRMImm: a.aluMemImm(i.sub, size: size, m, i.imm, lock: lock)
            case .incRM, .decRM: a.mem(size == 0 ? 0xFE : 0xFF, size: size, reg: i.op == .incRM ? 0 : 1, m, lock: lock)
            default: a.mem(size == 0 ? 0xF6 : 0xF7, size: size, reg: i.op == .negRM ? 3 : 2, m, lock: lock)
            }
            resume(k, sites)
            return
        }
        switch i.op {
        case .negRM, .notRM:
            loadGuest(A.rax, i.rm, size)
            a.unary(0xF7, digit: i.op == .negRM ? 3 : 2, size: size, A.rax)
            storeGuest(i.rm, A.rax, size)
        case .incRM, .decRM:
            loadGuest(A.rax, i.rm, size)
            a.unary(0xFF, digit: i.op == .incRM ? 0 : 1, size: size, A.rax)
            storeGuest(i.rm, A.rax, size)
        case .xchgRMReg:
            loadGuest(A.rax, i.rm, size); loadGuest(A.rcx, i.reg, size)
            storeGuest(i.rm, A.rcx, size); storeGuest(i.reg, A.rax, size)
        case .cmpxchg:
            var sites = memoryOperand(k, bytes: bytes, write: true)
            if lock { aligned(bytes, &sites) }
            // The whole of RAX: a success leaves it alone, a failure loads the accumulator
            // (zero-extending a dword), as the host does.
            a.load(A.rax, Self.slot(Reg.rax), size: 3)
            loadGuest(A.rcx, i.reg, size)
            a.mem(size == 0 ? 0x0FB0 : 0x0FB1, size: size, reg: A.rcx, A.Mem(A.rsi), lock: lock)
            a.store(Self.slot(Reg.rax), A.rax, size: 3)
            resume(k, sites)
        case .xadd:
            var sites = memoryOperand(k, bytes: bytes, write: true)
            if lock { aligned(bytes, &sites) }
            loadGuest(A.rcx, i.reg, size)
            a.mem(size == 0 ? 0x0FC0 : 0x0FC1, size: size, reg: A.rcx, A.Mem(A.rsi), lock: lock)
            storeGuest(i.reg, A.rcx, size)
            resume(k, sites)
        case .bswap:
            loadGuest(A.rax, i.rm, size)
            if size == 3 { a.byte(0x48) }
            a.byte(0x0F); a.byte(0xC8)
            storeGuest(i.rm, A.rax, size)
        case .btImm:
            let digit = 4 + (i.sub & 3)
            if i.isMem {
                var sites = memoryOperand(k, bytes: bytes, write: i.sub != 0)
                if lock { aligned(bytes, &sites) }
                a.mem(0x0FBA, size: size, reg: digit, A.Mem(A.rsi), lock: lock)
                a.byte(UInt8(truncatingIfNeeded: i.imm))
                resume(k, sites)
            } else {
                loadGuest(A.rax, i.rm, size)
                a.rr(0x0FBA, size: size, reg: digit, rm: A.rax)
                a.byte(UInt8(truncatingIfNeeded: i.imm))
                if i.sub != 0 { storeGuest(i.rm, A.rax, size) }
            }
        case .pushImm:
            let sites = pushToGuestStack { t in t.a.storeImm(A.Mem(A.rsi), i.imm, size: 3) }
            resume(k, sites)
        case .movRMSreg:
            a.load(A.rax, A.Mem(A.rbx, JITLayout.selector(i.reg)), size: 1)
            storeGuest(i.rm, A.rax, size)
        case .divRM:
            emitUnsignedDivide(k)
        default:
            emitNativeOther(k)
        }
    }

    /// A LOCKed access the host would split across cache lines goes to the interpreter (which
    /// emulates it) rather than taking a split lock: the host address in rsi must be aligned.
    mutating func aligned(_ bytes: Int, _ sites: inout [Int]) {
        guard bytes > 1 else { return }
        a.movImm64(A.r8, UInt64(64 - bytes.trailingZeroBitCount))
        a.shiftx(.shlx, A.rcx, A.rsi, count: A.r8)
        a.byte(0xE3); a.byte(5)
        sites.append(a.jmp())
    }

    /// DIV r/m32 or r/m64. A zero divisor or a quotient that does not fit is the interpreter's
    /// #DE: checked first (the check's CMP changes the flags: they are kept in r11 meanwhile).
    mutating func emitUnsignedDivide(_ k: Int) {
        let i = insns[k]
        let size = i.size
        var sites: [Int] = []
        if i.isMem {
            sites = memoryOperand(k, bytes: 1 << Int(size), write: false)
            a.load(A.rcx, A.Mem(A.rsi), size: size)
        } else {
            loadGuest(A.rcx, i.rm, size)
        }
        a.byte(0xE3); a.byte(2); a.byte(0xEB); a.byte(5)  // jrcxz: divide by zero
        sites.append(a.jmp())
        a.pushfq(); a.pop(A.r11)
        loadGuest(A.r9, Reg.rdx, size)
        a.aluRR(7, size: size, dst: A.r9, src: A.rcx)
        let overflow = a.jcc(3)  // jae: RDX >= divisor, the quotient overflows
        // DIV leaves some flags as they were on this host: give it the guest's back.
        a.movRR(A.rax, A.r11, size: 2)
        TranslatedCode.loadFlagsFromRAX(&a)
        loadGuest(A.rax, Reg.rax, size)
        loadGuest(A.rdx, Reg.rdx, size)
        a.rr(0xF7, size: size, reg: 6, rm: A.rcx)
        storeGuest(Reg.rax, A.rax, size)
        storeGuest(Reg.rdx, A.rdx, size)
        colds.append(Cold(k: k, sites: sites, resume: a.pos))
        colds.append(Cold(k: k, sites: [overflow], resume: a.pos, flags: .r11))
    }
}
