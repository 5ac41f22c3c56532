import Synchronization

/// Translated code's first look-up for returns, indirect and cross-page branches, probed inline
/// at the indirect exit (TranslatedCode.emitJumpCacheProbe) without leaving translated code: a
/// guest linear RIP, per privilege (one half each), to its block's host code, valid while the
/// block's page keeps its CodePageMap word. Linear addresses stand for physical ones only until
/// the mapping may change, so the cache empties with the TLB (CR3, paging controls; INVLPG
/// empties the entries of blocks on that page) and with the translations (QEMU's tb_jmp_cache,
/// flushed with its TLB). Like the TLB, it keeps entries reached through global pages across a
/// CR3 write: the kernel's code stays cached across context switches.
///
/// Two-way set associative, a set per 64-byte line, indexed by Fibonacci hashing of the RIP. A
/// direct-mapped table indexed by page number plus offset (what this was first) missed on
/// nearly every return of the kernel's network path: RIPs d pages and -d bytes apart shared an
/// entry, and even with a good hash a ping's thousand-odd return sites pair up in one table.
struct VirtualJumpCacheEntry {
    var linear: UInt64 = 0
    /// Host address of the block's translated code (for a block that crosses into the next
    /// page, of the check of that page before it); in an empty entry, the lookup's slow path.
    var code: UInt64 = 0
    /// Address of the block's first page's CodePageMap word; in an empty entry, of `tag` itself.
    var word: UInt64 = 0
    var tag: UInt32 = 0
    var unused: UInt32 = 0
}

final class VirtualJumpCache {
    /// Sets per privilege, log2.
    static let indexBits = 12
    static let ways = 2
    static let sets = 2 << indexBits
    static let count = sets * ways
    /// log2 of an entry's and a set's stride, which the probe's arithmetic hard-codes.
    static let strideShift = 5
    static let setShift = 6
    /// 2^64 / golden ratio: the top bits of RIP times this spread neighbouring RIPs apart.
    static let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15

    let entries: UnsafeMutablePointer<VirtualJumpCacheEntry>
    /// The entries filled since the last flush (each once), so a flush costs what was used.
    private let listed: UnsafeMutablePointer<Bool>
    private let filled: UnsafeMutablePointer<UInt16>
    /// Whether the entry's code pages were all reached through global TLB entries (SDM Vol. 3
    /// §4.10.2.4), and whether its block ends on the page after its first.
    private let global: UnsafeMutablePointer<Bool>
    private let crossesPage: UnsafeMutablePointer<Bool>
    private var filledCount = 0
    /// Where an empty entry leads (the lookup's slow path); set when translated code exists.
    private var missCode: UInt64 = 0

    init() {
        precondition(MemoryLayout<VirtualJumpCacheEntry>.stride == 1 << Self.strideShift)
        precondition(Self.ways << Self.strideShift == 1 << Self.setShift && Self.count <= 1 << 16)
        entries = .allocate(capacity: Self.count)
        listed = .allocate(capacity: Self.count)
        listed.initialize(repeating: false, count: Self.count)
        filled = .allocate(capacity: Self.count)
        global = .allocate(capacity: Self.count)
        global.initialize(repeating: false, count: Self.count)
        crossesPage = .allocate(capacity: Self.count)
        crossesPage.initialize(repeating: false, count: Self.count)
        for k in 0..<Self.count { empty(k) }
    }

    deinit {
        entries.deallocate()
        listed.deallocate()
        filled.deallocate()
        global.deallocate()
        crossesPage.deallocate()
    }

    /// Empties every entry, pointing them at `slowPath` (translated code was made or dropped).
    func reset(slowPath: UInt64) {
        missCode = slowPath
        for k in 0..<Self.count { empty(k); listed[k] = false }
        filledCount = 0
    }

    /// Empties the entries filled since the last flush, or (a CR3 write with CR4.PGE) those
    /// not reached through global pages.
    func flush(keepGlobal: Bool = false) {
        empty { k in !(keepGlobal && global[k]) }
    }

    /// INVLPG: empties the entries whose block has code on `linear`'s page.
    func flushPage(_ linear: UInt64) {
        let page = linear >> 12
        empty { k in
            let first = entries[k].linear >> 12
            return first == page || (crossesPage[k] && first &+ 1 == page)
        }
    }

    /// Empties the filled entries `chosen` picks; the others stay listed.
    private func empty(where chosen: (Int) -> Bool) {
        var kept = 0
        for j in 0..<filledCount {
            let k = Int(filled[j])
            if chosen(k) {
                empty(k)
                listed[k] = false
            } else {
                filled[kept] = filled[j]
                kept += 1
            }
        }
        filledCount = kept
    }

    /// The set of `linear` in the privilege's half (its first entry is `set * ways`).
    @inline(__always) static func set(_ linear: UInt64, user: UInt64) -> Int {
        Int(truncatingIfNeeded: ((linear &* multiplier) >> UInt64(64 - indexBits)) | (user & 1) << UInt64(indexBits))
    }

    /// Enters a block: over a stale entry for the same RIP, else in the set's first way, the
    /// entry there moving to the second (the older one leaves).
    func fill(linear: UInt64, user: UInt64, code: UInt64, word: UnsafeMutablePointer<Atomic<UInt32>>, tag: UInt32,
              global isGlobal: Bool, crossesPage crosses: Bool) {
        guard missCode != 0 else { return }
        let first = Self.set(linear, user: user) * Self.ways
        var k = first
        if entries[first].linear != linear {
            if entries[first + 1].linear == linear {
                k = first + 1
            } else if listed[first] {
                move(first, to: first + 1)
            }
        }
        list(k)
        global[k] = isGlobal
        crossesPage[k] = crosses
        entries[k] = VirtualJumpCacheEntry(linear: linear, code: code, word: UInt64(UInt(bitPattern: word)), tag: tag)
    }

    private func move(_ from: Int, to k: Int) {
        list(k)
        global[k] = global[from]
        crossesPage[k] = crossesPage[from]
        entries[k] = entries[from]
        // An entry's word is its own tag only when empty; a filled one points at a page's word.
    }

    private func list(_ k: Int) {
        guard !listed[k] else { return }
        listed[k] = true
        filled[filledCount] = UInt16(truncatingIfNeeded: k)
        filledCount += 1
    }

    private func empty(_ k: Int) {
        let e = entries + k
        // Linear 0 may match, and then its word (this entry's own tag) matches too: the probe
        // goes to the slow path either way.
        let tagAddress = UInt64(UInt(bitPattern: UnsafeMutableRawPointer(e))) &+ UInt64(MemoryLayout<VirtualJumpCacheEntry>.offset(of: \.tag)!)
        e.initialize(to: VirtualJumpCacheEntry(linear: 0, code: missCode, word: tagAddress, tag: 0))
        crossesPage[k] = false
    }
}
