/// Translates one decoded 64-bit-mode block to host code. The guest is x86-64 and so is the
/// host: the common integer instructions run as the same host instruction on the guest's
/// register file in memory, so their results and flags, undefined ones included, are this
/// CPU's own. Memory operands go through the software TLB inline; a miss, MMIO, a code page or
/// a fault runs that instruction in the interpreter (`X86CPU.jitInterpret`), as does every
/// instruction the translator has no form for. Guest state is exact at every instruction
/// boundary the interpreter can see.
struct BlockTranslator {
    typealias A = HostAssembler
    var a: A
    let insns: UnsafeMutablePointer<Instruction>
    let n: Int
    /// The block's offset in its 4 KiB page (direct branches inside the page may be chained).
    let pageOffset: Int
    let code: TranslatedCode
    let interpreter: UInt64
    var offsets: [Int] = []
    /// An out-of-line path: the interpreter runs instruction k, entered from `sites`, then
    /// translated code resumes at `resume` (-1: exits). `flags`: where the guest's status flags
    /// are when it is entered.
    struct Cold {
        enum Flags {
            /// In the host's RFLAGS.
            case host
            /// A PUSHF image in r11, saved before a check that changed them.
            case r11
            /// LAHF's AH and SETO's AL in r11, saved before a TLB lookup that changed them.
            case r11AX
        }
        var k: Int
        var sites: [Int]
        var resume: Int
        var flags = Flags.host
    }
    var colds: [Cold] = []
    /// r11 holds the guest's flags (LAHF's AH, SETO's AL) while the host's are the lookups'
    /// (`lookupMayChangeFlags`); a cold path made meanwhile takes them from there.
    var flagsSaved = false
    /// The instruction being emitted.
    var current = 0

    init(assembler: A, insns: UnsafeMutablePointer<Instruction>, count: Int, pageOffset: Int,
         code: TranslatedCode, interpreter: UInt64) {
        a = assembler; self.insns = insns; n = count; self.pageOffset = pageOffset
        self.code = code; self.interpreter = interpreter
    }

    // MARK: - Analysis

    /// Whether the translator emits `i` as host code (else the interpreter runs it).
    static func isNative(_ i: Instruction) -> Bool {
        switch i.op {
        case .negRM, .notRM, .incRM, .decRM: return true
        case .aluRMReg, .aluRMImm: return i.isMem || i.prefixes & Prefix.lock == 0
        case .xchgRMReg: return !i.isMem
        case .cmpxchg, .xadd: return i.isMem
        case .bswap: return i.size >= 2
        case .btImm: return i.size >= 1
        case .pushImm: return i.size == 3
        case .movRMSreg: return !i.isMem
        case .divRM: return i.size >= 2
        case .cli, .swapgs, .mulRM, .imulRM, .cbw, .cwd, .imulRegRM, .cmpxchg8b16b, .setcc, .fence: return true
        case .bsf, .bsr, .tzcnt, .lzcnt, .popcnt: return i.size >= 1
        case .shld, .shrd: return !i.isMem && i.size >= 1
        case .pushf: return i.size == 3
        case .jmpRM, .callRM: return i.size == 3 && i.prefixes & Prefix.lock == 0
        default: break
        }
        if i.prefixes & Prefix.lock != 0 { return false }
        switch i.fast {
        case FastForm.none: return false
        case FastForm.movsxReg, FastForm.movsxLoad: return i.sub < 2
        default: return true
        }
    }

    /// What an instruction does with CF, PF, AF, ZF, SF and OF, for `lookupMayChangeFlags`.
    enum FlagUse {
        /// Neither reads nor writes any of them.
        case none
        /// Sets all six without reading them (undefined ones included: ADD OR AND SUB XOR CMP
        /// TEST NEG).
        case writesAll
        /// Anything else: reads some, or writes some and keeps others (INC, DEC, shifts, and
        /// IMUL, whose undefined ones are this host's and may be those before it).
        case other
    }

