import Glibc
import Synchronization

/// Where translated code finds the vCPU's state: byte offsets taken from the Swift layout at run
/// time, so the structs can change without the translator knowing.
enum JITLayout {
    static let rip = MemoryLayout<CPUState>.offset(of: \CPUState.rip)!
    static let rflags = MemoryLayout<CPUState>.offset(of: \CPUState.rflags)!
    static let cpl = MemoryLayout<CPUState>.offset(of: \CPUState.cpl)!
    static let currentRIP = MemoryLayout<CPUState>.offset(of: \CPUState.currentRIP)!
    static let instructionCount = MemoryLayout<CPUState>.offset(of: \CPUState.instructionCount)!
    static let userTag = MemoryLayout<CPUState>.offset(of: \CPUState.jitUserTag)!
    static let lastExit = MemoryLayout<CPUState>.offset(of: \CPUState.jitLastExit)!
    static let context = MemoryLayout<CPUState>.offset(of: \CPUState.jitContext)!
    static let jumpCache = MemoryLayout<CPUState>.offset(of: \CPUState.jitJumpCache)!
    static let fsBase = MemoryLayout<CPUState>.offset(of: \CPUState.fs)! + MemoryLayout<SegmentCache>.offset(of: \SegmentCache.base)!
    static let gsBase = MemoryLayout<CPUState>.offset(of: \CPUState.gs)! + MemoryLayout<SegmentCache>.offset(of: \SegmentCache.base)!
    static let kernelGSBase = MemoryLayout<CPUState>.offset(of: \CPUState.kernelGSBase)!
    /// A segment register's selector (SegReg numbering).
    static func selector(_ n: UInt8) -> Int {
        let segment: KeyPath<CPUState, SegmentCache>
        switch n {
        case 0: segment = \CPUState.es
        case 1: segment = \CPUState.cs
        case 2: segment = \CPUState.ss
        case 3: segment = \CPUState.ds
        case 4: segment = \CPUState.fs
        default: segment = \CPUState.gs
        }
        return MemoryLayout<CPUState>.offset(of: segment)! + MemoryLayout<SegmentCache>.offset(of: \SegmentCache.selector)!
    }
    static let tlbStride = MemoryLayout<TLBEntry>.stride
    static let tlbReadTag = MemoryLayout<TLBEntry>.offset(of: \TLBEntry.readTag)!
    static let tlbWriteTag = MemoryLayout<TLBEntry>.offset(of: \TLBEntry.writeTag)!
    static let tlbHost = MemoryLayout<TLBEntry>.offset(of: \TLBEntry.host)!
    /// The status flags translated code keeps in the host's RFLAGS.
    static let arithFlags: UInt32 = 0x8D5
}

/// One vCPU's translated code: a buffer of host code (mapped once, read-write-execute), the
/// entry trampoline and exit epilogues at its start, then blocks appended until it fills; then
/// everything is dropped at once together with the decode cache (DecodeCache's policy), since
/// translated code points at the decoded instructions it falls back to.
///
/// Register convention inside translated code: rbx CPUState, rbp the guest registers, r12 the
/// current block's guest RIP, r13 the chained-block countdown, r14 instructions retired since
/// entry, r15 the software TLB; the guest's status flags live in the host's RFLAGS.
final class TranslatedCode {
    /// Reserved, not committed: pages become resident as code is written.
    static let capacity = 128 << 20
    let base: UnsafeMutablePointer<UInt8>
    var used = 0
    private(set) var epilogue = 0
    private(set) var epilogueKeepFlags = 0
    /// Leaves a block for the guest RIP in CPUState: straight into that block's translated code
    /// when the lookup finds it (and the countdown allows), else back to the dispatcher.
    private(set) var indirectExit = 0
    /// The same, entered with the guest's flags in CPUState.rflags (after the interpreter ran).
    private(set) var indirectExitStored = 0
    /// The indirect exit for a chainable exit whose target (RIP in r12) is a page-crossing
    /// block, which is entered only through the lookup's check of its second page.
    private(set) var indirectExitR12 = 0
    /// The indirect exit's slow path (flags in the host's): where an empty VirtualJumpCache
    /// entry leads.
    private(set) var jumpCacheMiss = 0
    private var firstBlock = 0

    /// The trampoline at `base`: (CPUState, guest registers, TLB, countdown, block entry).
    typealias Entry = @convention(c) (UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer,
                                      UInt64, UnsafeRawPointer) -> Void

