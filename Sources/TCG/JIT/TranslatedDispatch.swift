import Glibc

/// The run loop's side of translated code: when to translate, entering it, linking exits to
/// the next block, and the interpreter fallback translated code calls.
extension X86CPU {
    /// Runs the block at RIP (decoded as `insns`, cached in `slot`) as translated code, making
    /// it on the block's second run. Returns the instructions retired, or nil: interpret it.
    /// `link`: the previous translated run's exit, to be pointed at this block (0: none).
    @inline(__always)
    func runTranslated(_ slot: UnsafeMutablePointer<DecodeCache.Slot>, _ insns: UnsafeMutablePointer<Instruction>,
                       _ count: Int, budget: Int, link: UInt64) -> Int? {
        var offset = Int(slot.pointee.code)
        if offset <= 0 {
            guard offset == 0, translatesBlocks else { return nil }
            slot.pointee.hits &+= 1
            if slot.pointee.hits < translationThreshold { return nil }
            guard let o = translate(slot, insns, count) else { return nil }
            offset = o
        }
        // Raw pointers only: a class reference here cost a retain and a release per block.
        guard let base = translatedBase else { return nil }
        let s = st
        // A page-crossing block is entered only through the lookup, which checks its second page.
        if link != 0 {
            TranslatedCode.link(base: base, site: link, to: slot.pointee.nextPage == 0 ? offset : translatedIndirectExitR12)
        }
        s.pointee.materializeFlags()
        s.pointee.jitUserTag = s.pointee.userTag
        s.pointee.jitLastExit = 0
        let before = s.pointee.instructionCount
        // Chained blocks between polls of the APIC and the exit request.
        let countdown = UInt64(min(max(budget >> 3, 1), 1024))
        let entry = unsafeBitCast(UnsafeRawPointer(base), to: TranslatedCode.Entry.self)
        // Translated code runs at one privilege (a change leaves it): that privilege's table.
        let table = tlbTable(tlb, user: s.pointee.jitUserTag)
        entry(UnsafeMutableRawPointer(s), UnsafeMutableRawPointer(gpr), UnsafeMutableRawPointer(table), countdown,
              UnsafeRawPointer(base + offset))
        pendingLink = s.pointee.jitLastExit
        pendingLinkRIP = s.pointee.rip
        return Int(truncatingIfNeeded: s.pointee.instructionCount &- before)
    }

    /// Translates a decoded block; nil when it is not worth it or the buffer had to be flushed.
    func translate(_ slot: UnsafeMutablePointer<DecodeCache.Slot>, _ insns: UnsafeMutablePointer<Instruction>,
                   _ count: Int) -> Int? {
        guard BlockTranslator.worthTranslating(insns, count) else {
            slot.pointee.code = -1
            return nil
        }
        if translated == nil {
            let lookup = unsafeBitCast(X86CPU.translatedEntryLookup, to: UnsafeRawPointer.self)
            translated = TranslatedCode(lookup: UInt64(UInt(bitPattern: lookup)))
            translatedBase = translated?.base
            translatedIndirectExitR12 = translated?.indirectExitR12 ?? 0
            if let t = translated { virtualJumpCache.reset(slowPath: UInt64(UInt(bitPattern: t.base + t.jumpCacheMiss))) }
            if translated == nil { translatesBlocks = false; return nil }
        }
        guard let code = translated else { return nil }
        let entry = unsafeBitCast(X86CPU.interpreterEntry, to: UnsafeRawPointer.self)
        var a = HostAssembler(base: code.base, start: code.used, limit: TranslatedCode.capacity)
        let nextPage = Int(slot.pointee.nextPage) - 1
        if nextPage >= 0 {
            guard nextPage < codePageCount else { return nil }
            TranslatedCode.emitNextPageCheck(&a, word: codePageWords + nextPage, tag: slot.pointee.nextTag, miss: code.jumpCacheMiss)
        }
        var t = BlockTranslator(assembler: a,
                                insns: insns, count: count, pageOffset: Int((slot.pointee.key >> 2) & 0xFFF), code: code,
                                interpreter: UInt64(UInt(bitPattern: entry)))
        guard let start = t.translate() else {
            // Full: drop every block and decode afresh (the slot is gone with the cache).
            flushTranslations()
            return nil
        }
        code.used = t.a.pos
        slot.pointee.code = Int32(start)
        if let map = Self.perfMap {
            // perf's JIT symbol map (perf report names the block by its guest RIP).
            fputs("\(String(UInt(bitPattern: code.base + start), radix: 16)) \(String(t.a.pos - start, radix: 16)) guest_\(String(st.pointee.rip, radix: 16))\n", map)
        }
        return start
    }

    /// KEEL_TCG_PERFMAP=1: each translated block is written to /tmp/perf-PID.map as
    /// `guest_<RIP>`, so `perf report` attributes translated code to guest addresses.
    nonisolated(unsafe) static let perfMap: UnsafeMutablePointer<FILE>? = {
        guard getenv("KEEL_TCG_PERFMAP") != nil, let f = fopen("/tmp/perf-\(getpid()).map", "a") else { return nil }
        setvbuf(f, nil, _IOLBF, 0)
        return f
    }()

