import Glibc

/// Refcounts (qcow2.txt "Host cluster management"), cluster allocation and the ordered write-back
/// of cached metadata. Every function here runs with the image's lock held.
extension Qcow2Image {
    // MARK: Refcount blocks

    func refBlock(_ tableIndex: Int) throws(BlockError) -> RefBlock? {
        guard tableIndex < refcountTable.count else { return nil }
        let off = refcountTable[tableIndex] & ~UInt64(511)
        if off == 0 { return nil }
        if let b = refBlocks[off] { return b }
        try validateHost(off, "refcount block \(tableIndex)")
        var bytes = [UInt8](repeating: 0, count: cs)
        try mutatingBytes(&bytes) { (p) throws(BlockError) in try file.pread(into: p, at: off) }
        let b = RefBlock(bytes)
        refBlocks[off] = b
        return b
    }

    func getEntry(_ b: [UInt8], _ i: Int) -> UInt64 {
        switch refcountBits {
        case 64: return b.be64(i * 8)
        case 32: return UInt64(b.be32(i * 4))
        case 16: return UInt64(b.be16(i * 2))
        case 8: return UInt64(b[i])
        default:
            let bit = i * refcountBits
            return UInt64(b[bit / 8] >> UInt8(bit % 8)) & refcountMax
        }
    }

    func setEntry(_ b: inout [UInt8], _ i: Int, _ v: UInt64) {
        switch refcountBits {
        case 64: b.putBE64(v, at: i * 8)
        case 32: b.putBE32(UInt32(truncatingIfNeeded: v), at: i * 4)
        case 16: b.putBE16(UInt16(truncatingIfNeeded: v), at: i * 2)
        case 8: b[i] = UInt8(truncatingIfNeeded: v)
        default:
            let bit = i * refcountBits, shift = UInt8(bit % 8), mask = UInt8(truncatingIfNeeded: refcountMax) << shift
            b[bit / 8] = (b[bit / 8] & ~mask) | (UInt8(truncatingIfNeeded: v) << shift & mask)
        }
    }

    func refcount(_ cluster: UInt64) throws(BlockError) -> UInt64 {
        let t = cluster / UInt64(refcountsPerBlock)
        guard t < UInt64(refcountTable.count), let b = try refBlock(Int(t)) else { return 0 }
        return getEntry(b.bytes, Int(cluster % UInt64(refcountsPerBlock)))
    }

    /// Sets a cluster's refcount, creating its refcount block (and growing the table) if needed.
    func setRefcount(_ cluster: UInt64, _ value: UInt64) throws(BlockError) {
        let t = cluster / UInt64(refcountsPerBlock)
        guard t <= UInt64(Qcow2Header.maxRefcountTableBytes / 8) else {
            throw BlockError(.noSpace, "'\(path)': cluster \(cluster) is beyond what the refcount table can describe")
        }
        try ensureRefBlock(Int(t))
        guard let b = try refBlock(Int(t)) else { throw BlockError.corrupt("'\(path)': refcount block \(t) vanished") }
        setEntry(&b.bytes, Int(cluster % UInt64(refcountsPerBlock)), value)
        b.dirty = true
        if value == 0 && cluster < freeHint { freeHint = cluster }
    }

    func addRefcount(_ cluster: UInt64, _ delta: Int) throws(BlockError) {
        let old = try refcount(cluster)
        if delta > 0 {
            guard old < refcountMax else {
                throw BlockError.corrupt("'\(path)': refcount overflow for cluster \(cluster) (refcount_bits \(refcountBits))")
            }
            try setRefcount(cluster, old + 1)
        } else {
            guard old > 0 else { throw BlockError.corrupt("'\(path)': refcount of cluster \(cluster) would drop below zero") }
            try setRefcount(cluster, old - 1)
        }
    }

