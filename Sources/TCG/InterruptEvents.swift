import Devices
import Loop

/// What the CPU takes from its local APIC at an instruction boundary (SDM Vol. 3 §6.9 priority
/// among simultaneous events): INIT, then a start-up IPI (only in wait-for-SIPI), then NMI, then
/// a maskable interrupt (RFLAGS.IF set, no interrupt shadow). The APIC's event word is read
/// lock-free; each event is taken (acknowledged) with the big lock held.
extension X86CPU {
    /// Handles whatever `apic` has pending. Returns false on a triple fault.
    func serviceEvents(_ apic: LocalAPIC, shadow: Bool) -> Bool {
        let s = st
        let e = apic.pendingEvents
        let lock = platform.lock
        if e.contains(.initSignal) {
            lock.lock()
            let took = apic.takeINIT()
            lock.unlock()
            if took { enterINIT() }
        }
        if e.contains(.startup) {
            // Taken either way: a SIPI outside wait-for-SIPI is ignored, as on hardware.
            lock.lock()
            let v = apic.takeSIPI()
            lock.unlock()
            if let v, s.pointee.waitingForSIPI { startup(vector: v) }
        }
        if s.pointee.waitingForSIPI || shadow { return true }
        if e.contains(.nmi) && !s.pointee.nmiBlocked {
            lock.lock()
            let took = apic.takeNMI()
            lock.unlock()
            if took {
                s.pointee.nmiBlocked = true
                s.pointee.currentRIP = s.pointee.rip
                if !deliverEvent(vector: X86Exception.nmi, errorCode: nil, kind: .external) { return false }
            }
        }
        if e.contains(.interrupt) && s.pointee.rflags & RFlags.if != 0 {
            if !lock.tryLock() {
                if deferInterrupt() { return true }
                lock.lock()
            }
            interruptDeferredSince = 0
            let v = apic.acknowledgeInterrupt()
            lock.unlock()
            if let v {
                s.pointee.currentRIP = s.pointee.rip
                if !deliverEvent(vector: v, errorCode: nil, kind: .external) { return false }
            }
        }
        return true
    }

    /// How long a running vCPU may go on without an interrupt the APIC has for it while the big
    /// lock is busy (a device on the main loop moving a burst of packets, say): it retries at
    /// each block boundary instead of sleeping on the lock, which on a busy host cost a context
    /// switch each way per interrupt. Architecturally an interrupt's latency is unbounded; this
    /// keeps it short.
    static let defaultInterruptDeferral: UInt64 = 50_000

    /// True: leave the interrupt pending for now (the lock was busy).
    private func deferInterrupt() -> Bool {
        if st.pointee.halted { return false }
        let now = monotonicNanoseconds()
        if interruptDeferredSince == 0 { interruptDeferredSince = now; return true }
        return now &- interruptDeferredSince < interruptDeferral
    }

    /// Whether an event pending at the APIC ends HLT or wait-for-SIPI (the vCPU thread sleeps
    /// until this holds). Lock-free.
    public var hasWakeupEvent: Bool {
        guard let apic else { return false }
        let e = apic.pendingEvents
        let s = st
        if e.contains(.initSignal) { return true }
        if s.pointee.waitingForSIPI { return e.contains(.startup) }
        if e.contains(.nmi) && !s.pointee.nmiBlocked { return true }
        return e.contains(.interrupt) && s.pointee.rflags & RFlags.if != 0
    }

    /// Whether the CPU runs no code until an event: HLT, or an AP waiting for its start-up IPI.
    public var isWaiting: Bool { st.pointee.halted || st.pointee.waitingForSIPI }

    /// INIT (SDM Vol. 3 §9.1.1, Table 9-1): the processor state as at power-on, except that
    /// the MTRRs, PAT, MISC_ENABLE and APIC base survive. An application processor then waits
    /// for a start-up IPI; the bootstrap processor starts at the reset vector.
    public func enterINIT() {
        let s = st
        let keep = (s.pointee.pat, s.pointee.miscEnable, s.pointee.mtrrDefType, s.pointee.apicBase)
        resetToPowerOn()
        (s.pointee.pat, s.pointee.miscEnable, s.pointee.mtrrDefType, s.pointee.apicBase) = keep
        s.pointee.waitingForSIPI = !(apic.map { $0.index == 0 } ?? (index == 0))
    }

    /// A start-up IPI in wait-for-SIPI: real mode at CS = vector << 8 (base vector << 12), IP 0.
    public func startup(vector: UInt8) {
        let s = st
        s.pointee.waitingForSIPI = false
        s.pointee.halted = false
        let sel = UInt16(vector) << 8
        s.pointee.cs = SegmentCache(selector: sel, base: UInt64(sel) << 4, limit: 0xFFFF, attributes: 0x9B)
        s.pointee.rip = 0
        updateMode()
    }
}
