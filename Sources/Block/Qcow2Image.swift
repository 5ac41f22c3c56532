import Glibc

/// A qcow2 image (versions 2 and 3) as a block device. Metadata (L2 tables, refcount blocks) is
/// cached and written back in dependency order on flush or eviction: refcount blocks, barrier,
/// L2 tables, barrier, L1 entries, then the frees that the new L2 entries made possible. A crash
/// at any point leaves an image whose every reference is counted (at worst, leaked clusters),
/// and data is always written before the L2 entry that points to it.
/// One mutex covers each request's metadata work; data transfers run outside it
/// (Qcow2DataPath.swift). The backing device has its own.
public final class Qcow2Image: DirectMappedBlockDevice, @unchecked Sendable {
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let copied: UInt64 = 1 << 63
    static let compressed: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1

    public let path: String
    public let file: RawFileDevice
    public internal(set) var header: Qcow2Header
    public let backing: BlockDevice?
    public let isReadOnly: Bool
    public let snapshots: [Qcow2Snapshot]
    let snapshotTableBytes: UInt64

    let cb: Int               // cluster_bits
    let cs: Int               // cluster size
    let l2Entries: Int
    let refcountBits: Int
    let refcountsPerBlock: Int
    let refcountMax: UInt64

    var l1: [UInt64]
    var dirtyL1 = Set<Int>()
    var l2Cache: [UInt64: L2Table] = [:]
    var l2CacheCapacity: Int
    var useClock: UInt64 = 0
    var refcountTable: [UInt64]
    /// Entries past this index exist only in memory while the table grows.
    var refcountTableOnDisk: Int
    var refBlocks: [UInt64: RefBlock] = [:]
    /// Host clusters whose references were dropped from L2 entries not yet on disk.
    var pendingFree: [UInt64] = []
    var freeHint: UInt64 = 0
    /// One past the highest cluster ever allocated or present in the file.
    var highWater: UInt64
    var growingRefcountTable = false
    /// Runs being allocated whose refcounts are not all set yet.
    var reserved: [Range<UInt64>] = []
    var lastDecompressed: (entry: UInt64, data: [UInt8])? = nil
    let lock = BlockLock()
    var closed = false
    /// Guest cluster ranges of writes whose new clusters are being written outside the lock:
    /// another write or zeroing touching them waits (their L2 entries change at the end).
    var allocationsInFlight: [ClosedRange<UInt64>] = []
    /// Data transfers running outside the lock; freed clusters are not reused while any runs,
    /// so a transfer mapped before a discard never lands in a cluster given to other data.
    var transfersInFlight = 0

    final class L2Table { var entries: [UInt64]; var dirty = false; var lastUse: UInt64 = 0
        init(_ e: [UInt64]) { entries = e } }
    final class RefBlock { var bytes: [UInt8]; var dirty = false; init(_ b: [UInt8]) { bytes = b } }

    /// Opens an image whose header is already parsed, over an open file and its opened backing.
    init(file: RawFileDevice, header: Qcow2Header, backing: BlockDevice?, readOnly: Bool,
         allowCorrupt: Bool = false) throws(BlockError) {
        self.path = file.path
        self.file = file
        self.header = header
        self.backing = backing
        self.isReadOnly = readOnly
        cb = Int(header.clusterBits)
        cs = 1 << cb
        l2Entries = cs / 8
        refcountBits = header.refcountBits
        refcountsPerBlock = cs * 8 / refcountBits
        refcountMax = refcountBits == 64 ? UInt64.max : (UInt64(1) << UInt64(refcountBits)) - 1
        l2CacheCapacity = max(16, (4 << 20) / cs)
        let fileLength = try file.fileLength()
        highWater = (fileLength + UInt64(cs) - 1) >> UInt64(cb)

        l1 = try Self.readTable(file, offset: header.l1TableOffset, count: Int(header.l1Size))
        let rtEntries = Int(header.refcountTableClusters) * cs / 8
        refcountTable = try Self.readTable(file, offset: header.refcountTableOffset, count: rtEntries)
        refcountTableOnDisk = rtEntries
        (snapshots, snapshotTableBytes) = try Qcow2Snapshot.readTable(file: file, header: header, fileSize: fileLength)

        if !readOnly {
            if header.isCorrupt && !allowCorrupt {
                throw BlockError(.corrupt, "'\(path)' is marked corrupt; open it read-only or repair it with 'keel img check -r all'")
            }
            if header.nbSnapshots > 0 {
                throw BlockError(.unsupported, "'\(path)' has internal snapshots: Keel opens such images read-only")
            }
            if header.autoclearFeatures != 0 {
                // Bits Keel does not maintain (bitmaps) must be cleared before the first write.
                self.header.autoclearFeatures = 0
                try writeHeaderField(at: 88, value: 0)
                try file.sync()
            }
            if header.isDirty && !allowCorrupt {
                // Lazy refcounts left unfinished: rebuild refcounts from the tables, then clear.
                _ = try checkLocked(repair: .all)
                try flushLocked()
                try setIncompatibleFeatures(self.header.incompatibleFeatures & ~Qcow2Header.dirtyBit)
            }
        }
    }

