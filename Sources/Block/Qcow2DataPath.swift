import Glibc

/// The data path of reads and writes, as QEMU's qcow2 driver runs it: under the lock a request
/// is mapped to host extents (L2 lookups, and for a write the allocation of new clusters and the
/// copy-on-write of partial ones into private buffers); the transfers then run without the
/// lock, one vectored call per contiguous host range, so requests proceed in parallel. A write
/// that allocated updates its L2 entries only after its data is written (data before the
/// metadata that points at it), and keeps other writes off its clusters until then.
extension Qcow2Image {
    enum Piece {
        case host(UInt64)                          // the request's bytes at this host offset
        case zero                                  // reads as zeroes
        case backing(UInt64)                       // read from the backing file at this guest offset
        case copied                                // already filled under the lock (compressed)
        case cow(UInt64, UnsafeMutableRawPointer)  // a whole new cluster, merged in a private buffer
    }

    struct Extent {
        var start: Int
        var length: Int
        var piece: Piece
    }

    /// New clusters of one write, entered in the L2 table once their data is written.
    struct Allocation { let l1: Int; let l2: Int; let count: Int; let host: UInt64 }

    static func append(_ e: Extent, to list: inout [Extent]) {
        if let last = list.last, last.start + last.length == e.start {
            switch (last.piece, e.piece) {
            case (.host(let a), .host(let b)) where a + UInt64(last.length) == b:
                list[list.count - 1].length += e.length; return
            case (.zero, .zero), (.copied, .copied):
                list[list.count - 1].length += e.length; return
            default: break
            }
        }
        list.append(e)
    }

    // MARK: Mapping (lock held)

    /// Where the bytes of a read come from. Compressed clusters are decompressed into
    /// `segments` here; without segments (a direct mapping) they, and backing-file ranges,
    /// make the mapping fail (nil).
    func mapReadLocked(_ offset: UInt64, _ total: Int, _ segments: [UnsafeMutableRawBufferPointer]?) throws(BlockError) -> [Extent]? {
        var extents: [Extent] = []
        var done = 0
        while done < total {
            let off = offset + UInt64(done)
            let inCluster = Int(off & UInt64(cs - 1))
            let (i1, i2) = indexes(off)
            let table = try l2Table(i1)
            let entry = table?.entries[i2] ?? 0
            let kind = classify(entry)
            var length = min(total - done, cs - inCluster)
            if let t = table {
                var j = i2 + 1
                while done + length < total, j < l2Entries {
                    let k = classify(t.entries[j])
                    switch (kind, k) {
                    case (.normal(let a), .normal(let b)) where b == a + UInt64((j - i2) * cs): break
                    case (.unallocated, .unallocated), (.zero, .zero), (.zero, .zeroAllocated), (.zeroAllocated, .zero),
                         (.zeroAllocated, .zeroAllocated): break
                    default: j = l2Entries; continue
                    }
                    length += min(cs, total - done - length); j += 1
                }
            } else {
                let rest = UInt64(l2Entries - i2) * UInt64(cs) - UInt64(inCluster)
                length = Int(min(UInt64(total - done), rest))
            }
            switch kind {
            case .normal(let host):
                try validateHost(host, "data cluster for guest offset \(off)")
                let last = host + UInt64(inCluster + length - 1) / UInt64(cs) * UInt64(cs)
                try validateHost(last, "data cluster for guest offset \(off)")
                Self.append(Extent(start: done, length: length, piece: .host(host + UInt64(inCluster))), to: &extents)
            case .zero, .zeroAllocated:
                Self.append(Extent(start: done, length: length, piece: .zero), to: &extents)
            case .unallocated:
                if let b = backing, off < b.size {
                    guard segments != nil else { return nil }
                    Self.append(Extent(start: done, length: length, piece: .backing(off)), to: &extents)
                } else {
                    Self.append(Extent(start: done, length: length, piece: .zero), to: &extents)
                }
            case .compressed:
                guard let segments else { return nil }
                let data = try decompressedCluster(entry, guestOffset: off)
                guard data.count >= inCluster + length else { throw BlockError.corrupt("'\(path)': compressed cluster for guest offset \(off) is short") }
                var copy = data
                copy.withUnsafeMutableBytes { p in
                    copySegments(segments, from: done, UnsafeMutableRawBufferPointer(rebasing: p[inCluster..<(inCluster + length)]), toSegments: true)
                }
                Self.append(Extent(start: done, length: length, piece: .copied), to: &extents)
            }
            done += length
        }
        return extents
    }

