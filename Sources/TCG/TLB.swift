import Synchronization

/// One software TLB entry: a 4 KiB linear page and what each access kind may do with it without
/// a page walk. A tag is `(linear >> 12) << 1 | user`, so an entry filled at CPL 0 never serves
/// CPL 3 (and the reverse). A tag of ~0 never matches.
struct TLBEntry {
    /// 8192 entries a privilege (384 KiB each): a flush costs only the entries filled since the
    /// last one (see X86CPU.tlbFilled), so the size is what the guest's working set needs, not
    /// what CR3 writes can afford. Supervisor (CPL 0-2) and user (CPL 3) accesses have a table
    /// each, as QEMU has a TLB per MMU index: in one table the kernel's copies to and from user
    /// buffers took turns evicting the user's entries for the same pages, nearly every steady-state
    /// miss of a guest's network path.
    static let count = 8192
    static let indexBits = 13
    /// Both privileges' tables, supervisor's first.
    static let total = 2 * count
    var readTag: UInt64 = ~0
    var writeTag: UInt64 = ~0
    var execTag: UInt64 = ~0
    /// Host address of the page when it is RAM; nil for MMIO (always the slow path).
    var host: UnsafeMutableRawPointer? = nil
    var physicalPage: UInt64 = 0
    var global: Bool = false
    /// In X86CPU.tlbFilled (stays set when an INVLPG empties the entry, as the list keeps it).
    var listed: Bool = false
}

enum Access: UInt8 { case read = 0, write = 1, execute = 2 }

extension X86CPU {
    @inline(__always) var userBit: UInt64 { st.pointee.cpl == 3 ? 1 : 0 }

    @inline(__always) func tlbSlot(_ linear: UInt64) -> UnsafeMutablePointer<TLBEntry> {
        tlbEntry(tlb, linear, user: userBit)
    }

    /// Drops every entry, or every non-global one (a CR3 write with CR4.PGE): those filled
    /// since the last flush, the only ones that can hold anything.
    public func flushTLB(global: Bool) {
        virtualJumpCache.flush(keepGlobal: !global)
        var kept = 0
        for j in 0..<tlbFilledCount {
            let k = Int(tlbFilled[j])
            if !global && tlb[k].global {
                tlbFilled[kept] = UInt16(k)
                kept += 1
            } else {
                tlb[k] = TLBEntry()
            }
        }
        tlbFilledCount = kept
    }

    /// INVLPG: drops the entries for one linear page, in both privileges' tables.
    func flushTLBPage(_ linear: UInt64) {
        virtualJumpCache.flushPage(linear)
        for user: UInt64 in 0...1 {
            let e = tlbEntry(tlb, linear, user: user)
            let listed = e.pointee.listed
            e.pointee = TLBEntry()
            e.pointee.listed = listed
        }
    }

    // MARK: - Fast paths

    /// Reads `1 << size` bytes at a linear address.
    @inline(__always) func readLinear(_ la: UInt64, _ size: UInt8) throws(X86Exception) -> UInt64 {
        if let v = tlbRead(tlb, la, size, user: userBit) { return v }
        return try readSlow(la, 1 << Int(size), .read)
    }

    /// Writes `1 << size` bytes at a linear address.
    @inline(__always) func writeLinear(_ la: UInt64, _ size: UInt8, _ v: UInt64) throws(X86Exception) {
        if tlbWrite(tlb, la, size, v, user: userBit) { return }
        try writeSlow(la, 1 << Int(size), v)
    }

    /// Host pointer for an atomic read-modify-write of `bytes` at `la`, when the operand is in
    /// RAM, naturally aligned and not on a code page; nil otherwise (the caller emulates it).
    func atomicPointer(_ la: UInt64, _ bytes: Int) throws(X86Exception) -> UnsafeMutableRawPointer? {
        guard la & UInt64(bytes - 1) == 0 else { return nil }
        _ = try translate(la, .read)
        let phys = try translate(la, .write)
        let e = tlbSlot(la)
        guard e.pointee.writeTag == ((la >> 12) << 1) | userBit, let h = e.pointee.host else {
            _ = phys
            return nil
        }
        return h + Int(la & 0xFFF)
    }

    // MARK: - Slow paths

