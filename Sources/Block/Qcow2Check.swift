/// qemu-img check for qcow2: every cluster's references are counted from the tables (header, L1,
/// L2, data, compressed data, refcount table and blocks, snapshot table and snapshots' tables)
/// and compared with the stored refcounts. More stored than referenced is a leak (harmless),
/// fewer is a corruption (a later allocation would overwrite live data).
public enum Qcow2Repair: Sendable { case none, leaks, all }

public struct Qcow2CheckResult: Sendable {
    public var corruptions = 0
    public var leaks = 0
    public var corruptionsFixed = 0
    public var leaksFixed = 0
    /// qemu-img check's per-problem lines ("Leaked cluster 5 refcount=1 reference=0", "ERROR ...").
    public var messages: [String] = []
    public var imageEndOffset: UInt64 = 0
    public var totalClusters: UInt64 = 0
    public var allocatedClusters: UInt64 = 0
    public var fragmentedClusters: UInt64 = 0
    public var compressedClusters: UInt64 = 0
}

extension Qcow2Image {
    /// Checks (and with `repair`, fixes) the refcounts. Repair needs the image open read-write.
    public func check(repair: Qcow2Repair = .none) throws(BlockError) -> Qcow2CheckResult {
        lock.lock(); defer { lock.unlock() }
        if repair != .none {
            guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)': repair needs the image opened read-write") }
        }
        if !isReadOnly { try flushLocked() }
        var result = try checkLocked(repair: repair)
        if repair != .none && (result.leaksFixed > 0 || result.corruptionsFixed > 0) {
            try flushLocked()
            var again = try checkLocked(repair: .none)
            again.leaksFixed = result.leaksFixed
            again.corruptionsFixed = result.corruptionsFixed
            again.messages = result.messages + again.messages
            result = again
        }
        if repair == .all && result.corruptions == 0 && header.isCorrupt {
            try setIncompatibleFeatures(header.incompatibleFeatures & ~Qcow2Header.corruptBit)
        }
        return result
    }

    func checkLocked(repair: Qcow2Repair) throws(BlockError) -> Qcow2CheckResult {
        var r = Qcow2CheckResult()
        let c = UInt64(cs)
        let fileClusters = fileEnd / c
        guard fileClusters <= 1 << 28 else { throw BlockError(.unsupported, "'\(path)' has too many clusters (\(fileClusters)) to check") }
        var refs = [UInt32](repeating: 0, count: Int(fileClusters))
        r.totalClusters = (header.size + c - 1) / c

        // Problems found while counting go here, not into `r`, which checkL1 holds inout.
        var outside: [String] = []
        func inc(_ offset: UInt64, _ length: UInt64, _ what: String) {
            guard length > 0 else { return }
            let first = offset / c
            let (end, o) = offset.addingReportingOverflow(length - 1)
            let last = o ? UInt64.max : end / c
            if last >= fileClusters {
                outside.append("ERROR \(what) at offset 0x\(String(offset, radix: 16)) is outside the image file")
                return
            }
            for k in first...last where refs[Int(k)] < UInt32.max { refs[Int(k)] += 1 }
        }

        inc(0, c, "header")
        inc(header.l1TableOffset, UInt64(header.l1Size) * 8, "L1 table")
        try checkL1(l1, active: true, &r, inc)
        if header.nbSnapshots > 0 { inc(header.snapshotsOffset, snapshotTableBytes, "snapshot table") }
        for s in snapshots {
            inc(s.l1TableOffset, UInt64(s.l1Size) * 8, "snapshot L1 table")
            guard s.l1TableOffset + UInt64(s.l1Size) * 8 <= fileEnd else { continue }
            try checkL1(try Self.readTable(file, offset: s.l1TableOffset, count: Int(s.l1Size)), active: false, &r, inc)
        }
        inc(header.refcountTableOffset, UInt64(header.refcountTableClusters) * c, "refcount table")
        for (i, e) in refcountTable.enumerated() where e != 0 {
            let off = e & ~UInt64(511)
            if off % c != 0 {
                r.corruptions += 1
                r.messages.append("ERROR refcount block \(i) is not cluster aligned; refcount table entry corrupted")
                continue
            }
            inc(off, c, "refcount block \(i)")
        }

        r.corruptions += outside.count
        r.messages += outside
        var highest: UInt64 = 0
        for k in 0..<fileClusters {
            let stored: UInt64
            do throws(BlockError) { stored = try refcount(k) } catch {
                r.corruptions += 1
                r.messages.append("ERROR cannot read the refcount of cluster \(k): \(error.message)")
                continue
            }
            let counted = UInt64(refs[Int(k)])
            if stored > 0 || counted > 0 { highest = k + 1 }
            if stored == counted { continue }
            if stored > counted {
                r.leaks += 1
                r.messages.append("Leaked cluster \(k) refcount=\(stored) reference=\(counted)")
                if repair != .none {
                    try setRefcount(k, counted)
                    r.leaksFixed += 1
                    r.messages.append("Repairing cluster \(k) refcount=\(stored) reference=\(counted)")
                }
            } else {
                r.corruptions += 1
                r.messages.append("ERROR cluster \(k) refcount=\(stored) reference=\(counted)")
                if repair == .all && counted <= refcountMax {
                    try setRefcount(k, counted)
                    r.corruptionsFixed += 1
                    r.messages.append("Repairing cluster \(k) refcount=\(stored) reference=\(counted)")
                }
            }
        }
        r.imageEndOffset = highest * c
        if repair != .none { try writeRefBlocks(); try file.sync() }
        return r
    }

    private func checkL1(_ table: [UInt64], active: Bool, _ r: inout Qcow2CheckResult,
                         _ inc: (UInt64, UInt64, String) -> Void) throws(BlockError) {
        let c = UInt64(cs)
        var previousHost: UInt64 = 0
        for (i, e) in table.enumerated() {
            let off = e & Self.offsetMask
            if off == 0 { continue }
            if off % c != 0 {
                r.corruptions += 1
                r.messages.append("ERROR l2_offset=\(String(off, radix: 16)): Table is not cluster aligned; L1 entry corrupted")
                continue
            }
            inc(off, c, "L2 table")
            guard off + c <= fileEnd else { continue }
            if active { try checkCopied(e, off, "L2 cluster: l1_index=\(i) l1_entry=\(String(e, radix: 16))", &r) }
            let l2: [UInt64]
            if active, let cached = l2Cache[off] { l2 = cached.entries } else { l2 = try Self.readTable(file, offset: off, count: l2Entries) }
            for (j, entry) in l2.enumerated() {
                switch classify(entry) {
                case .unallocated, .zero: continue
                case .compressed(let host, let size):
                    inc(host, UInt64(size), "compressed cluster")
                    if active { r.allocatedClusters += 1; r.compressedClusters += 1 }
                case .normal(let host), .zeroAllocated(let host):
                    if host % c != 0 || host == 0 {
                        r.corruptions += 1
                        r.messages.append("ERROR offset=\(String(host, radix: 16)): Cluster is not properly aligned; L2 entry corrupted")
                        continue
                    }
                    inc(host, c, "data cluster")
                    if active {
                        if case .normal = classify(entry) {
                            r.allocatedClusters += 1
                            if previousHost != 0 && host != previousHost + c { r.fragmentedClusters += 1 }
                            previousHost = host
                        }
                        if host + c <= fileEnd {
                            try checkCopied(entry, host, "data cluster: l2_entry=\(String(entry, radix: 16)) (l2 index \(j))", &r)
                        }
                    }
                }
            }
        }
    }

    /// The COPIED flag must say exactly "refcount is 1" in the active tables.
    private func checkCopied(_ entry: UInt64, _ host: UInt64, _ what: String, _ r: inout Qcow2CheckResult) throws(BlockError) {
        let rc = (try? refcount(host / UInt64(cs))) ?? 0
        if (rc == 1) != (entry & Self.copied != 0) {
            r.corruptions += 1
            r.messages.append("ERROR OFLAG_COPIED \(what) refcount=\(rc)")
        }
    }
}
