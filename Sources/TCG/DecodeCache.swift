import Glibc

/// Decoded blocks keyed by the physical address (and decode mode) of their first instruction.
/// A block never crosses a 4 KiB page and carries its page's CodePageMap word from when it was
/// decoded: a store to the page by any vCPU changes the word, and the block no longer matches.
/// Instructions live in one pool reserved once (pages become resident as blocks are decoded);
/// when it fills, the whole cache is flushed, translated code with it (no allocation per block).
final class DecodeCache {
    struct Slot {
        /// 1 << 63 | physical << 2 | mode, or 0 when empty (so zero pages are empty slots).
        var key: UInt64 = 0
        var start: Int32 = 0
        /// The page's CodePageMap word when the block was decoded.
        var tag: UInt32 = 0
        /// Offset of the block's translated code (never 0: the entry trampoline is there); 0 none
        /// yet, -1 not worth translating.
        var code: Int32 = 0
        /// A block whose last instruction crosses into the next linear page: that page's physical
        /// page number + 1 and its CodePageMap word; 0 for a block inside one page.
        var nextPage: UInt32 = 0
        var nextTag: UInt32 = 0
        var count: UInt8 = 0
        /// Runs before translation.
        var hits: UInt8 = 0
    }

    static let slotCount = 1 << slotBits
    static let poolCapacity = 1 << 20
    /// The longest block (instructions); a block also ends at a page boundary or a branch.
    static let maxBlock = 64

    let slots: UnsafeMutablePointer<Slot>
    let pool: UnsafeMutablePointer<Instruction>
    var used = 0

    init() {
        // Both are plain values in zero pages until used: reserved, resident as the guest's code
        // is decoded.
        slots = Self.reserve(Slot.self, Self.slotCount)
        pool = Self.reserve(Instruction.self, Self.poolCapacity)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(slots), Self.slotCount * MemoryLayout<Slot>.stride)
        munmap(UnsafeMutableRawPointer(pool), Self.poolCapacity * MemoryLayout<Instruction>.stride)
    }

    private static func reserve<T>(_: T.Type, _ count: Int) -> UnsafeMutablePointer<T> {
        let bytes = count * MemoryLayout<T>.stride
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { fatalError("keel: cannot reserve \(bytes) bytes for the tcg decode cache") }
        return p.bindMemory(to: T.self, capacity: count)
    }

    @inline(__always) static func key(_ physical: UInt64, _ mode: CodeMode) -> UInt64 {
        (1 << 63) | (physical << 2) | UInt64(mode.rawValue)
    }

    /// Fibonacci hashing: neighbouring blocks and the same offset in different pages spread.
    @inline(__always) func slot(_ key: UInt64) -> UnsafeMutablePointer<Slot> {
        let h = (key &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - Self.slotBits)
        return slots + Int(truncatingIfNeeded: h)
    }
    static let slotBits = 18

    func flush() {
        // Back to zero pages.
        madvise(UnsafeMutableRawPointer(slots), Self.slotCount * MemoryLayout<Slot>.stride, MADV_DONTNEED)
        used = 0
    }

}

extension X86CPU {
    /// Finds or decodes the block at the current RIP. Returns its instructions; an undecodable
    /// first instruction raises #UD (or #GP for one over 15 bytes).
    @inline(__always)
    func block() throws(X86Exception) -> (UnsafeMutablePointer<Instruction>, Int, UnsafeMutablePointer<DecodeCache.Slot>?) {
        let s = st
        let la = s.pointee.segmentBase(1) &+ s.pointee.rip
        // The TLB hit inline: the call into `translate` cost ~6% of a run.
        let phys: UInt64
        if let p = executablePage(la) {
            phys = p | (la & 0xFFF)
        } else {
            phys = try translate(la, .execute)
        }
        let key = DecodeCache.key(phys, s.pointee.codeMode)
        let slot = cache.slot(key)
        if slot.pointee.key == key && slot.pointee.tag == codePageWord(phys)
            && (slot.pointee.nextPage == 0 || nextPageIsCurrent(slot, la: la)) {
            return (cache.pool + Int(slot.pointee.start), Int(slot.pointee.count), slot)
        }
        return try decodeBlock(la: la, phys: phys, key: key)
    }

    /// Whether a page-crossing block's second page is still the one it was decoded from, mapped
    /// executable (a TLB hit) and unwritten since. No page walk: a miss re-decodes the block.
    @inline(__always)
    func nextPageIsCurrent(_ slot: UnsafeMutablePointer<DecodeCache.Slot>, la: UInt64) -> Bool {
        guard let next = executablePage((la | 0xFFF) &+ 1) else { return false }
        return (next >> 12) &+ 1 == UInt64(slot.pointee.nextPage) && slot.pointee.nextTag == codePageWord(next)
    }