    func readSlow(_ la: UInt64, _ n: Int, _ access: Access) throws(X86Exception) -> UInt64 {
        if st.pointee.alignmentCheck && access != .execute { try checkAlignment(la, n) }
        if Int(la & 0xFFF) + n > 4096 {
            // Split across pages: translate both before touching either (a fault leaves no side effects).
            _ = try translate(la, access)
            _ = try translate(la &+ UInt64(n - 1), access)
            var v: UInt64 = 0
            for k in 0..<n {
                v |= try readSlow(la &+ UInt64(k), 1, access) << UInt64(8 * k)
            }
            return v
        }
        let phys = try translate(la, access)
        if let h = ramPage(phys) {
            let off = Int(phys & 0xFFF)
            var v: UInt64 = 0
            for k in 0..<n { v |= UInt64(h.load(fromByteOffset: off + k, as: UInt8.self)) << UInt64(8 * k) }
            return v
        }
        return mmioRead(phys, n)
    }

    func writeSlow(_ la: UInt64, _ n: Int, _ v: UInt64) throws(X86Exception) {
        if st.pointee.alignmentCheck { try checkAlignment(la, n) }
        if Int(la & 0xFFF) + n > 4096 {
            _ = try translate(la, .write)
            _ = try translate(la &+ UInt64(n - 1), .write)
            for k in 0..<n {
                try writeSlow(la &+ UInt64(k), 1, v >> UInt64(8 * k))
            }
            return
        }
        let phys = try translate(la, .write)
        if isCodePage(phys) {
            invalidateCode(physical: phys)
        }
        if let h = ramPage(phys) {
            let off = Int(phys & 0xFFF)
            for k in 0..<n { h.storeBytes(of: UInt8(truncatingIfNeeded: v >> UInt64(8 * k)), toByteOffset: off + k, as: UInt8.self) }
            return
        }
        mmioWrite(phys, n, v)
    }

    /// The guest wrote to a page holding decoded code (self-modifying code, module loading, or
    /// code another vCPU runs): every vCPU's blocks from the page become stale.
    public func invalidateCode(physical: UInt64) {
        platform.codePages.invalidate(physical)
        st.pointee.breakBlock = true
    }

    @inline(__always) func mmioRead(_ phys: UInt64, _ n: Int) -> UInt64 {
        platform.mmioRead(phys, size: n, apic: apic)
    }

    @inline(__always) func mmioWrite(_ phys: UInt64, _ n: Int, _ v: UInt64) {
        platform.mmioWrite(phys, size: n, value: v, apic: apic)
        afterDeviceWrite()
    }

    /// A device write may have asked the machine to stop (isa-debug-exit, reset, S5): like a
    /// kvm vCPU after its exit, run no further guest code.
    @inline(__always) func afterDeviceWrite() {
        if platform.stopPending() {
            exitRequest.store(true, ordering: .relaxed)
            st.pointee.breakBlock = true
        }
    }

    /// Linear to physical for `access` at the current privilege, filling the TLB.
    func translate(_ la: UInt64, _ access: Access) throws(X86Exception) -> UInt64 {
        let s = st
        let user = s.pointee.cpl == 3
        let key = ((la >> 12) << 1) | (user ? 1 : 0)
        let e = tlbSlot(la)
        switch access {
        case .read where e.pointee.readTag == key, .write where e.pointee.writeTag == key,
             .execute where e.pointee.execTag == key:
            return e.pointee.physicalPage | (la & 0xFFF)
        default: break
        }
        var w: PageWalk
        if s.pointee.cr0 & CR0.pg == 0 {
            let pa = s.pointee.efer & EFER.lma != 0 ? la : la & 0xFFFF_FFFF
            w = PageWalk(physicalPage: pa & ~0xFFF, writable: true, user: true, executable: true, global: false)
        } else {
            w = try walk(la, access, user: user)
        }
        let host = ramPage(w.physicalPage)
        var n = TLBEntry()
        n.physicalPage = w.physicalPage
        n.host = host
        n.global = w.global
        // With alignment checking on, user data accesses stay off the fast paths (see CPUState).
        let dataTags = !(user && s.pointee.alignmentCheck)
        if dataTags { n.readTag = key }
        // The walk for a write set D, or D was set already: only then may stores skip the walk.
        if !dataTags { }
        else if (access == .write || w.writableDirty) && !isCodePage(w.physicalPage) { n.writeTag = key }
        else if e.pointee.writeTag == key && e.pointee.physicalPage == w.physicalPage { n.writeTag = key }
        if w.executable { n.execTag = key }
        if !e.pointee.listed {
            tlbFilled[tlbFilledCount] = UInt16(truncatingIfNeeded: e - tlb)
            tlbFilledCount += 1
        }
        n.listed = true
        e.pointee = n
        if n.writeTag != ~0 {
            // Another vCPU may have marked the page as code since the check above (its revocation
            // scan may have run before this fill): look again after the fill is visible.
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            if isCodePage(w.physicalPage) { e.pointee.writeTag = ~0 }
        }
        return w.physicalPage | (la & 0xFFF)
    }
}
