/// The local APIC timer (SDM Vol. 3 10.5.4): one-shot, periodic and TSC-deadline, counting at
/// `timerFrequencyHz` / divide. The count is computed from the clock when read; a host timer
/// (`GuestClock.makeTimer`) is armed only for the next expiry. Big lock held.
extension LocalAPIC {
    public enum TimerMode: Sendable { case oneShot, periodic, tscDeadline }

    /// A guest may program a 1-tick period; host timers never fire more often than this and
    /// missed periods coalesce into one interrupt (as KVM's min_timer_period_us).
    static let minimumPeriodNs: UInt64 = 100_000

    public var timerMode: TimerMode {
        switch (lvt[Self.lvtTimer] >> 17) & 3 {
        case 1: return .periodic
        case 2: return .tscDeadline
        default: return .oneShot   // 3 is reserved: behaves as one-shot
        }
    }

    /// Divide configuration bits 0, 1, 3 (SDM Figure 10-10): 2, 4, ..., 128, and 0b111 = 1.
    var timerDivisor: UInt64 {
        let v = (timerDivideConfig & 3) | ((timerDivideConfig >> 1) & 4)
        return v == 7 ? 1 : UInt64(2) << UInt64(v)
    }

    /// Nanoseconds for `ticks` timer ticks at the current divisor.
    func nanoseconds(forTicks ticks: UInt64) -> UInt64 {
        mulDivRoundingUp(ticks &* timerDivisor, 1_000_000_000, timerFrequencyHz)
    }

    func ticks(inNanoseconds ns: UInt64) -> UInt64 {
        mulDiv(ns, timerFrequencyHz, 1_000_000_000 &* timerDivisor)
    }

    /// The current-count register.
    var currentCount: UInt32 {
        guard timerCounting, timerMode != .tscDeadline, timerInitialCount != 0 else { return 0 }
        let now = clock.nanoseconds
        let elapsed = ticks(inNanoseconds: now >= timerLoadNs ? now - timerLoadNs : 0)
        let initial = UInt64(timerInitialCount), atLoad = min(timerLoadCount, initial)
        switch timerMode {
        case .periodic:
            // Ticks since the count last equalled the initial count.
            let sinceReload = (initial - atLoad) &+ elapsed
            return UInt32(truncatingIfNeeded: initial - sinceReload % initial)
        default: return elapsed >= atLoad ? 0 : UInt32(truncatingIfNeeded: atLoad - elapsed)
        }
    }

    func stopTimer() {
        timerCounting = false
        hostTimer?.disarm()
    }

    func writeInitialCount(_ value: UInt32) {
        // Ignored in TSC-deadline mode (SDM 10.5.4.1).
        guard timerMode != .tscDeadline else { return }
        timerInitialCount = value
        guard value != 0 else { stopTimer(); return }
        startCounting(from: clock.nanoseconds)
    }

    func startCounting(from now: UInt64) {
        timerLoadNs = now
        timerLoadCount = UInt64(timerInitialCount)
        timerCounting = true
        timerNextNs = now &+ nanoseconds(forTicks: UInt64(timerInitialCount))
        hostTimer?.arm(atNanoseconds: timerNextNs)
    }

    /// A new divisor applies from now: the count continues from its current value.
    func writeDivideConfig(_ value: UInt32) {
        guard value != timerDivideConfig else { return }
        let running = timerCounting && timerMode != .tscDeadline && timerInitialCount != 0
        let remaining = UInt64(currentCount)
        timerDivideConfig = value
        guard running, remaining != 0 else { return }
        let now = clock.nanoseconds
        timerLoadNs = now
        timerLoadCount = remaining
        timerNextNs = now &+ nanoseconds(forTicks: remaining)
        hostTimer?.arm(atNanoseconds: timerNextNs)
    }

    func writeTimerLVT(_ value: UInt32) {
        let oldMode = timerMode
        lvt[Self.lvtTimer] = value
        let newMode = timerMode
        if oldMode != newMode && (oldMode == .tscDeadline || newMode == .tscDeadline) {
            // Switching to or from TSC-deadline mode disarms the timer (SDM 10.5.4.1).
            tscDeadline = 0
            timerInitialCount = 0
            stopTimer()
        } else if timerCounting && newMode == .periodic && oldMode == .oneShot && currentCount == 0 {
            // An expired one-shot stays expired.
            stopTimer()
        }
        updateEvents()
    }

    func writeTSCDeadline(_ value: UInt64) {
        guard timerMode == .tscDeadline else { return }
        tscDeadline = value
        guard value != 0 else { stopTimer(); return }
        timerCounting = true
        armDeadline()
    }

    func armDeadline() {
        let tsc = clock.tsc
        let now = clock.nanoseconds
        let delta = tscDeadline > tsc ? mulDivRoundingUp(tscDeadline - tsc, 1_000_000_000, max(clock.tscFrequencyHz, 1)) : 0
        timerNextNs = now &+ delta
        hostTimer?.arm(atNanoseconds: timerNextNs)
    }

    /// The host timer's callback (big lock held).
    func timerExpired() {
        guard timerCounting else { return }
        let now = clock.nanoseconds
        switch timerMode {
        case .tscDeadline:
            guard tscDeadline != 0 else { timerCounting = false; return }
            guard clock.tsc >= tscDeadline else { armDeadline(); return }
            tscDeadline = 0
            timerCounting = false
            deliverLVT(Self.lvtTimer)
        case .oneShot:
            guard now >= timerNextNs else { hostTimer?.arm(atNanoseconds: timerNextNs); return }
            // The count stays at 0 (currentCount computes it) until the next initial-count write.
            deliverLVT(Self.lvtTimer)
        case .periodic:
            guard now >= timerNextNs else { hostTimer?.arm(atNanoseconds: timerNextNs); return }
            deliverLVT(Self.lvtTimer)
            let period = max(nanoseconds(forTicks: UInt64(timerInitialCount)), 1)
            let missed = (now - timerNextNs) / period + 1
            let (n, o) = timerNextNs.addingReportingOverflow(missed.multipliedReportingOverflow(by: period).partialValue)
            timerNextNs = o ? .max : n
            hostTimer?.arm(atNanoseconds: max(timerNextNs, now &+ Self.minimumPeriodNs))
        }
    }
}