    /// Where the bytes of a write go. Clusters this image owns alone are written in place;
    /// the others get new clusters (recorded in `allocations`), partial ones merged with their
    /// old content into a private buffer. Without segments (a direct mapping) any allocation
    /// makes the mapping fail (nil), before anything changed.
    func mapWriteLocked(_ offset: UInt64, _ total: Int, _ segments: [UnsafeMutableRawBufferPointer]?,
                        _ allocations: inout [Allocation]) throws(BlockError) -> [Extent]? {
        var extents: [Extent] = []
        var done = 0
        do throws(BlockError) {
            while done < total {
                let off = offset + UInt64(done)
                let inCluster = Int(off & UInt64(cs - 1))
                let (i1, i2) = indexes(off)
                if segments == nil, (l1.indices.contains(i1) ? l1[i1] : 0) & Self.copied == 0 { return nil }
                let table = try writableL2(i1)
                var length = min(total - done, cs - inCluster)
                var j = i2 + 1
                if case .normal(let host) = classify(table.entries[i2]), table.entries[i2] & Self.copied != 0 {
                    while done + length < total, j < l2Entries, !needsAllocation(table.entries[j]),
                          table.entries[j] & Self.offsetMask == host + UInt64((j - i2) * cs) {
                        length += min(cs, total - done - length); j += 1
                    }
                    try checkDataTarget(host, clusters: j - i2)
                    Self.append(Extent(start: done, length: length, piece: .host(host + UInt64(inCluster))), to: &extents)
                    done += length
                    continue
                }
                guard let segments else { return nil }
                while done + length < total, j < l2Entries, needsAllocation(table.entries[j]) {
                    length += min(cs, total - done - length); j += 1
                }
                let n = j - i2
                let newHost = try allocateClusters(n)
                allocations.append(Allocation(l1: i1, l2: i2, count: n, host: newHost))
                for k in 0..<n {
                    let lo = max(inCluster, k * cs), hi = min(inCluster + length, (k + 1) * cs)
                    let host = newHost + UInt64(k * cs)
                    if lo == k * cs && hi == (k + 1) * cs {
                        Self.append(Extent(start: done + lo - inCluster, length: cs, piece: .host(host)), to: &extents)
                        continue
                    }
                    guard let buffer = RawFileDevice.alignedBuffer(cs) else { throw BlockError(.io, "out of memory for a cluster buffer") }
                    // Registered before filling, so an error below frees it with the others.
                    extents.append(Extent(start: done + lo - inCluster, length: hi - lo, piece: .cow(host, buffer)))
                    let whole = UnsafeMutableRawBufferPointer(start: buffer, count: cs)
                    try oldContent(table.entries[i2 + k], guestOffset: off - UInt64(inCluster) + UInt64(k * cs), into: whole)
                    copySegments(segments, from: done + lo - inCluster,
                                 UnsafeMutableRawBufferPointer(rebasing: whole[(lo - k * cs)..<(hi - k * cs)]), toSegments: false)
                }
                done += length
            }
        } catch {
            Self.freeBuffers(extents)
            abandonLocked(allocations)
            allocations.removeAll()
            throw error
        }
        return extents
    }

    static func freeBuffers(_ extents: [Extent]) {
        for e in extents { if case .cow(_, let b) = e.piece { free(b) } }
    }