    static func flagUse(_ i: Instruction) -> FlagUse {
        guard isNative(i) else { return .other }
        let alu: FlagUse = i.sub & 7 == 2 || i.sub & 7 == 3 ? .other : .writesAll  // ADC, SBB read CF
        switch i.fast {
        case FastForm.aluToRM, FastForm.aluToReg, FastForm.aluImm, FastForm.aluLoad: return alu
        case FastForm.cmpMemReg, FastForm.cmpMemImm, FastForm.testRegReg, FastForm.testRegImm,
             FastForm.testLoadImm:
            return .writesAll
        case FastForm.movToRM, FastForm.movToReg, FastForm.load, FastForm.store, FastForm.movImm,
             FastForm.storeImm, FastForm.lea, FastForm.movzxReg, FastForm.movzxLoad, FastForm.movsxReg,
             FastForm.movsxLoad, FastForm.movsxdReg, FastForm.movsxdLoad, FastForm.push64, FastForm.pop64,
             FastForm.nop:
            return .none
        case FastForm.none:
            switch i.op {
            case .aluRMReg, .aluRMImm: return alu
            case .negRM: return .writesAll
            case .notRM: return .none
            default: return .other
            }
        default: return .other
        }
    }

    /// Whether the current instruction's TLB lookup may change the host's flags (the guest's are
    /// there): when the instruction neither reads them nor keeps some (`flagUse` not `.other`),
    /// or they are in r11 already. The first such lookup saves the guest's flags in r11 (LAHF,
    /// SETO); from there until an instruction sets all six, the host's are the lookups' and r11
    /// has the guest's: every cold path hands the interpreter those (a fault is as precise as
    /// interpreted), and before an instruction that uses them, or the block's end, they are put
    /// back (`restoreFlags`).
    var lookupMayChangeFlags: Bool { flagsSaved || Self.flagUse(insns[current]) != .other }

    /// Where a cold path made now finds the guest's flags (none of the checks before it changed
    /// them but a TLB lookup).
    var coldFlags: Cold.Flags { flagsSaved ? .r11AX : .host }

    /// Worth translating: at least one instruction becomes host code.
    static func worthTranslating(_ insns: UnsafeMutablePointer<Instruction>, _ n: Int) -> Bool {
        for k in 0..<n where isNative(insns[k]) { return true }
        // A lone STI, translated, goes on to the next block when nothing is pending.
        return n > 0 && insns[n - 1].op == .sti
    }

    // MARK: - Emission

    /// Emits the block; returns its entry offset, or nil when the buffer is full.
    mutating func translate() -> Int? {
        var off = 0
        for k in 0..<n { offsets.append(off); off += Int(insns[k].length) }
        flagsSaved = false
        let start = a.pos
        a.lea(A.r14, A.Mem(A.r14, n))
        for k in 0..<n {
            current = k
            let use = Self.flagUse(insns[k])
            if flagsSaved && use == .other { restoreFlags() }
            if Self.isNative(insns[k]) { emitNative(k) } else { emitInterpreted(k) }
            // One that sets all six makes the host's flags the guest's again.
            if use == .writesAll { flagsSaved = false }
        }
        // A block that ends without a branch (size limit, page end) falls through.
        if flagsSaved { restoreFlags() }
        if n > 0, !endsWithBranch { exitStub(delta: offsets[n - 1] + Int(insns[n - 1].length)) }
        for c in colds { emitCold(c) }
        return a.full ? nil : start
    }

    var endsWithBranch: Bool {
        let i = insns[n - 1]
        if !Self.isNative(i) { return true }  // the interpreter's exit handles it
        if i.op == .jmpRM || i.op == .callRM { return true }
        switch i.fast {
        case FastForm.jcc64, FastForm.jmp64, FastForm.call64, FastForm.ret64: return true
        default: return false
        }
    }

    /// A guest register's slot; AH..BH are the second byte of RAX..RBX.
    static func slot(_ r: UInt8) -> A.Mem {
        r >= 16 ? A.Mem(A.rbp, 8 * Int(r & 3) + 1) : A.Mem(A.rbp, 8 * Int(r & 15))
    }

    mutating func loadGuest(_ h: UInt8, _ r: UInt8, _ size: UInt8) { a.load(h, Self.slot(r), size: size) }

    /// Writes a guest register from host register `h` (for a dword, `h` is zero-extended).
    mutating func storeGuest(_ r: UInt8, _ h: UInt8, _ size: UInt8) {
        a.store(Self.slot(r), h, size: size >= 2 ? 3 : size)
    }

