import Synchronization

/// The result of a page walk: where a linear page lives and what it allows.
struct PageWalk {
    var physicalPage: UInt64
    var writable: Bool
    var user: Bool
    var executable: Bool
    var global: Bool
    /// The leaf entry's D bit was already set and a write would be allowed: a store needs no
    /// walk of its own to set D.
    var writableDirty: Bool = false
}

/// Page-table entry bits (SDM Vol. 3 §4.5).
enum PTE {
    static let p: UInt64 = 1, rw: UInt64 = 2, us: UInt64 = 4, a: UInt64 = 0x20, d: UInt64 = 0x40
    static let ps: UInt64 = 0x80, g: UInt64 = 0x100, xd: UInt64 = 1 << 63
}

extension X86CPU {
    /// Physical address bits the CPU model reports (CPUID 8000_0008).
    static let physicalAddressBits: UInt64 = 40
    static let physicalMask: UInt64 = ((1 << physicalAddressBits) - 1) & ~0xFFF

    /// Reads a paging-structure entry from RAM (entries outside RAM read as not present).
    @inline(__always) func loadEntry(_ pa: UInt64, wide: Bool) -> (UInt64, UnsafeMutableRawPointer?) {
        guard let h = ramRegions.hostPointer(pa, length: wide ? 8 : 4) else { return (0, nil) }
        return wide ? (h.loadUnaligned(as: UInt64.self), h) : (UInt64(h.loadUnaligned(as: UInt32.self)), h)
    }

    /// Sets accessed/dirty bits the way the processor does: atomically, only if not yet set.
    @inline(__always) func setBits(_ h: UnsafeMutableRawPointer?, _ entry: UInt64, _ bits: UInt64, wide: Bool) {
        guard let h, entry & bits != bits else { return }
        if wide, UInt(bitPattern: h) & 7 == 0 {
            _ = h.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.bitwiseOr(bits, ordering: .relaxed)
        } else if UInt(bitPattern: h) & 3 == 0 {
            _ = h.assumingMemoryBound(to: Atomic<UInt32>.self).pointee.bitwiseOr(UInt32(truncatingIfNeeded: bits), ordering: .relaxed)
        }
    }

    func pageFault(_ la: UInt64, _ access: Access, user: Bool, present: Bool, reserved: Bool = false) -> X86Exception {
        st.pointee.cr2 = la
        var code: UInt32 = present ? 1 : 0
        if access == .write { code |= 2 }
        if user { code |= 4 }
        if reserved { code |= 8 }
        if access == .execute && st.pointee.efer & EFER.nxe != 0 { code |= 0x10 }
        return X86Exception(X86Exception.pageFault, code)
    }