    /// New clusters whose write failed go back (through the deferred frees).
    func abandonLocked(_ allocations: [Allocation]) {
        for a in allocations { for k in 0..<UInt64(a.count) { pendingFree.append((a.host >> UInt64(cb)) + k) } }
    }

    /// Points the L2 entries at the new clusters, now that their data is written.
    func commitLocked(_ allocations: [Allocation]) throws(BlockError) {
        for (n, a) in allocations.enumerated() {
            let table: L2Table
            do { table = try writableL2(a.l1) } catch { abandonLocked(Array(allocations[n...])); throw error }
            for k in 0..<a.count {
                releaseEntry(table.entries[a.l2 + k])
                table.entries[a.l2 + k] = (a.host + UInt64(k * cs)) | Self.copied
            }
            table.dirty = true
            if let c = lastDecompressed, table.entries[a.l2..<(a.l2 + a.count)].contains(c.entry) { lastDecompressed = nil }
        }
    }

    /// Sleeps (lock released) until no write allocating in the guest clusters of the range is
    /// running.
    func waitForAllocationsLocked(_ offset: UInt64, _ length: UInt64) {
        guard length > 0, !allocationsInFlight.isEmpty else { return }
        let range = guestClusters(offset, length)
        while allocationsInFlight.contains(where: { $0.overlaps(range) }) { lock.wait() }
    }

    func guestClusters(_ offset: UInt64, _ length: UInt64) -> ClosedRange<UInt64> {
        (offset >> UInt64(cb))...((offset + length - 1) >> UInt64(cb))
    }

    // MARK: Transfers (lock not held)

    func transfer(_ extents: [Extent], _ segments: [UnsafeMutableRawBufferPointer], isWrite: Bool) throws(BlockError) {
        var v: [iovec] = []
        for e in extents {
            switch e.piece {
            case .host(let h):
                v.removeAll(keepingCapacity: true)
                appendIOVecs(segments, from: e.start, count: e.length, to: &v)
                try v.withUnsafeMutableBufferPointer { (p) throws(BlockError) in
                    if isWrite { try file.pwritev(p, at: h) } else { try file.preadv(p, at: h) }
                }
            case .zero:
                zeroSegments(segments, from: e.start, count: e.length)
            case .backing(let guest):
                guard let b = backing else { zeroSegments(segments, from: e.start, count: e.length); continue }
                let n = Int(min(UInt64(e.length), b.size - min(guest, b.size)))
                if n > 0 { try b.readVectored(into: sliceSegments(segments, from: e.start, count: n), at: guest) }
                if n < e.length { zeroSegments(segments, from: e.start + n, count: e.length - n) }
            case .copied:
                break
            case .cow(let h, let buffer):
                try file.pwrite(UnsafeRawBufferPointer(start: buffer, count: cs), at: h)
            }
        }
    }

    // MARK: Requests

    public func readVectored(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        guard let total = totalLength(segments) else { throw BlockError(.outOfRange, "request length overflows") }
        try checkRange(offset: offset, length: UInt64(total))
        guard total > 0 else { return }
        lock.lock()
        let extents: [Extent]
        do throws(BlockError) {
            guard !closed else { throw BlockError(.io, "'\(path)' is closed") }
            extents = try mapReadLocked(offset, total, segments) ?? []
        } catch { lock.unlock(); throw error }
        transfersInFlight += 1
        lock.unlock()
        var failure: BlockError?
        do { try transfer(extents, segments, isWrite: false) } catch { failure = error }
        lock.lock()
        transfersInFlight -= 1
        lock.unlock()
        if let failure { throw failure }
    }