    /// The memory operand's linear address into rsi (clobbers rdi; flags untouched). `segment`
    /// false: the offset only (LEA).
    mutating func address(_ k: Int, segment: Bool) {
        let i = insns[k]
        var haveBase = false
        if i.base < 16 {
            loadGuest(A.rsi, i.base, 3); haveBase = true
        } else if i.base == Reg.rip {
            a.lea(A.rsi, A.Mem(A.r12, offsets[k] + Int(i.length))); haveBase = true
        }
        if i.index < 16 {
            loadGuest(A.rdi, i.index, 3)
            if !haveBase { a.movImm64(A.rsi, 0) }
            a.lea(A.rsi, A.Mem(A.rsi, index: A.rdi, scale: i.scale, disp: i.disp))
        } else if haveBase {
            if i.disp != 0 { a.lea(A.rsi, A.Mem(A.rsi, Int(i.disp))) }
        } else {
            a.movImm64(A.rsi, UInt64(bitPattern: Int64(i.disp)))
        }
        if i.addrSize == 2 { a.movRR(A.rsi, A.rsi, size: 2) }
        else if i.addrSize == 1 { a.rr(0x0FB7, size: 2, reg: A.rsi, rm: A.rsi) }
        if segment && (i.seg == 4 || i.seg == 5) {
            a.load(A.rdi, A.Mem(A.rbx, i.seg == 4 ? JITLayout.fsBase : JITLayout.gsBase), size: 3)
            a.lea(A.rsi, A.Mem(A.rsi, index: A.rdi, scale: 0, disp: 0))
        }
    }

    /// The TLB lookup for `bytes` at the linear address in rsi: on a hit rsi becomes the host
    /// address; a miss, MMIO or a page-crossing access jumps to the cold path (`sites`). Unless
    /// `lookupMayChangeFlags`, only LEA, MOV, NOT, JRCXZ and BMI2 shifts: the guest's flags in
    /// the host's RFLAGS stay as they are (clobbers rcx, rdx, rdi, r8-r10).
    mutating func tlb(bytes: Int, write: Bool, cold: inout [Int]) {
        if lookupMayChangeFlags { return tlbChangingFlags(bytes: bytes, write: write, cold: &cold) }
        a.movImm64(A.r8, 12)
        a.shiftx(.shrx, A.rdi, A.rsi, count: A.r8)
        a.lea(A.rdx, A.Mem(A.rsi, bytes - 1))   // a tag from the last byte: page-crossing misses
        a.shiftx(.shrx, A.rdx, A.rdx, count: A.r8)
        a.movImm64(A.r9, UInt64(64 - TLBEntry.indexBits))
        a.shiftx(.shlx, A.rdi, A.rdi, count: A.r9)
        a.shiftx(.shrx, A.rdi, A.rdi, count: A.r9)
        a.lea(A.rdi, A.Mem(A.rdi, index: A.rdi, scale: 1, disp: 0))   // * 3
        a.lea(A.rdi, A.Mem(A.rdi, index: A.rdi, scale: 0, disp: 0))   // * 6
        a.lea(A.rdi, A.Mem(A.r15, index: A.rdi, scale: 3, disp: 0))   // * 48 + TLB
        a.load(A.rcx, A.Mem(A.rbx, JITLayout.userTag), size: 3)
        a.lea(A.rdx, A.Mem(A.rcx, index: A.rdx, scale: 1, disp: 0))   // page << 1 | user
        a.load(A.rcx, A.Mem(A.rdi, write ? JITLayout.tlbWriteTag : JITLayout.tlbReadTag), size: 3)
        a.not64(A.rcx)
        a.lea(A.rcx, A.Mem(A.rcx, index: A.rdx, scale: 0, disp: 1))   // tag - entry's tag
        a.byte(0xE3); a.byte(5)                                        // jrcxz: equal
        cold.append(a.jmp())
        a.load(A.rdx, A.Mem(A.rdi, JITLayout.tlbHost), size: 3)
        a.movRR(A.rcx, A.rdx)
        a.byte(0xE3); a.byte(2); a.byte(0xEB); a.byte(5)               // jrcxz: no host page (MMIO)
        cold.append(a.jmp())
        a.movImm64(A.r10, 52)
        a.shiftx(.shlx, A.rsi, A.rsi, count: A.r10)
        a.shiftx(.shrx, A.rsi, A.rsi, count: A.r10)
        a.lea(A.rsi, A.Mem(A.rsi, index: A.rdx, scale: 0, disp: 0))
    }

