import Glibc

/// Writes, zeroes, discards and resizes. A cluster is written in place only when its L2 entry
/// says it is owned by this image alone (the COPIED flag); anything else gets a new cluster, its
/// old content copied around a partial write (from the backing file, a compressed cluster or
/// zeroes), and the old cluster released once the new L2 entry is on disk.
extension Qcow2Image {
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try writeVectored([UnsafeMutableRawBufferPointer(mutating: data)], at: offset)
    }

    func needsAllocation(_ e: UInt64) -> Bool {
        if case .normal = classify(e), e & Self.copied != 0 { return false }
        return true
    }

    /// The whole write under the lock (zeroing's partial clusters), after `waitForAllocationsLocked`.
    func writeLocked(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < data.count {
            let off = offset + UInt64(done)
            let inCluster = Int(off & UInt64(cs - 1))
            let (i1, i2) = indexes(off)
            let table = try writableL2(i1)
            var length = min(data.count - done, cs - inCluster)
            var j = i2 + 1
            if case .normal(let host) = classify(table.entries[i2]), table.entries[i2] & Self.copied != 0 {
                while done + length < data.count, j < l2Entries, !needsAllocation(table.entries[j]),
                      table.entries[j] & Self.offsetMask == host + UInt64((j - i2) * cs) {
                    length += min(cs, data.count - done - length); j += 1
                }
                try checkDataTarget(host, clusters: j - i2)
                try file.pwrite(UnsafeRawBufferPointer(rebasing: data[done..<(done + length)]), at: host + UInt64(inCluster))
                done += length
                continue
            }
            while done + length < data.count, j < l2Entries, needsAllocation(table.entries[j]) {
                length += min(cs, data.count - done - length); j += 1
            }
            let n = j - i2
            let newHost = try allocateClusters(n)
            do throws(BlockError) {
                try writeNewClusters(table, i2, n, newHost, inCluster,
                                     UnsafeRawBufferPointer(rebasing: data[done..<(done + length)]),
                                     guestBase: off - UInt64(inCluster))
            } catch {
                for k in 0..<UInt64(n) { pendingFree.append((newHost >> UInt64(cb)) + k) }
                throw error
            }
            for k in 0..<n {
                releaseEntry(table.entries[i2 + k])
                table.entries[i2 + k] = (newHost + UInt64(k * cs)) | Self.copied
            }
            table.dirty = true
            if let c = lastDecompressed, table.entries[i2..<j].contains(c.entry) { lastDecompressed = nil }
            done += length
        }
    }

    /// Writes a run of freshly allocated clusters: full clusters straight from the caller's
    /// buffer, partial ones merged with their previous content.
    func writeNewClusters(_ table: L2Table, _ i2: Int, _ n: Int, _ newHost: UInt64, _ inCluster: Int,
                          _ src: UnsafeRawBufferPointer, guestBase: UInt64) throws(BlockError) {
        var k = 0
        while k < n {
            let lo = max(inCluster, k * cs), hi = min(inCluster + src.count, (k + 1) * cs)
            if lo == k * cs && hi == (k + 1) * cs {
                var m = 1
                while k + m < n, inCluster + src.count >= (k + m + 1) * cs { m += 1 }
                let from = k * cs - inCluster
                try file.pwrite(UnsafeRawBufferPointer(rebasing: src[from..<(from + m * cs)]), at: newHost + UInt64(k * cs))
                k += m
                continue
            }
            var buf = [UInt8](repeating: 0, count: cs)
            let guest = guestBase + UInt64(k * cs)
            try mutatingBytes(&buf) { (p) throws(BlockError) in
                try oldContent(table.entries[i2 + k], guestOffset: guest, into: p)
                let from = lo - inCluster
                UnsafeMutableRawBufferPointer(rebasing: p[(lo - k * cs)..<(hi - k * cs)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[from..<(from + hi - lo)]))
            }
            try bytesOf(buf) { (p) throws(BlockError) in try file.pwrite(p, at: newHost + UInt64(k * cs)) }
            k += 1
        }
    }

    /// What a guest cluster reads as now, for copy-on-write.
    func oldContent(_ e: UInt64, guestOffset: UInt64, into p: UnsafeMutableRawBufferPointer) throws(BlockError) {
        switch classify(e) {
        case .unallocated: try readBacking(into: p, at: guestOffset)
        case .zero, .zeroAllocated: memset(p.baseAddress!, 0, p.count)
        case .normal(let host):
            try validateHost(host, "data cluster for guest offset \(guestOffset)")
            try file.pread(into: p, at: host)
        case .compressed:
            let d = try decompressedCluster(e, guestOffset: guestOffset)
            d.withUnsafeBytes { p.copyMemory(from: $0) }
        }
    }

    /// Guest data must never land on metadata, whatever a (hostile) L2 entry says.
    func checkDataTarget(_ host: UInt64, clusters: Int) throws(BlockError) {
        let c = UInt64(cs)
        let l1End = header.l1TableOffset + (UInt64(header.l1Size) * 8 + c - 1) / c * c
        let rtEnd = header.refcountTableOffset + UInt64(header.refcountTableClusters) * c
        for k in 0..<UInt64(clusters) {
            let h = host + k * c
            try validateHost(h, "data cluster")
            if (h >= header.l1TableOffset && h < l1End) || (h >= header.refcountTableOffset && h < rtEnd)
                || l2Cache[h] != nil || refBlocks[h] != nil {
                throw BlockError.corrupt("'\(path)': an L2 entry points guest data at metadata (host offset \(h))")
            }
        }
    }

    /// The L2 table for L1 index `i`, allocated if missing, owned by this image alone.
    func writableL2(_ i: Int) throws(BlockError) -> L2Table {
        guard i >= 0, i < l1.count else { throw BlockError.corrupt("'\(path)': L1 index \(i) is past the L1 table") }
        if let t = try l2Table(i) {
            if l1[i] & Self.copied == 0 {
                guard try refcount((l1[i] & Self.offsetMask) >> UInt64(cb)) == 1 else {
                    throw BlockError(.unsupported, "'\(path)': L2 table \(i) is shared with a snapshot")
                }
                l1[i] |= Self.copied
                dirtyL1.insert(i)
            }
            return t
        }
        try evictL2IfFull()
        let off = try allocateClusters(1)
        let t = L2Table([UInt64](repeating: 0, count: l2Entries))
        t.dirty = true
        useClock &+= 1
        t.lastUse = useClock
        l2Cache[off] = t
        l1[i] = off | Self.copied
        dirtyL1.insert(i)
        return t
    }

    // MARK: Zeroes and discard

    public func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is opened read-only") }
        try checkRange(offset: offset, length: length)
        lock.lock(); defer { lock.unlock() }
        waitForAllocationsLocked(offset, length)
        guard !closed else { throw BlockError(.io, "'\(path)' is closed") }
        try forEachCluster(offset, length, partial: { (off, n) throws(BlockError) in try writeZeroBytes(off, n) }) {
            (off, table, i2) throws(BlockError) in
            let old = table.entries[i2]
            var new = Self.zeroFlag
            if header.version < 3 {
                if backing != nil { try writeZeroBytes(off, cs); return }
                new = 0
            } else if !mayUnmap, old & Self.copied != 0 {
                switch classify(old) {
                case .normal(let h), .zeroAllocated(let h): new = h | Self.copied | Self.zeroFlag
                default: break
                }
            }
            if new == old { return }
            if new & Self.offsetMask == 0 { releaseEntry(old) }
            table.entries[i2] = new
            table.dirty = true
        }
        lastDecompressed = nil
    }

    public func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is opened read-only") }
        try checkRange(offset: offset, length: length)
        lock.lock(); defer { lock.unlock() }
        waitForAllocationsLocked(offset, length)
        guard !closed else { throw BlockError(.io, "'\(path)' is closed") }
        // Partial clusters keep their data (discard is advisory).
        try forEachCluster(offset, length, partial: { (_, _) throws(BlockError) in }) { (_, table, i2) throws(BlockError) in
            let old = table.entries[i2]
            let new: UInt64 = (header.version >= 3 && backing != nil) ? Self.zeroFlag : 0
            if old == new { return }
            releaseEntry(old)
            table.entries[i2] = new
            table.dirty = true
        }
        lastDecompressed = nil
    }

    /// Calls `whole` for each full cluster in the range (with a writable L2 table, or skipped
    /// where the L2 table is missing and nothing shows through from a backing file) and
    /// `partial` for the unaligned head and tail.
    func forEachCluster(_ offset: UInt64, _ length: UInt64,
                        partial: (UInt64, Int) throws(BlockError) -> Void,
                        whole: (UInt64, L2Table, Int) throws(BlockError) -> Void) throws(BlockError) {
        let c = UInt64(cs)
        let end = offset + length
        var off = offset
        if off % c != 0 {
            let n = min(end, (off / c + 1) * c) - off
            try partial(off, Int(n))
            off += n
        }
        while off + c <= end {
            let (i1, i2) = indexes(off)
            if l1[i1] & Self.offsetMask == 0 && backing == nil {
                off = min(end / c * c, UInt64(i1 + 1) * UInt64(l2Entries) * c)   // skip the whole table
                continue
            }
            try whole(off, try writableL2(i1), i2)
            off += c
        }
        if off < end { try partial(off, Int(end - off)) }
    }

    func writeZeroBytes(_ offset: UInt64, _ count: Int) throws(BlockError) {
        let zeros = [UInt8](repeating: 0, count: count)
        try bytesOf(zeros) { (p) throws(BlockError) in try writeLocked(p, at: offset) }
    }

    // MARK: Resize

    /// Grows the virtual size (a bigger L1 table if needed). Shrinking is not supported.
    public func resize(to newSize: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is opened read-only") }
        lock.lock(); defer { lock.unlock() }
        guard newSize >= header.size else {
            throw BlockError(.unsupported, "shrinking qcow2 images is not supported (\(header.size) -> \(newSize) bytes)")
        }
        let perL1 = UInt64(cs) * UInt64(l2Entries)
        let needed = newSize / perL1 + (newSize % perL1 == 0 ? 0 : 1)
        guard needed * 8 <= Qcow2Header.maxL1Bytes else {
            throw BlockError(.unsupported, "size \(newSize) needs an L1 table over QEMU's 32 MiB limit")
        }
        if needed > UInt64(l1.count) { try growL1(to: Int(needed)) }
        try writeHeaderField(at: 24, value: newSize)
        try file.sync()
        header.size = newSize
    }

    func growL1(to n: Int) throws(BlockError) {
        try writeBackMetadata()
        let c = UInt64(cs)
        let oldClusters = (UInt64(l1.count) * 8 + c - 1) / c
        let clusters = (n * 8 + cs - 1) / cs
        let newOffset = try allocateClusters(clusters)
        try writeRefBlocks()
        try file.sync()
        let newL1 = l1 + [UInt64](repeating: 0, count: n - l1.count)
        var bytes = [UInt8](repeating: 0, count: clusters * cs)
        for (i, e) in newL1.enumerated() { bytes.putBE64(e, at: i * 8) }
        try bytesOf(bytes) { (p) throws(BlockError) in try file.pwrite(p, at: newOffset) }
        try file.sync()
        var h = [UInt8](repeating: 0, count: 12)
        h.putBE32(UInt32(n), at: 0); h.putBE64(newOffset, at: 4)
        try bytesOf(h) { (p) throws(BlockError) in try file.pwrite(p, at: 36) }
        try file.sync()
        let oldOffset = header.l1TableOffset
        header.l1Size = UInt32(n); header.l1TableOffset = newOffset
        l1 = newL1
        dirtyL1.removeAll()
        if oldOffset != 0 { for k in 0..<oldClusters { pendingFree.append((oldOffset / c) + k) } }
        try writeBackMetadata()
    }
}