    public func writeVectored(_ segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is opened read-only") }
        guard let total = totalLength(segments) else { throw BlockError(.outOfRange, "request length overflows") }
        try checkRange(offset: offset, length: UInt64(total))
        guard total > 0 else { return }
        lock.lock()
        waitForAllocationsLocked(offset, UInt64(total))
        var allocations: [Allocation] = []
        let extents: [Extent]
        do throws(BlockError) {
            guard !closed else { throw BlockError(.io, "'\(path)' is closed") }
            extents = try mapWriteLocked(offset, total, segments, &allocations) ?? []
        } catch { lock.unlock(); throw error }
        let range = guestClusters(offset, UInt64(total))
        if !allocations.isEmpty { allocationsInFlight.append(range) }
        transfersInFlight += 1
        lock.unlock()

        var failure: BlockError?
        do { try transfer(extents, segments, isWrite: true) } catch { failure = error }
        Self.freeBuffers(extents)

        lock.lock(); defer { lock.unlock() }
        transfersInFlight -= 1
        if !allocations.isEmpty {
            if let i = allocationsInFlight.firstIndex(of: range) { allocationsInFlight.remove(at: i) }
            lock.broadcast()
            if failure == nil {
                do { try commitLocked(allocations) } catch { failure = error }
            } else {
                abandonLocked(allocations)
            }
        }
        if let failure { throw failure }
    }

    // MARK: DirectMappedBlockDevice

    public var dataFile: RawFileDevice { file }

    public func beginDirectIO(offset: UInt64, length: Int, isWrite: Bool, into out: inout [BlockHostExtent]) -> Bool {
        guard length > 0, !(isWrite && (isReadOnly || file.cache.syncEachWrite)),
              (try? checkRange(offset: offset, length: UInt64(length))) != nil else { return false }
        lock.lock(); defer { lock.unlock() }
        guard !closed else { return false }
        if isWrite && allocationsInFlight.contains(where: { $0.overlaps(guestClusters(offset, UInt64(length))) }) { return false }
        var none: [Allocation] = []
        let mapped = isWrite ? try? mapWriteLocked(offset, length, nil, &none) : try? mapReadLocked(offset, length, nil)
        guard let extents = mapped ?? nil else { return false }
        out.removeAll(keepingCapacity: true)
        for e in extents {
            switch e.piece {
            case .host(let h): out.append(BlockHostExtent(requestOffset: e.start, length: e.length, hostOffset: h))
            case .zero: out.append(BlockHostExtent(requestOffset: e.start, length: e.length, hostOffset: nil))
            default: return false
            }
        }
        transfersInFlight += 1
        return true
    }

    /// A read whose clusters are all in place (the L2 tables cached, nothing from a backing file
    /// or compressed) and whose data is in the page cache; false for anything else.
    public func readVectoredIfCached(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) -> Bool {
        guard !file.cache.direct || file.isInMemoryFileSystem, let total = totalLength(segments), total > 0,
              (try? checkRange(offset: offset, length: UInt64(total))) != nil else { return false }
        lock.lock()
        let mapped = !closed && l2TablesCachedLocked(offset, total)
        lock.unlock()
        guard mapped else { return false }
        var extents: [BlockHostExtent] = []
        guard beginDirectIO(offset: offset, length: total, isWrite: false, into: &extents) else { return false }
        defer { endDirectIO() }
        for e in extents {
            if let h = e.hostOffset {
                guard file.readIfCached(segments, from: e.requestOffset, count: e.length, at: h) else { return false }
            } else {
                zeroSegments(segments, from: e.requestOffset, count: e.length)
            }
        }
        return true
    }

    /// Whether mapping [offset, offset + length) reads no L2 table from the file.
    private func l2TablesCachedLocked(_ offset: UInt64, _ length: Int) -> Bool {
        let span = UInt64(cs) * UInt64(l2Entries)
        for i in offset / span ... (offset + UInt64(length) - 1) / span {
            guard i < UInt64(l1.count) else { break }
            let table = l1[Int(i)] & Self.offsetMask
            if table != 0 && l2Cache[table] == nil { return false }
        }
        return true
    }

    public func endDirectIO() {
        lock.lock()
        transfersInFlight -= 1
        lock.unlock()
    }
}