    /// `tlb` where it may change the flags (`lookupMayChangeFlags`): SHR, AND, CMP/JNE and
    /// TEST/JZ instead of the flag-free detours, about two thirds of the instructions (clobbers
    /// rax, rdx, rdi, and r11 when it saves the guest's flags there).
    mutating func tlbChangingFlags(bytes: Int, write: Bool, cold: inout [Int]) {
        if !flagsSaved { Self.saveFlagsInR11(&a); flagsSaved = true }
        a.movRR(A.rdi, A.rsi)
        a.shift(digit: 5, size: 3, A.rdi, count: 12)                     // shr rdi, 12
        a.lea(A.rdx, A.Mem(A.rsi, bytes - 1))
        a.shift(digit: 5, size: 3, A.rdx, count: 12)                     // the last byte's page
        a.aluImm(4, size: 2, dst: A.rdi, UInt64(TLBEntry.count - 1))      // and edi: the index
        a.lea(A.rdi, A.Mem(A.rdi, index: A.rdi, scale: 1, disp: 0))      // * 3
        a.shift(digit: 4, size: 3, A.rdi, count: 4)                      // * 48
        a.aluRR(0, size: 3, dst: A.rdi, src: A.r15)                      // + TLB
        a.aluRR(0, size: 3, dst: A.rdx, src: A.rdx)
        a.mem(0x0B, size: 3, reg: A.rdx, A.Mem(A.rbx, JITLayout.userTag))  // or: page << 1 | user
        a.mem(0x3B, size: 3, reg: A.rdx, A.Mem(A.rdi, write ? JITLayout.tlbWriteTag : JITLayout.tlbReadTag))
        cold.append(a.jcc(5))                                            // jne: miss
        a.load(A.rdx, A.Mem(A.rdi, JITLayout.tlbHost), size: 3)
        a.testRR(size: 3, A.rdx, A.rdx)
        cold.append(a.jcc(4))                                            // jz: MMIO
        a.aluImm(4, size: 2, dst: A.rsi, 0xFFF)                          // and esi: offset in page
        a.aluRR(0, size: 3, dst: A.rsi, src: A.rdx)
    }

    /// The guest's flags back in the host's, from r11: the region of changing lookups ends.
    mutating func restoreFlags() {
        Self.loadFlagsFromR11(&a)
        flagsSaved = false
    }

    /// The host's status flags from r11 (`saveFlagsInR11`): ADD sets OF from AL, SAHF the rest
    /// from AH (clobbers rax).
    static func loadFlagsFromR11(_ a: inout A) {
        a.movRR(A.rax, A.r11, size: 2)
        a.byte(0x04); a.byte(0x7F)                                       // add al, 0x7f
        a.byte(0x9E)                                                     // sahf
    }

    /// r11 = the host's status flags as LAHF's AH and SETO's AL (clobbers rax).
    static func saveFlagsInR11(_ a: inout A) {
        a.byte(0x9F)                                                     // lahf
        a.byte(0x0F); a.byte(0x90); a.byte(0xC0)                         // seto al
        a.movRR(A.r11, A.rax, size: 2)
    }

    /// Address + TLB for instruction k's memory operand; returns the cold-path jump sites.
    mutating func memoryOperand(_ k: Int, bytes: Int, write: Bool) -> [Int] {
        address(k, segment: true)
        var sites: [Int] = []
        tlb(bytes: bytes, write: write, cold: &sites)
        return sites
    }

    /// Block-ending instructions after which translated code may go straight on to the next
    /// block (through the lookup), rather than back to the dispatcher: they change neither the
    /// mode, the privilege, the flags the dispatcher acts on (IF, TF, RF), nor a device.
    static func continuesAfterInterpreting(_ i: Instruction) -> Bool {
        switch i.op {
        case .string: return i.sub <= 4  // not INS/OUTS
        case .jmpRM, .callRM, .ret, .loop, .jrcxz, .jcc, .jmpRel, .callRel: return true
        default: return false
        }
    }