    static func readTable(_ file: RawFileDevice, offset: UInt64, count: Int) throws(BlockError) -> [UInt64] {
        var t = [UInt64](repeating: 0, count: count)
        guard count > 0 else { return t }
        try mutatingBytes(&t) { (p) throws(BlockError) in try file.pread(into: p, at: offset) }
        for i in 0..<count { t[i] = UInt64(bigEndian: t[i]) }
        return t
    }

    deinit { close() }

    public var size: UInt64 { header.size }
    public var bypassesPageCache: Bool { file.bypassesPageCache }
    public var clusterSize: Int { cs }

    public func close() {
        lock.lock(); defer { lock.unlock() }
        if closed { return }
        while !allocationsInFlight.isEmpty { lock.wait() }
        closed = true
        if !isReadOnly { try? flushLocked() }
        file.close()
        backing?.close()
    }

    // MARK: Mapping

    enum ClusterKind: Equatable {
        case unallocated, zero, zeroAllocated(UInt64), normal(UInt64), compressed(UInt64, Int)
    }

    func classify(_ e: UInt64) -> ClusterKind {
        if e & Self.compressed != 0 {
            let x = 62 - (cb - 8)
            let hostOffset = e & ((UInt64(1) << UInt64(x)) - 1)
            let sectors = Int((e >> UInt64(x)) & ((UInt64(1) << UInt64(cb - 8)) - 1)) + 1
            return .compressed(hostOffset, sectors * 512 - Int(hostOffset & 511))
        }
        let host = e & Self.offsetMask
        if e & Self.zeroFlag != 0 { return host == 0 ? .zero : .zeroAllocated(host) }
        if host == 0 && e & Self.copied == 0 { return .unallocated }
        return .normal(host)
    }

    /// Rounded up to a cluster: where metadata may point without being past the end.
    var fileEnd: UInt64 {
        let f = (file.size + UInt64(cs) - 1) >> UInt64(cb)
        return max(f, highWater) << UInt64(cb)
    }

    func validateHost(_ host: UInt64, _ what: @autoclosure () -> String) throws(BlockError) {
        guard host & UInt64(cs - 1) == 0 else { throw BlockError.corrupt("'\(path)': \(what()) at host offset \(host) is not cluster-aligned") }
        guard host >= UInt64(cs) else { throw BlockError.corrupt("'\(path)': \(what()) at host offset \(host) overlaps the header") }
        let (end, o) = host.addingReportingOverflow(UInt64(cs))
        guard !o, end <= fileEnd else { throw BlockError.corrupt("'\(path)': \(what()) at host offset \(host) is past the end of the file (\(fileEnd) bytes)") }
    }

    /// The L2 table for L1 index `i`, loaded through the cache; nil when unallocated.
    func l2Table(_ i: Int) throws(BlockError) -> L2Table? {
        guard i >= 0, i < l1.count else { return nil }
        let off = l1[i] & Self.offsetMask
        if off == 0 { return nil }
        useClock &+= 1
        if let t = l2Cache[off] { t.lastUse = useClock; return t }
        try validateHost(off, "L2 table of L1 entry \(i)")
        if off == header.l1TableOffset || (off >= header.refcountTableOffset
            && off < header.refcountTableOffset + UInt64(header.refcountTableClusters) * UInt64(cs)) {
            throw BlockError.corrupt("'\(path)': L2 table of L1 entry \(i) at \(off) overlaps the L1 or refcount table")
        }
        try evictL2IfFull()
        let t = L2Table(try Self.readTable(file, offset: off, count: l2Entries))
        t.lastUse = useClock
        l2Cache[off] = t
        return t
    }