    /// Creates refcount block `t` at the end of the file. It counts itself when it covers its own
    /// cluster; otherwise its cluster is counted in another block first. The block and its
    /// refcount reach the disk before the table entry that makes it reachable.
    func ensureRefBlock(_ t: Int) throws(BlockError) {
        if t < refcountTable.count && refcountTable[t] & ~UInt64(511) != 0 { return }
        if t >= refcountTable.count {
            try growRefcountTable(covering: t)
            // Growing may itself have created block t (for the new table's own clusters).
            if refcountTable[t] & ~UInt64(511) != 0 { return }
        }
        let at = highWater
        highWater += 1
        let block = RefBlock([UInt8](repeating: 0, count: cs))
        let offset = at << UInt64(cb)
        let selfDescribing = at / UInt64(refcountsPerBlock) == UInt64(t)
        if selfDescribing { setEntry(&block.bytes, Int(at % UInt64(refcountsPerBlock)), 1) }
        refBlocks[offset] = block
        try bytesOf(block.bytes) { (p) throws(BlockError) in try file.pwrite(p, at: offset) }
        if !selfDescribing {
            try addRefcount(at, 1)
            try writeRefBlocks()
        }
        try file.sync()
        refcountTable[t] = offset
        if t < refcountTableOnDisk {
            let be = offset.bigEndian
            try bytesOf(value: be) { (p) throws(BlockError) in
                try file.pwrite(p, at: header.refcountTableOffset + UInt64(t) * 8)
            }
        }
    }

    /// Moves the refcount table to a bigger place at the end of the file (QEMU grows it the same
    /// way): new blocks and table written and synced, then the header switched, then the old
    /// table's clusters freed.
    func growRefcountTable(covering t: Int) throws(BlockError) {
        guard !growingRefcountTable else { throw BlockError.corrupt("'\(path)': refcount table growth recursed") }
        growingRefcountTable = true
        defer { growingRefcountTable = false }
        let perCluster = cs / 8
        var entries = max(t + 1, refcountTable.count * 2)
        var clusters = 0
        while true {
            clusters = (entries + perCluster - 1) / perCluster
            // The table and the blocks describing it go at the end: make sure they are covered.
            let last = highWater + UInt64(clusters) + UInt64(clusters / refcountsPerBlock + 4)
            let need = Int(last / UInt64(refcountsPerBlock)) + 1
            if need <= entries { break }
            entries = need
        }
        entries = clusters * perCluster
        guard UInt64(clusters * cs) <= Qcow2Header.maxRefcountTableBytes else {
            throw BlockError(.noSpace, "'\(path)': the refcount table would exceed 8 MiB")
        }
        let oldOffset = header.refcountTableOffset, oldClusters = Int(header.refcountTableClusters)
        refcountTable += [UInt64](repeating: 0, count: entries - refcountTable.count)
        let newOffset = try allocateClusters(clusters)
        try writeRefBlocks()
        try file.sync()
        var bytes = [UInt8](repeating: 0, count: clusters * cs)
        for (i, e) in refcountTable.enumerated() { bytes.putBE64(e, at: i * 8) }
        try bytesOf(bytes) { (p) throws(BlockError) in try file.pwrite(p, at: newOffset) }
        try file.sync()
        var h = [UInt8](repeating: 0, count: 12)
        h.putBE64(newOffset, at: 0); h.putBE32(UInt32(clusters), at: 8)
        try bytesOf(h) { (p) throws(BlockError) in try file.pwrite(p, at: 48) }
        try file.sync()
        header.refcountTableOffset = newOffset
        header.refcountTableClusters = UInt32(clusters)
        refcountTableOnDisk = entries
        for c in 0..<oldClusters { pendingFree.append((oldOffset >> UInt64(cb)) + UInt64(c)) }
    }

    /// For tests: one more reference to a cluster (refcount overflow detection).
    public func debugAddReference(clusterIndex: UInt64) throws(BlockError) {
        lock.lock(); defer { lock.unlock() }
        try addRefcount(clusterIndex, 1)
    }

    /// For tests: overwrite a refcount (to make leaks and corruptions).
    public func debugSetRefcount(clusterIndex: UInt64, _ value: UInt64) throws(BlockError) {
        lock.lock(); defer { lock.unlock() }
        try setRefcount(clusterIndex, value)
        try writeBackMetadata()
    }

    // MARK: Allocation