    func decodeBlock(la: UInt64, phys: UInt64, key: UInt64) throws(X86Exception) -> (UnsafeMutablePointer<Instruction>, Int, UnsafeMutablePointer<DecodeCache.Slot>?) {
        let mode = st.pointee.codeMode
        if cache.used + DecodeCache.maxBlock > DecodeCache.poolCapacity { flushTranslations() }
        let start = cache.used
        var n = 0
        var offset = Int(phys & 0xFFF)
        guard let page = ramPage(phys) else {
            // Code outside RAM (MMIO): decode one instruction from bus reads, uncached.
            let insn = try decodeSlow(la: la, mode: mode)
            cache.pool[start] = insn
            return (cache.pool + start, 1, nil)
        }
        let (tag, new) = platform.codePages.mark(phys)
        if new { platform.revokeStoreFastPath(phys) }
        var next: (page: UInt32, tag: UInt32) = (0, 0)
        decode: while n < DecodeCache.maxBlock {
            let avail = 4096 - offset
            let r = Decoder.decode((page + offset).assumingMemoryBound(to: UInt8.self), count: avail, mode: mode)
            var insn: Instruction
            switch r {
            case .success(let i): insn = i
            case .failure(.truncated):
                // Crosses into the next page: the block's last instruction when the next page is
                // RAM and executable now (checked again on every use), else run on its own,
                // uncached (a fault fetching the next page is raised only if it is reached).
                if let crossing = crossingInstruction(la: la &+ UInt64(offset - Int(phys & 0xFFF)),
                                                      offset: offset, mode: mode) {
                    insn = crossing.insn
                    next = crossing.next
                    break
                }
                if n > 0 { break decode }
                insn = try decodeSlow(la: la, mode: mode)
                cache.pool[start] = insn
                return (cache.pool + start, 1, nil)
            case .failure(let f):
                if n > 0 { break decode }
                throw undefinedInstruction(la: la, failure: f)
            }
            insn.fast = FastForm.of(insn, mode: mode)
            cache.pool[start + n] = insn
            n += 1
            offset += Int(insn.length)
            if insn.endsBlock || offset >= 4096 { break }
        }
        cache.used = start + n
        let slot = cache.slot(key)
        slot.pointee = DecodeCache.Slot(key: key, start: Int32(start), tag: tag, nextPage: next.page, nextTag: next.tag,
                                        count: UInt8(n))
        return (cache.pool + start, n, slot)
    }

    /// The instruction at `offset` in its page (linear address `la`) that continues into the
    /// next linear page, when that page is RAM and executable now (64-bit code only), with the
    /// next page's number + 1 and CodePageMap word for the block's slot; nil otherwise.
    func crossingInstruction(la: UInt64, offset: Int, mode: CodeMode) -> (insn: Instruction, next: (page: UInt32, tag: UInt32))? {
        guard mode == .long64, offset < 4096, offset > 4096 - 15 else { return nil }
        guard let nextPhys = try? translate((la | 0xFFF) &+ 1, .execute), ramPage(nextPhys) != nil,
              nextPhys >> 12 < UInt64(UInt32.max),
              let insn = try? decodeSlow(la: la, mode: mode), Int(insn.length) > 4096 - offset else { return nil }
        let (tag, new) = platform.codePages.mark(nextPhys)
        if new { platform.revokeStoreFastPath(nextPhys) }
        return (insn, (UInt32(truncatingIfNeeded: nextPhys >> 12) &+ 1, tag))
    }

    /// Decodes one instruction fetched through the MMU (page-crossing or MMIO code): RAM a page
    /// at a time (one translation per page, not per byte), MMIO byte by byte.
    func decodeSlow(la: UInt64, mode: CodeMode) throws(X86Exception) -> Instruction {
        var buf: (UInt64, UInt64) = (0, 0)
        var got = 0
        // Fetch what is reachable; a fault on a byte the instruction needs is raised below.
        var fault: X86Exception? = nil
        while got < 15 {
            let addr = la &+ UInt64(got)
            let chunk = min(15 - got, 4096 - Int(addr & 0xFFF))
            let phys: UInt64
            do throws(X86Exception) { phys = try translate(addr, .execute) } catch { fault = error; break }
            let ram = ramPage(phys)
            withUnsafeMutableBytes(of: &buf) { b in
                for k in 0..<chunk {
                    b[got + k] = ram.map { $0.load(fromByteOffset: Int(phys & 0xFFF) + k, as: UInt8.self) }
                        ?? UInt8(truncatingIfNeeded: mmioRead(phys &+ UInt64(k), 1))
                }
            }
            got += chunk
        }
        let r = withUnsafeBytes(of: &buf) { b in
            Decoder.decode(b.baseAddress!.assumingMemoryBound(to: UInt8.self), count: got, mode: mode)
        }
        switch r {
        case .success(let i): return i
        case .failure(.truncated): throw fault ?? X86Exception.gp(0)
        case .failure(let f): throw undefinedInstruction(la: la, failure: f)
        }
    }

    func undefinedInstruction(la: UInt64, failure: DecodeFailure) -> X86Exception {
        if Self.traceUD {
            var bytes: [String] = []
            for k in 0..<15 {
                guard let b = try? readSlow(la &+ UInt64(k), 1, .execute) else { break }
                bytes.append(String(b, radix: 16))
            }
            guard loggedUD.insert(la).inserted else { return failure == .tooLong ? X86Exception.gp(0) : X86Exception.ud }
            traceLine("keel tcg: #UD at rip 0x\(String(st.pointee.rip, radix: 16)) (mode \(st.pointee.codeMode)): \(bytes.joined(separator: " "))")
        }
        return failure == .tooLong ? X86Exception.gp(0) : X86Exception.ud
    }
}
