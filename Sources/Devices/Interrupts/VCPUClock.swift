import Synchronization

/// One vCPU's view of the machine's clock: the shared time and timers, and this vCPU's TSC (the
/// shared TSC plus the offset a write to IA32_TSC sets), so that RDTSC on the vCPU and the
/// TSC-deadline timer of its LocalAPIC read the same counter.
///
/// Threading: `tsc` and `setTSC` may be called from any thread (the offset is atomic): the vCPU
/// writes it without the big lock, the LocalAPIC reads it with the lock held.
public final class VCPUClock: GuestClock, @unchecked Sendable {
    public let base: GuestClock
    private let offset = Atomic<UInt64>(0)

    public init(base: GuestClock) { self.base = base }

    public var nanoseconds: UInt64 { base.nanoseconds }
    public var tsc: UInt64 { base.tsc &+ offset.load(ordering: .relaxed) }
    public var tscFrequencyHz: UInt64 { base.tscFrequencyHz }
    public func makeTimer(_ callback: @escaping () -> Void) throws -> GuestTimer { try base.makeTimer(callback) }

    /// WRMSR IA32_TSC: the TSC reads `value` now and counts on from there.
    public func setTSC(_ value: UInt64) { offset.store(value &- base.tsc, ordering: .relaxed) }

    /// Power-on: no offset.
    public func reset() { offset.store(0, ordering: .relaxed) }
}