    /// Allocates `n` contiguous free clusters (refcount 1 each); returns the first's offset.
    func allocateClusters(_ n: Int) throws(BlockError) -> UInt64 {
        var c = freeHint, start = freeHint, run = 0
        var firstFree: UInt64? = nil
        while run < n {
            if c >= highWater {
                if run == 0 { start = c }
                run = n; break       // everything past the end is free
            }
            if try refcount(c) == 0 && !reserved.contains(where: { $0.contains(c) }) {
                if firstFree == nil { firstFree = c }
                if run == 0 { start = c }
                run += 1
            } else {
                run = 0
            }
            c += 1
        }
        let end = start + UInt64(n)
        if end > highWater { highWater = end }
        // Counting these may allocate (a refcount block, a bigger table): keep the rest of the
        // run out of those nested allocations until it is counted.
        reserved.append(start..<end)
        defer { reserved.removeLast() }
        for k in 0..<UInt64(n) { try setRefcount(start + k, 1) }
        freeHint = (firstFree == nil || firstFree == start) ? end : firstFree!
        return start << UInt64(cb)
    }

    /// Drops one reference to each host cluster a (soon to be replaced) L2 entry holds; applied
    /// after the replacing L2 entry is on disk.
    func releaseEntry(_ entry: UInt64) {
        switch classify(entry) {
        case .normal(let host), .zeroAllocated(let host):
            pendingFree.append(host >> UInt64(cb))
        case .compressed(let host, let csize):
            let first = host >> UInt64(cb), last = (host + UInt64(csize) - 1) >> UInt64(cb)
            for c in first...last { pendingFree.append(c) }
        case .unallocated, .zero: break
        }
    }

    // MARK: Write-back

    func writeRefBlocks() throws(BlockError) {
        for (off, b) in refBlocks where b.dirty {
            try bytesOf(b.bytes) { (p) throws(BlockError) in try file.pwrite(p, at: off) }
            b.dirty = false
        }
    }

    /// Writes cached metadata in dependency order (no final sync: flush adds it).
    func writeBackMetadata() throws(BlockError) {
        let refDirty = refBlocks.values.contains { $0.dirty }
        let l2Dirty = l2Cache.values.contains { $0.dirty }
        if refDirty {
            try writeRefBlocks()
            if l2Dirty || !dirtyL1.isEmpty { try file.sync() }
        }
        if l2Dirty {
            for (off, t) in l2Cache where t.dirty {
                var bytes = [UInt8](repeating: 0, count: cs)
                for (i, e) in t.entries.enumerated() { bytes.putBE64(e, at: i * 8) }
                try bytesOf(bytes) { (p) throws(BlockError) in try file.pwrite(p, at: off) }
                t.dirty = false
            }
            if !dirtyL1.isEmpty { try file.sync() }
        }
        let l1Dirty = !dirtyL1.isEmpty
        if l1Dirty {
            for i in dirtyL1.sorted() {
                let be = l1[i].bigEndian
                try bytesOf(value: be) { (p) throws(BlockError) in
                    try file.pwrite(p, at: header.l1TableOffset + UInt64(i) * 8)
                }
            }
            dirtyL1.removeAll()
        }
        if !pendingFree.isEmpty && transfersInFlight == 0 {
            // The L2 entries that dropped these references must be durable before the clusters
            // can be reused.
            if l2Dirty || refDirty || l1Dirty { try file.sync() }
            let frees = pendingFree
            pendingFree.removeAll()
            for c in frees {
                // A reference the refcounts never counted (an already inconsistent image) is
                // left for check to report rather than failing every later flush.
                guard try refcount(c) > 0 else { continue }
                try addRefcount(c, -1)
                if try refcount(c) == 0 && !reserved.contains(where: { $0.contains(c) }) { file.punchHole(offset: c << UInt64(cb), length: UInt64(cs)) }
            }
            try writeRefBlocks()
        }
    }

    func flushLocked() throws(BlockError) {
        try writeBackMetadata()
        try file.sync()
    }

    public func flush() throws(BlockError) {
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return }
        if isReadOnly { return }
        try flushLocked()
    }
}
