import Glibc
import Loop

/// Time as the tcg interrupt controllers see it: a monotonic nanosecond clock, the guest's TSC,
/// and host timers that call back at an absolute time. Injected so that tests drive time by hand.
///
/// Threading: the controllers read the clock and arm timers with the big lock held; a timer's
/// callback must also run with the big lock held (the main loop's EventLoop does this).
public protocol GuestClock: AnyObject {
    /// Monotonic host time in nanoseconds; never goes backwards.
    var nanoseconds: UInt64 { get }
    /// The guest-visible time-stamp counter now (what RDTSC returns on the vCPU that owns the
    /// LocalAPIC holding this clock, offsets included).
    var tsc: UInt64 { get }
    /// TSC ticks per second (constant: the invariant TSC).
    var tscFrequencyHz: UInt64 { get }
    /// A timer whose callback runs once per `arm`, at or after the armed time.
    func makeTimer(_ callback: @escaping () -> Void) throws -> GuestTimer
}

public protocol GuestTimer: AnyObject {
    /// (Re)arms the timer to fire once at `deadline` (`GuestClock.nanoseconds` units); a
    /// deadline in the past fires as soon as possible.
    func arm(atNanoseconds deadline: UInt64)
    func disarm()
}

/// The tcg machine's time base and what the CPU should advertise about it.
///
/// Linux (arch/x86/kernel/tsc.c, native_calibrate_tsc) trusts the TSC frequency without
/// calibrating against the PIT when the CPU is GenuineIntel with max basic leaf >= 0x15 and
/// CPUID.15H reports EAX = denominator, EBX = numerator, ECX = crystal Hz (all non-zero): it sets
/// X86_FEATURE_TSC_KNOWN_FREQ and takes tsc_khz = crystal_khz * EBX / EAX, and it also sets the
/// local APIC timer period from the crystal (lapic_timer_period = crystal_khz * 1000 / HZ), so the
/// LAPIC timer must count at the crystal frequency — `apicTimerFrequencyHz` here.
/// CPUID.16H EAX/EBX/ECX (base/max/bus MHz) feed cpu_khz early. The CPU helper should also
/// advertise CPUID.1:ECX[24] (TSC-deadline), CPUID.1:EDX[4] (TSC) and [9] (APIC),
/// CPUID.6:EAX[2] (ARAT: the APIC timer keeps running in C-states) and CPUID.80000007H:EDX[8]
/// (invariant TSC, which gives constant_tsc + nonstop_tsc). Linux's crystal_khz * EBX product is
/// 32-bit, so crystal_kHz * numerator must stay below 2^32.
public struct TCGTimeBase: Sendable, Equatable {
    /// The core crystal, and the LAPIC timer's input clock before the divide configuration.
    public var crystalHz: UInt32 = 1_000_000_000
    /// TSC = crystal * numerator / denominator.
    public var tscNumerator: UInt32 = 2
    public var tscDenominator: UInt32 = 1

    public init() {}

    public var tscFrequencyHz: UInt64 { UInt64(crystalHz) * UInt64(tscNumerator) / UInt64(max(tscDenominator, 1)) }
    public var apicTimerFrequencyHz: UInt64 { UInt64(crystalHz) }

    /// CPUID.15H (EAX, EBX, ECX, EDX).
    public var cpuid15: (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        (tscDenominator, tscNumerator, crystalHz, 0)
    }

    /// CPUID.16H: processor base / maximum frequency and bus (reference) frequency, in MHz.
    public var cpuid16: (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        let mhz = UInt32(truncatingIfNeeded: tscFrequencyHz / 1_000_000)
        return (mhz, mhz, crystalHz / 1_000_000, 0)
    }
}

/// `a * b / c` without intermediate overflow; saturates at UInt64.max (and for c == 0).
@inline(__always)
func mulDiv(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
    guard c != 0 else { return .max }
    let p = a.multipliedFullWidth(by: b)
    guard p.high < c else { return .max }
    return c.dividingFullWidth((p.high, p.low)).quotient
}

/// `a * b / c` rounded up, saturating.
@inline(__always)
func mulDivRoundingUp(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
    guard c != 0 else { return .max }
    let p = a.multipliedFullWidth(by: b)
    guard p.high < c else { return .max }
    let r = c.dividingFullWidth((p.high, p.low))
    return r.remainder == 0 ? r.quotient : (r.quotient == .max ? .max : r.quotient + 1)
}

/// The production clock: CLOCK_MONOTONIC, a TSC counting from 0 at creation at the time base's
/// frequency, and timers on an EventLoop (whose callbacks run with the loop's big lock held).
/// Create it, and its timers, on the loop's thread or before the loop runs.
public final class EventLoopGuestClock: GuestClock, @unchecked Sendable {
    public let loop: EventLoop
    public let tscFrequencyHz: UInt64
    private let origin: UInt64

    public init(loop: EventLoop, timeBase: TCGTimeBase = TCGTimeBase()) {
        self.loop = loop
        tscFrequencyHz = timeBase.tscFrequencyHz
        origin = Self.monotonicNow()
    }

    static func monotonicNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(max(ts.tv_sec, 0)) &* 1_000_000_000 &+ UInt64(max(ts.tv_nsec, 0))
    }

    public var nanoseconds: UInt64 { Self.monotonicNow() &- origin }
    public var tsc: UInt64 { mulDiv(nanoseconds, tscFrequencyHz, 1_000_000_000) }

    public func makeTimer(_ callback: @escaping () -> Void) throws -> GuestTimer {
        EventLoopGuestTimer(clock: self, timer: try loop.makeTimer(callback))
    }
}

final class EventLoopGuestTimer: GuestTimer {
    unowned let clock: EventLoopGuestClock
    let timer: Timer

    init(clock: EventLoopGuestClock, timer: Timer) { self.clock = clock; self.timer = timer }

    func arm(atNanoseconds deadline: UInt64) {
        let now = clock.nanoseconds
        // 0 would disarm the timerfd: a deadline already passed fires after 1 ns.
        timer.arm(afterNanoseconds: deadline > now ? deadline - now : 1)
    }

    func disarm() { timer.disarm() }
}
