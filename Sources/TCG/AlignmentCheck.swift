/// Alignment checking (SDM Vol. 3 §6.15 "Interrupt 17—Alignment Check Exception"): with CR0.AM
/// and RFLAGS.AC set, a misaligned data access at CPL 3 raises #AC(0). The software TLB's fast
/// paths do not check alignment, so while checking is on, user pages get no data tags and every
/// user data access goes through readSlow/writeSlow, which check. Instruction fetches, and the
/// implicit supervisor accesses of descriptor tables and event delivery, are never checked.
extension X86CPU {
    /// Instructions that change CR0.AM, RFLAGS.AC or the CPL end their block (POPF, IRET,
    /// SYSCALL/SYSRET, MOV CR0, events), so once per block is often enough.
    @inline(__always) func updateAlignmentCheck() {
        let s = st
        // Kernel code (most of what a Linux guest runs) pays one compare.
        guard s.pointee.cpl == 3 || s.pointee.alignmentCheck else { return }
        let on = s.pointee.cpl == 3 && s.pointee.cr0 & CR0.am != 0 && s.pointee.rflags & RFlags.ac != 0
        if on != s.pointee.alignmentCheck {
            s.pointee.alignmentCheck = on
            // Entries filled before have data tags: drop them.
            if on { flushTLB(global: true) }
        }
    }

    /// #AC(0) for `n` bytes at `la` not aligned to `n` (a power of two), at CPL 3.
    @inline(__always) func checkAlignment(_ la: UInt64, _ n: Int) throws(X86Exception) {
        if st.pointee.cpl == 3 && la & UInt64(truncatingIfNeeded: n &- 1) != 0 {
            throw X86Exception(X86Exception.alignment, 0)
        }
    }
}