    func evictL2IfFull() throws(BlockError) {
        guard l2Cache.count >= l2CacheCapacity else { return }
        if l2Cache.values.contains(where: { $0.dirty }) { try writeBackMetadata() }
        // Drop the least recently used half.
        let sorted = l2Cache.sorted { $0.value.lastUse < $1.value.lastUse }
        for (k, _) in sorted.prefix(l2Cache.count / 2) { l2Cache.removeValue(forKey: k) }
    }

    func indexes(_ guestOffset: UInt64) -> (l1: Int, l2: Int) {
        let gc = guestOffset >> UInt64(cb)
        return (Int(gc / UInt64(l2Entries)), Int(gc % UInt64(l2Entries)))
    }

    // MARK: Read

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try readVectored(into: [buffer], at: offset)
    }

    func readBacking(into dst: UnsafeMutableRawBufferPointer, at off: UInt64) throws(BlockError) {
        guard let b = backing, off < b.size else { memset(dst.baseAddress!, 0, dst.count); return }
        let n = Int(min(UInt64(dst.count), b.size - off))
        try b.read(into: UnsafeMutableRawBufferPointer(rebasing: dst[0..<n]), at: off)
        if n < dst.count { memset(dst.baseAddress! + n, 0, dst.count - n) }
    }

    func decompressedCluster(_ entry: UInt64, guestOffset: UInt64) throws(BlockError) -> [UInt8] {
        if let c = lastDecompressed, c.entry == entry { return c.data }
        guard case .compressed(let host, let csize) = classify(entry) else { return [] }
        guard host >= UInt64(cs), host < fileEnd else {
            throw BlockError.corrupt("'\(path)': compressed cluster for guest offset \(guestOffset) at host offset \(host) is outside the file")
        }
        var src = [UInt8](repeating: 0, count: csize)
        try mutatingBytes(&src) { (p) throws(BlockError) in try file.pread(into: p, at: host) }
        var out = [UInt8](repeating: 0, count: cs)
        let ok = src.withUnsafeBytes { s in out.withUnsafeMutableBytes { d in inflateRaw(s, d) } }
        guard ok else { throw BlockError.corrupt("'\(path)': compressed cluster for guest offset \(guestOffset) does not decompress to a full cluster") }
        lastDecompressed = (entry, out)
        return out
    }

    // MARK: Status

    public func blockStatus(offset: UInt64, length: UInt64) throws(BlockError) -> BlockStatus {
        try checkRange(offset: offset, length: length)
        lock.lock()
        let inCluster = offset & UInt64(cs - 1)
        let (i1, i2) = indexes(offset)
        let table: L2Table?
        do { table = try l2Table(i1) } catch { lock.unlock(); throw error }
        let kind = classify(table?.entries[i2] ?? 0)
        var run = UInt64(cs) - inCluster
        if let t = table {
            var j = i2 + 1
            while run < length, j < l2Entries, Self.sameStatus(kind, classify(t.entries[j])) { run += UInt64(cs); j += 1 }
        } else {
            run = UInt64(l2Entries - i2) * UInt64(cs) - inCluster
        }
        run = min(run, length)
        lock.unlock()
        switch kind {
        case .zero, .zeroAllocated: return BlockStatus(isZero: true, length: run)
        case .normal, .compressed: return BlockStatus(isZero: false, length: run)
        case .unallocated:
            guard let b = backing, offset < b.size else { return BlockStatus(isZero: true, length: run) }
            return try b.blockStatus(offset: offset, length: min(run, b.size - offset))
        }
    }

    static func sameStatus(_ a: ClusterKind, _ b: ClusterKind) -> Bool {
        switch (a, b) {
        case (.unallocated, .unallocated), (.zero, .zero), (.zero, .zeroAllocated), (.zeroAllocated, .zero),
             (.zeroAllocated, .zeroAllocated), (.normal, .normal), (.normal, .compressed), (.compressed, .normal),
             (.compressed, .compressed): return true
        default: return false
        }
    }

    // MARK: Header fields

    func writeHeaderField(at offset: UInt64, value: UInt64) throws(BlockError) {
        let be = value.bigEndian
        try bytesOf(value: be) { (p) throws(BlockError) in try file.pwrite(p, at: offset) }
    }

    func writeHeaderField32(at offset: UInt64, value: UInt32) throws(BlockError) {
        let be = value.bigEndian
        try bytesOf(value: be) { (p) throws(BlockError) in try file.pwrite(p, at: offset) }
    }

    func setIncompatibleFeatures(_ v: UInt64) throws(BlockError) {
        guard header.version >= 3 else { return }
        try writeHeaderField(at: 72, value: v)
        try file.sync()
        header.incompatibleFeatures = v
    }
}