    /// Walks the paging structures for `la` (SDM Vol. 3 §4.3-4.5): 4-level in long mode, PAE or
    /// 32-bit otherwise. Checks permissions, sets A (and D on a write); raises #PF.
    func walk(_ la: UInt64, _ access: Access, user: Bool) throws(X86Exception) -> PageWalk {
        let s = st
        let nxe = s.pointee.efer & EFER.nxe != 0
        let wp = s.pointee.cr0 & CR0.wp != 0
        var writable = true, usr = true, exec = true
        // Reserved bits in every entry: above MAXPHYADDR (bits 51..M), and XD without EFER.NXE.
        let reservedHigh: UInt64 = (((1 << 52) - 1) & ~((1 << Self.physicalAddressBits) - 1)) | (nxe ? 0 : PTE.xd)
        var physicalPage: UInt64
        var global = false
        var leafEntry: UInt64 = 0
        var leafHost: UnsafeMutableRawPointer? = nil
        let wide: Bool

        if s.pointee.efer & EFER.lma != 0 {
            wide = true
            // Canonical check (bits 63..47 equal).
            let top = Int64(bitPattern: la) >> 47
            guard top == 0 || top == -1 else { throw X86Exception.gp(0) }
            var table = s.pointee.cr3 & Self.physicalMask
            var level = 4
            while true {
                let shift = UInt64(12 + 9 * (level - 1))
                let idx = (la >> shift) & 0x1FF
                let (e, h) = loadEntry(table + idx * 8, wide: true)
                guard e & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
                let large = level <= 3 && level >= 2 && e & PTE.ps != 0
                var rsv = reservedHigh
                if level == 4 { rsv |= PTE.ps }
                if large { rsv |= level == 3 ? 0x3FFF_E000 : 0x1F_E000 }
                guard e & rsv == 0 else { throw pageFault(la, access, user: user, present: true, reserved: true) }
                if e & PTE.rw == 0 { writable = false }
                if e & PTE.us == 0 { usr = false }
                if e & PTE.xd != 0 { exec = false }
                if level == 1 || large {
                    leafEntry = e; leafHost = h
                    let pageMask: UInt64 = (1 << shift) - 1
                    physicalPage = ((e & Self.physicalMask & ~pageMask) | (la & pageMask)) & ~0xFFF
                    global = e & PTE.g != 0
                    break
                }
                setBits(h, e, PTE.a, wide: true)
                table = e & Self.physicalMask
                level -= 1
            }
        } else if s.pointee.cr4 & CR4.pae != 0 {
            wide = true
            let (pdpte, _) = loadEntry((s.pointee.cr3 & 0xFFFF_FFE0) + ((la >> 30) & 3) * 8, wide: true)
            guard pdpte & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
            guard pdpte & (reservedHigh | 0x1E6) & ~PTE.xd == 0 else { throw pageFault(la, access, user: user, present: true, reserved: true) }
            let (pde, ph) = loadEntry((pdpte & Self.physicalMask) + ((la >> 21) & 0x1FF) * 8, wide: true)
            guard pde & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
            guard pde & reservedHigh == 0, pde & PTE.ps == 0 || pde & 0x1F_E000 == 0 else {
                throw pageFault(la, access, user: user, present: true, reserved: true)
            }
            if pde & PTE.rw == 0 { writable = false }
            if pde & PTE.us == 0 { usr = false }
            if pde & PTE.xd != 0 { exec = false }
            if pde & PTE.ps != 0 {
                leafEntry = pde; leafHost = ph
                physicalPage = ((pde & Self.physicalMask & ~0x1F_FFFF) | (la & 0x1F_F000))
            } else {
                setBits(ph, pde, PTE.a, wide: true)
                let (pte, th) = loadEntry((pde & Self.physicalMask) + ((la >> 12) & 0x1FF) * 8, wide: true)
                guard pte & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
                guard pte & reservedHigh == 0 else { throw pageFault(la, access, user: user, present: true, reserved: true) }
                if pte & PTE.rw == 0 { writable = false }
                if pte & PTE.us == 0 { usr = false }
                if pte & PTE.xd != 0 { exec = false }
                leafEntry = pte; leafHost = th
                physicalPage = pte & Self.physicalMask
            }
            global = leafEntry & PTE.g != 0
        } else {
            wide = false
            let (pde, ph) = loadEntry((s.pointee.cr3 & 0xFFFF_F000) + ((la >> 22) & 0x3FF) * 4, wide: false)
            guard pde & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
            if pde & PTE.rw == 0 { writable = false }
            if pde & PTE.us == 0 { usr = false }
            if pde & PTE.ps != 0 && s.pointee.cr4 & CR4.pse != 0 {
                leafEntry = pde; leafHost = ph
                // PSE-36: bits 13-16 give physical address bits 32-35.
                physicalPage = (pde & 0xFFC0_0000) | ((pde & 0x1E000) << 19) | (la & 0x3F_F000)
            } else {
                setBits(ph, pde, PTE.a, wide: false)
                let (pte, th) = loadEntry((pde & 0xFFFF_F000) + ((la >> 12) & 0x3FF) * 4, wide: false)
                guard pte & PTE.p != 0 else { throw pageFault(la, access, user: user, present: false) }
                if pte & PTE.rw == 0 { writable = false }
                if pte & PTE.us == 0 { usr = false }
                leafEntry = pte; leafHost = th
                physicalPage = pte & 0xFFFF_F000
            }
            global = leafEntry & PTE.g != 0
        }
        // Permissions (SDM Vol. 3 §4.6), without SMEP/SMAP (not offered by the CPU model).
        if user && !usr { throw pageFault(la, access, user: user, present: true) }
        if access == .write && !writable && (user || wp) { throw pageFault(la, access, user: user, present: true) }
        if access == .execute && !exec && nxe { throw pageFault(la, access, user: user, present: true) }
        setBits(leafHost, leafEntry, access == .write ? PTE.a | PTE.d : PTE.a, wide: wide)
        return PageWalk(physicalPage: physicalPage, writable: writable, user: usr, executable: exec || !nxe,
                        global: global && s.pointee.cr4 & CR4.pge != 0,
                        writableDirty: leafEntry & PTE.d != 0 && (writable || (!user && !wp)))
    }
}
