import Synchronization

/// Translated code's first look-up for returns, indirect and cross-page branches, probed inline
/// at the indirect exit (TranslatedCode.emitJumpCacheProbe) without leaving translated code: a
/// guest linear RIP, per privilege (one half each), to its block's host code, valid while the
/// block's page keeps its CodePageMap word. Linear addresses stand for physical ones only until
/// the mapping may change, so the cache empties with the TLB (CR3, paging controls; INVLPG
/// empties the page's entries) and with the translations (QEMU's tb_jmp_cache, flushed with its
/// TLB). Like the TLB, it keeps entries reached through a global page across a CR3 write: the
/// kernel's code stays cached across context switches.
struct VirtualJumpCacheEntry {
    var linear: UInt64 = 0
    /// Host address of the block's translated code; in an empty entry, the lookup's slow path.
    var code: UInt64 = 0
    /// Address of the block's page's CodePageMap word; in an empty entry, of `tag` itself.
    var word: UInt64 = 0
    var tag: UInt32 = 0
    var unused: UInt32 = 0
}

final class VirtualJumpCache {
    static let indexBits = 11
    static let half = 1 << indexBits
    static let count = 2 * half
    /// log2 of the entry stride, which the probe's index arithmetic hard-codes.
    static let strideShift = 5

    let entries: UnsafeMutablePointer<VirtualJumpCacheEntry>
    /// The entries filled since the last flush (each once), so a flush costs what was used.
    private let listed: UnsafeMutablePointer<Bool>
    private let filled: UnsafeMutablePointer<UInt16>
    /// Whether the entry's code page was reached through a global TLB entry (SDM Vol. 3 §4.10.2.4).
    private let global: UnsafeMutablePointer<Bool>
    private var filledCount = 0
    /// Where an empty entry leads (the lookup's slow path); set when translated code exists.
    private var missCode: UInt64 = 0

    init() {
        precondition(MemoryLayout<VirtualJumpCacheEntry>.stride == 1 << Self.strideShift)
        entries = .allocate(capacity: Self.count)
        listed = .allocate(capacity: Self.count)
        listed.initialize(repeating: false, count: Self.count)
        filled = .allocate(capacity: Self.count)
        global = .allocate(capacity: Self.count)
        global.initialize(repeating: false, count: Self.count)
        for k in 0..<Self.count { empty(k) }
    }

    deinit {
        entries.deallocate()
        listed.deallocate()
        filled.deallocate()
        global.deallocate()
    }

    /// Empties every entry, pointing them at `slowPath` (translated code was made or dropped).
    func reset(slowPath: UInt64) {
        missCode = slowPath
        for k in 0..<Self.count { empty(k); listed[k] = false }
        filledCount = 0
    }

    /// Empties the entries filled since the last flush, or (a CR3 write with CR4.PGE) those
    /// not reached through a global page.
    func flush(keepGlobal: Bool = false) {
        empty { k in !(keepGlobal && global[k]) }
    }

    /// INVLPG: empties the entries whose block starts on `linear`'s page (blocks that cross a
    /// page are never entered here).
    func flushPage(_ linear: UInt64) {
        let page = linear >> 12
        empty { k in entries[k].linear >> 12 == page }
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

    @inline(__always) static func index(_ linear: UInt64, user: UInt64) -> Int {
        Int(truncatingIfNeeded: ((linear &+ (linear >> 12)) & UInt64(half - 1)) | (user & 1) << UInt64(indexBits))
    }

    func fill(linear: UInt64, user: UInt64, code: UInt64, word: UnsafeMutablePointer<Atomic<UInt32>>, tag: UInt32, global isGlobal: Bool) {
        guard missCode != 0 else { return }
        let k = Self.index(linear, user: user)
        if !listed[k] {
            listed[k] = true
            filled[filledCount] = UInt16(truncatingIfNeeded: k)
            filledCount += 1
        }
        global[k] = isGlobal
        entries[k] = VirtualJumpCacheEntry(linear: linear, code: code, word: UInt64(UInt(bitPattern: word)), tag: tag)
    }

    private func empty(_ k: Int) {
        let e = entries + k
        // Linear 0 may match, and then its word (this entry's own tag) matches too: the probe
        // goes to the slow path either way.
        let tagAddress = UInt64(UInt(bitPattern: UnsafeMutableRawPointer(e))) &+ UInt64(MemoryLayout<VirtualJumpCacheEntry>.offset(of: \.tag)!)
        e.initialize(to: VirtualJumpCacheEntry(linear: 0, code: missCode, word: tagAddress, tag: 0))
    }
}