    /// lookup(cpu, rip) -> the translated entry for that RIP, or 0 (X86CPU.translatedEntryLookup).
    init?(lookup: UInt64) {
        // The inline TLB lookup hard-codes the entry stride and count, uses BMI2's shifts, and
        // LAHF (in 64-bit mode a CPUID bit) to keep the guest's flags around a lookup that changes them.
        guard JITLayout.tlbStride == 48, TLBEntry.count == 1 << TLBEntry.indexBits, Self.hostHasBMI2AndLAHF else { return nil }
        let p = mmap(nil, Self.capacity, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { return nil }
        base = p.assumingMemoryBound(to: UInt8.self)
        var a = HostAssembler(base: base, start: 0, limit: Self.capacity)
        Self.emitTrampoline(&a, epilogue: &epilogue, keep: &epilogueKeepFlags)
        (indirectExit, indirectExitStored, jumpCacheMiss) = Self.emitIndirectExit(&a, lookup: lookup, epilogue: epilogue, keep: epilogueKeepFlags)
        indirectExitR12 = a.pos
        a.store(HostAssembler.Mem(HostAssembler.rbx, JITLayout.rip), HostAssembler.r12, size: 3)
        a.jmp(to: indirectExit)
        used = a.pos
        firstBlock = a.pos
        // The shared code is the same every time: a short jump out of reach is a bug here, not
        // a full buffer (HostAssembler leaves such a jump 0 and only sets `full`).
        precondition(!a.full, "the translated-code trampoline and exits do not fit their jumps")
    }

    deinit { munmap(base, Self.capacity) }

    /// Whether this host CPU has BMI2 and LAHF in 64-bit mode (/proc/cpuinfo's flags).
    static let hostHasBMI2AndLAHF: Bool = {
        guard let f = fopen("/proc/cpuinfo", "r") else { return false }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) > 0, let line {
            let s = String(cString: line)
            if s.hasPrefix("flags") {
                let flags = s.split(whereSeparator: { $0 == " " || $0 == "\n" })
                return flags.contains("bmi2") && flags.contains("lahf_lm")
            }
        }
        return false
    }()

    /// Drops every translated block.
    func reset() { used = firstBlock }

    /// Points an exit's jump (recorded in CPUState.jitLastExit) straight at another block.
    static func link(base: UnsafeMutablePointer<UInt8>, site: UInt64, to offset: Int) {
        let start = UInt64(UInt(bitPattern: base))
        guard site >= start, site + 4 <= start + UInt64(capacity) else { return }
        var a = HostAssembler(base: base, start: 0, limit: capacity)
        a.patch(Int(site - start), to: offset)
    }