    /// Drops the decode cache and all translated code with it.
    func flushTranslations() {
        jumpCache.update(repeating: JumpCacheEntry(), count: JumpCacheEntry.count)
        virtualJumpCache.flush()
        cache.flush()
        translated?.reset()
        pendingLink = 0
    }

    /// Called by translated code for an instruction it does not emit, or whose memory access
    /// missed the TLB: runs it as the run loop would. 0: done, translated code goes on; 1: it
    /// faulted (the event was delivered); 2: done, but translated code must exit (the block
    /// ended: code written, mode changed). RIP and the flags are in CPUState either way.
    /// Translated code counts the instruction (CPUState.instructionCount) itself.
    static let interpreterEntry: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Int32 = { ctx, insn in
        guard let ctx, let insn else { return 1 }
        return Unmanaged<X86CPU>.fromOpaque(ctx)._withUnsafeGuaranteedRef {
            $0.interpretForTranslatedCode(insn.assumingMemoryBound(to: Instruction.self))
        }
    }

    /// Called by translated code leaving a block for a RIP it cannot link to (a return, an
    /// indirect or cross-page branch): that block's translated entry when the RIP's page is in
    /// the TLB and its block is translated and current, else 0 (the dispatcher takes over).
    static let translatedEntryLookup: @convention(c) (UnsafeMutableRawPointer?, UInt64) -> UInt64 = { ctx, rip in
        guard let ctx else { return 0 }
        return Unmanaged<X86CPU>.fromOpaque(ctx)._withUnsafeGuaranteedRef { $0.translatedEntry(rip) }
    }

    func translatedEntry(_ la: UInt64) -> UInt64 {
        guard let physicalPage = executablePage(la), let base = translatedBase else { return 0 }
        let phys = physicalPage | (la & 0xFFF)
        let page = phys >> 12
        guard page < codePageCount else { return 0 }
        let word = codePageWords[Int(truncatingIfNeeded: page)].load(ordering: .relaxed)
        // A small cache in front of the decode cache's big table (a cache miss per lookup there).
        let j = jumpCache + Int(truncatingIfNeeded: (phys ^ (phys >> 12)) & UInt64(JumpCacheEntry.count - 1))
        let offset: Int32
        if j.pointee.key == phys &+ 1 && j.pointee.tag == word {
            offset = j.pointee.code
        } else {
            let key = DecodeCache.key(phys, .long64)
            let slot = cache.slot(key)
            guard slot.pointee.key == key, slot.pointee.code > 0, slot.pointee.tag == word else { return 0 }
            // The physical jump cache checks one page; the virtual one enters such a block
            // through the check of its next page in front of it, and empties the entry with
            // either page's TLB entry.
            if slot.pointee.nextPage != 0 {
                guard nextPageIsCurrent(slot, la: la) else { return 0 }
                let code = UInt64(UInt(bitPattern: base)) &+ UInt64(slot.pointee.code)
                let global = tlbSlot(la).pointee.global && tlbSlot((la | 0xFFF) &+ 1).pointee.global
                virtualJumpCache.fill(linear: la, user: st.pointee.userTag, code: code &- UInt64(TranslatedCode.nextPageCheckSize),
                                      word: codePageWords + Int(truncatingIfNeeded: page), tag: word,
                                      global: global, crossesPage: true)
                return code
            }
            j.pointee = JumpCacheEntry(key: phys &+ 1, tag: word, code: slot.pointee.code)
            offset = slot.pointee.code
        }
        let code = UInt64(UInt(bitPattern: base)) &+ UInt64(offset)
        virtualJumpCache.fill(linear: la, user: st.pointee.userTag, code: code, word: codePageWords + Int(truncatingIfNeeded: page),
                              tag: word, global: tlbSlot(la).pointee.global, crossesPage: false)
        return code
    }

    func interpretForTranslatedCode(_ ip: UnsafeMutablePointer<Instruction>) -> Int32 {
        let s = st
        do {
            try step(self, ip, s, gpr, tlb)
        } catch {
            if !deliverInstructionFault(error, ip) { s.pointee.tripleFaulted = true }
            s.pointee.materializeFlags()
            return 1
        }
        s.pointee.materializeFlags()
        if s.pointee.breakBlock {
            s.pointee.breakBlock = false
            return 2
        }
        if ip.pointee.op == .sti { return stiMayGoOn() ? 0 : 2 }
        return 0
    }

    /// After STI, which ends its block: translated code goes on to the next block (linked, as
    /// after any block) when the APIC has nothing pending, for then the interrupt shadow (SDM
    /// Vol. 3 §6.8.3) has nothing to hold back; else the dispatcher takes the event after the
    /// shadow. The kernel's spin_unlock_irq() and local_irq_enable() are an STI each: every one
    /// went back to the dispatcher.
    @inline(__always) func stiMayGoOn() -> Bool {
        guard let apic = unretainedAPIC, !apic._withUnsafeGuaranteedRef({ $0.hasPendingEvent }) else { return false }
        st.pointee.interruptShadow = false
        return true
    }
}

/// The jump cache: a translated 64-bit block by the physical address of its first instruction,
/// valid while its page's CodePageMap word is `tag` (emptied with the translations).
struct JumpCacheEntry {
    static let count = 4096
    /// physical + 1; 0 when empty.
    var key: UInt64 = 0
    var tag: UInt32 = 0
    var code: Int32 = 0
}