    /// Instruction k by the interpreter, inline: flags to CPUState, call, flags back.
    mutating func emitInterpreted(_ k: Int) {
        a.pushfq(); a.pop(A.r11)
        TranslatedCode.storeFlags(&a)
        callInterpreter(k)
        let bail = a.jcc(5)
        let last = k == n - 1
        if last && insns[k].op == .sti {
            // Nothing pending (the interpreter returned 0): on to the next block.
            TranslatedCode.loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags))
            exitStub(delta: offsets[k] + Int(insns[k].length))
            exitAfterInterpreter(k, from: [bail], last: true)
            return
        }
        if last && Self.continuesAfterInterpreting(insns[k]) { a.jmp(to: code.indirectExitStored) }
        exitAfterInterpreter(k, from: [bail], last: last)
        if !last { TranslatedCode.loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags)) }
    }

    /// Sets currentRIP and RIP for instruction k and calls the interpreter on it; eax (tested,
    /// ZF) is zero when translated code may go on.
    mutating func callInterpreter(_ k: Int) {
        a.lea(A.rax, A.Mem(A.r12, offsets[k]))
        a.store(A.Mem(A.rbx, JITLayout.currentRIP), A.rax, size: 3)
        a.lea(A.rax, A.Mem(A.r12, offsets[k] + Int(insns[k].length)))
        a.store(A.Mem(A.rbx, JITLayout.rip), A.rax, size: 3)
        a.load(A.rdi, A.Mem(A.rbx, JITLayout.context), size: 3)
        a.movImm64(A.rsi, UInt64(UInt(bitPattern: insns + k)))
        a.callAbsolute(interpreter)
        a.testRR(size: 2, A.rax, A.rax)
    }

    /// The exit after the interpreter stopped at (or finished, when `last`) instruction k:
    /// RIP and the flags are in CPUState already; eax is its status (0 or 2: k retired, 1: it
    /// faulted). Jumps from `sites` land here; with `last` the fall-through path exits too,
    /// else it continues after the exit code.
    mutating func exitAfterInterpreter(_ k: Int, from sites: [Int], last: Bool) {
        let skip = last ? -1 : a.jmp()
        for s in sites { a.patch(s, to: a.pos) }
        a.lea(A.r14, A.Mem(A.r14, -(n - k)))
        a.aluImm(7, size: 2, dst: A.rax, 1)
        let faulted = a.jcc(4)
        a.lea(A.r14, A.Mem(A.r14, 1))
        a.patch(faulted, to: a.pos)
        a.storeImm(A.Mem(A.rbx, JITLayout.lastExit), 0, size: 3)
        a.jmp(to: code.epilogueKeepFlags)
        if skip >= 0 { a.patch(skip, to: a.pos) }
    }

    /// A cold path: the interpreter runs instruction k (its memory access missed the TLB).
    mutating func emitCold(_ c: Cold) {
        for s in c.sites { a.patch(s, to: a.pos) }
        // The PUSHF image storeFlags wants in r11: the host's flags, after putting the guest's
        // back there when a lookup changed them.
        if c.flags == .r11AX { Self.loadFlagsFromR11(&a) }
        if c.flags != .r11 { a.pushfq(); a.pop(A.r11) }
        TranslatedCode.storeFlags(&a)
        callInterpreter(c.k)
        let bail = a.jcc(5)
        if c.resume < 0 {
            exitAfterInterpreter(c.k, from: [bail], last: true)
            return
        }
        TranslatedCode.loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags))
        // Back into a region: its later cold paths take the guest's flags from r11 (the call
        // clobbered it).
        if c.flags == .r11AX { Self.saveFlagsInR11(&a) }
        a.jmp(to: c.resume)
        exitAfterInterpreter(c.k, from: [bail], last: true)
    }

    /// Leaves the block for guest RIP block start + `delta`: straight into the next block when
    /// the dispatcher has linked this exit (same page only) and the countdown allows, else back
    /// to the dispatcher.
    mutating func exitStub(delta: Int) {
        let target = pageOffset + delta
        let chainable = target >= 0 && target < 4096
        if let d = Int32(exactly: delta) {
            a.lea(A.r12, A.Mem(A.r12, index: 0xFF, scale: 0, disp: d))
        } else {
            a.movImm64(A.rax, UInt64(bitPattern: Int64(delta)))
            a.lea(A.r12, A.Mem(A.r12, index: A.rax, scale: 0, disp: 0))
        }
        var site = -1
        if chainable {
            a.lea(A.rcx, A.Mem(A.r13, -1))
            a.movRR(A.r13, A.rcx)
            a.byte(0xE3); a.byte(5)  // jrcxz past the link jump
            site = a.jmp()
            a.patch(site, to: a.pos)
        }
        a.store(A.Mem(A.rbx, JITLayout.rip), A.r12, size: 3)
        if !chainable {
            a.jmp(to: code.indirectExit)
            return
        }
        a.movImm64(A.rax, UInt64(UInt(bitPattern: code.base + site)))
        a.store(A.Mem(A.rbx, JITLayout.lastExit), A.rax, size: 3)
        a.jmp(to: code.epilogue)
    }
}