    /// The shared indirect exit (see `indirectExit`). Entered with CPUState.rip set and the
    /// guest's flags in the host's; the lookup is a C call, so the flags go to CPUState around it.
    private static func emitIndirectExit(_ a: inout HostAssembler, lookup: UInt64, epilogue: Int, keep: Int) -> (Int, Int, Int) {
        typealias A = HostAssembler
        // Back to the dispatcher through `exit` when rcx is zero, nothing to link.
        func leaveIfRCXZero(_ a: inout HostAssembler, exit: Int) {
            let zero = a.jrcxz()
            let go = a.jmpShort()
            a.patch8(zero, to: a.pos)
            a.storeImm(A.Mem(A.rbx, JITLayout.lastExit), 0, size: 3)
            a.jmp(to: exit)
            a.patch8(go, to: a.pos)
        }
        // Each entry counts down (flags where that entry has them when it runs out).
        func countdown(_ a: inout HostAssembler, exit: Int) {
            a.lea(A.rcx, A.Mem(A.r13, -1))
            a.movRR(A.r13, A.rcx)
            leaveIfRCXZero(&a, exit: exit)
        }
        let stored = a.pos
        countdown(&a, exit: keep)
        emitJumpCacheProbe(&a, flagsStored: true)
        let toLookup = a.jmp()
        let start = a.pos
        countdown(&a, exit: epilogue)
        emitJumpCacheProbe(&a, flagsStored: false)
        let slowPath = a.pos
        a.pushfq(); a.pop(A.r11)
        storeFlags(&a)
        a.patch(toLookup, to: a.pos)
        a.load(A.rdi, A.Mem(A.rbx, JITLayout.context), size: 3)
        a.load(A.rsi, A.Mem(A.rbx, JITLayout.rip), size: 3)
        a.callAbsolute(lookup)
        a.movRR(A.rcx, A.rax)
        leaveIfRCXZero(&a, exit: keep)  // not translated: the dispatcher
        a.load(A.r12, A.Mem(A.rbx, JITLayout.rip), size: 3)
        loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags))
        a.byte(0xFF); a.byte(0xE1)  // jmp rcx
        return (start, stored, slowPath)
    }

    /// The inline probe of the VirtualJumpCache for the RIP in CPUState: on a hit (same linear
    /// RIP in either way of its set in this privilege's half, its page's CodePageMap word
    /// unchanged) it jumps straight to the block with r12 set (and, when `flagsStored`, the
    /// host's flags loaded from CPUState); else it falls through. LEA, MOV, NOT, JRCXZ and BMI2
    /// only: the guest's flags in the host's RFLAGS stay as they are (clobbers rax, rcx, rdx,
    /// rsi, r8).
    private static func emitJumpCacheProbe(_ a: inout HostAssembler, flagsStored: Bool) {
        typealias A = HostAssembler
        typealias C = VirtualJumpCache
        a.load(A.rax, A.Mem(A.rbx, JITLayout.rip), size: 3)
        a.movRR(A.rdx, A.rax)
        a.movImm64(A.r8, C.multiplier)
        a.mulx(high: A.rcx, low: A.rsi, A.r8)                              // la * multiplier
        a.movImm64(A.r8, UInt64(64 - C.indexBits))
        a.shiftx(.shrx, A.rsi, A.rsi, count: A.r8)
        a.movImm64(A.r8, UInt64(C.setShift))
        a.shiftx(.shlx, A.rsi, A.rsi, count: A.r8)                         // set * stride
        a.load(A.rdx, A.Mem(A.rbx, JITLayout.userTag), size: 3)
        a.movImm64(A.r8, UInt64(C.indexBits + C.setShift))
        a.shiftx(.shlx, A.rdx, A.rdx, count: A.r8)                         // the privilege's half
        a.lea(A.rsi, A.Mem(A.rsi, index: A.rdx, scale: 0, disp: 0))
        a.load(A.rdx, A.Mem(A.rbx, JITLayout.jumpCache), size: 3)
        a.lea(A.rsi, A.Mem(A.rsi, index: A.rdx, scale: 0, disp: 0))        // the set's first way
        a.movRR(A.rdx, A.rax)
        a.not64(A.rdx)
        a.load(A.rcx, A.Mem(A.rsi, 0), size: 3)
        a.lea(A.rcx, A.Mem(A.rcx, index: A.rdx, scale: 0, disp: 1))        // way 0's linear - la
        let hitFirst = a.jrcxz()
        a.lea(A.rsi, A.Mem(A.rsi, 1 << C.strideShift))                     // the second way
        a.load(A.rcx, A.Mem(A.rsi, 0), size: 3)
        a.lea(A.rcx, A.Mem(A.rcx, index: A.rdx, scale: 0, disp: 1))
        a.byte(0xE3); a.byte(5)                                            // jrcxz: same RIP
        let missRIP = a.jmp()
        a.patch8(hitFirst, to: a.pos)
        a.load(A.rdx, A.Mem(A.rsi, 16), size: 3)
        a.load(A.rdx, A.Mem(A.rdx, 0), size: 2)                            // the page's word now
        a.load(A.rcx, A.Mem(A.rsi, 24), size: 2)
        a.rr(0xF7, size: 2, reg: 2, rm: A.rcx)                             // not ecx
        a.mem(0x8D, size: 2, reg: A.rcx, A.Mem(A.rdx, index: A.rcx, scale: 0, disp: 1))  // lea ecx: word - tag
        a.byte(0xE3); a.byte(5)                                            // jrcxz: unwritten
        let missWord = a.jmp()
        a.movRR(A.r12, A.rax)
        if flagsStored { loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags)) }
        a.mem(0xFF, size: 2, reg: 4, A.Mem(A.rsi, 8))                      // jmp [entry.code]
        a.patch(missRIP, to: a.pos)
        a.patch(missWord, to: a.pos)
    }

    /// Bytes of `emitNextPageCheck`, which sits right before its block.
    static let nextPageCheckSize = 32

    /// Where the VirtualJumpCache enters a block that crosses into the next page: goes on into
    /// the block when that page's CodePageMap word is still `tag` (the page's mapping is the
    /// cache's to keep: it empties the entry with that page's TLB entry), else to the lookup's
    /// slow path, which drops the block. Flags untouched; clobbers rcx, rdx.
    static func emitNextPageCheck(_ a: inout HostAssembler, word: UnsafeMutablePointer<Atomic<UInt32>>, tag: UInt32, miss: Int) {
        typealias A = HostAssembler
        let start = a.pos
        a.movImm64(A.rdx, UInt64(UInt(bitPattern: word)))
        a.load(A.rcx, A.Mem(A.rdx, 0), size: 2)
        a.mem(0x8D, size: 2, reg: A.rcx, A.Mem(A.rcx, Int(Int32(bitPattern: 0 &- tag))))  // lea ecx: word - tag
        a.byte(0xE3); a.byte(5)                                          // jrcxz: unwritten
        a.jmp(to: miss)
        while a.pos - start < nextPageCheckSize { a.byte(0x90) }
        precondition(a.full || a.pos - start == nextPageCheckSize, "the next-page check changed size")
    }

    /// enter(st, gpr, tlb, countdown, block): saves the callee-saved registers, loads the
    /// convention's registers and the guest's status flags, jumps to the block. The epilogue
    /// stores the flags back (the keep-flags entry is for exits after the interpreter ran, whose
    /// flags are already in CPUState), adds the retired count and returns.
    private static func emitTrampoline(_ a: inout HostAssembler, epilogue: inout Int, keep: inout Int) {
        typealias A = HostAssembler
        for r in [A.rbx, A.rbp, A.r12, A.r13, A.r14, A.r15] { a.push(r) }
        a.aluImm(5, size: 3, dst: A.rsp, 8)
        a.movRR(A.rbx, A.rdi); a.movRR(A.rbp, A.rsi); a.movRR(A.r15, A.rdx); a.movRR(A.r13, A.rcx)
        a.aluRR(6, size: 2, dst: A.r14, src: A.r14)
        a.load(A.r12, A.Mem(A.rbx, JITLayout.rip), size: 3)
        loadFlags(&a, from: A.Mem(A.rbx, JITLayout.rflags))
        a.byte(0x41); a.byte(0xFF); a.byte(0xE0)  // jmp r8
        epilogue = a.pos
        a.pushfq(); a.pop(A.r11)
        storeFlags(&a)
        keep = a.pos
        a.mem(0x01, size: 3, reg: A.r14, A.Mem(A.rbx, JITLayout.instructionCount))  // add [count], r14
        a.aluImm(0, size: 3, dst: A.rsp, 8)
        for r in [A.r15, A.r14, A.r13, A.r12, A.rbp, A.rbx] { a.pop(r) }
        a.ret()
    }

    /// Sets the host's status flags from the RFLAGS image at `m` (clobbers rax, rdx): SAHF for
    /// SF ZF AF PF CF, an ADD whose signed overflow is the image's OF. POPF would also load TF,
    /// DF and AC into the host, and is slower.
    static func loadFlags(_ a: inout HostAssembler, from m: HostAssembler.Mem) {
        typealias A = HostAssembler
        a.load(A.rax, m, size: 2)
        loadFlagsFromRAX(&a)
    }

    /// As loadFlags, from the image in eax.
    static func loadFlagsFromRAX(_ a: inout HostAssembler) {
        typealias A = HostAssembler
        a.movRR(A.rdx, A.rax, size: 2)
        a.aluImm(4, size: 2, dst: A.rdx, 0x800)
        a.shift(digit: 4, size: 2, A.rdx, count: 20)  // OF to bit 31, bit 30 clear
        a.aluRR(0, size: 2, dst: A.rdx, src: A.rdx)   // OF := bit 31 xor bit 30
        a.byte(0x88); a.byte(0xC4)                    // mov ah, al
        a.byte(0x9E)                                  // sahf
    }

    /// Merges the status flags saved in r11 (a PUSHF image) into CPUState.rflags (clobbers rax, rcx).
    static func storeFlags(_ a: inout HostAssembler) {
        typealias A = HostAssembler
        let m = A.Mem(A.rbx, JITLayout.rflags)
        a.load(A.rax, m, size: 3)
        a.aluImm(4, size: 3, dst: A.rax, ~UInt64(JITLayout.arithFlags))
        a.movRR(A.rcx, A.r11, size: 2)
        a.aluImm(4, size: 2, dst: A.rcx, UInt64(JITLayout.arithFlags))
        a.aluRR(1, size: 3, dst: A.rax, src: A.rcx)
        a.store(m, A.rax, size: 3)
    }
}
