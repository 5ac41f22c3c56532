import Synchronization

/// Where an ExtINT-mode interrupt gets its vector: the 8259 PIC pair (INTA cycle).
public protocol ExtINTSource: AnyObject {
    /// Whether the PIC's INT output is asserted.
    var hasInterrupt: Bool { get }
    /// The INTA cycle: the vector of the highest-priority request (a spurious IRQ7 vector if
    /// none remains).
    func acknowledge() -> UInt8
}

/// One vCPU's local APIC (SDM Vol. 3 ch. 10), xAPIC and x2APIC.
///
/// Threading model: every method and property is called with the big lock held, except
/// `pendingEvents`/`hasPendingEvent`, which the vCPU polls lock-free between translation blocks.
/// When an event becomes pending the APIC calls `wakeup` (still under the big lock; it must not
/// block: broadcast a condition or signal an eventfd) so a vCPU halted in HLT re-checks.
/// The xAPIC page is per vCPU: the CPU routes its own accesses to `mmioBase ..< mmioBase+4096`
/// (while `isXAPICMMIOEnabled`) to `read`/`write(offset:)` of its own LocalAPIC, before the
/// shared MMIO bus.
public final class LocalAPIC: BusDevice, @unchecked Sendable {
    /// What the vCPU has to act on. `interrupt` is INTR (a vector in IRR above PPR, or an ExtINT
    /// from the PIC): taken only with RFLAGS.IF set, outside an interrupt shadow.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let interrupt = Events(rawValue: 1)
        public static let nmi = Events(rawValue: 2)
        public static let initSignal = Events(rawValue: 4)
        public static let startup = Events(rawValue: 8)
    }

    static let version: UInt32 = 0x0005_0014  // max LVT entry 5 (six LVTs, no CMCI), version 0x14
    static let defaultBase: UInt64 = 0xFEE0_0000
    static let baseBSP: UInt64 = 1 << 8, baseEXTD: UInt64 = 1 << 10, baseEN: UInt64 = 1 << 11

    // ESR bits (SDM 10.5.3).
    static let esrSendIllegalVector: UInt32 = 1 << 5
    static let esrReceiveIllegalVector: UInt32 = 1 << 6
    static let esrIllegalRegister: UInt32 = 1 << 7

    // LVT indices in `lvt`.
    static let lvtTimer = 0, lvtThermal = 1, lvtPerf = 2, lvtLINT0 = 3, lvtLINT1 = 4, lvtError = 5
    static let lvtMasked: UInt32 = 1 << 16
    static let lvtWriteMask: [UInt32] = [0x700FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF]

    /// Position on the APIC bus and the initial APIC ID (the vCPU index).
    public let index: Int
    public let initialID: UInt32
    weak var bus: APICBus?
    /// The PIC pair, asked for the vector of an ExtINT (LINT0 in virtual-wire mode).
    public weak var extINTSource: ExtINTSource?
    /// Called (big lock held) whenever an event becomes pending; must not block.
    public var wakeup: (() -> Void)?

    let clock: GuestClock
    let timerFrequencyHz: UInt64
    var hostTimer: GuestTimer?
    let maxPhysicalAddressBits: Int

    @usableFromInline let events = Atomic<UInt32>(0)

    // Architectural state.
    var apicBase: UInt64
    var id: UInt32              // xAPIC: bits 31:24 of the ID register; x2APIC: the whole ID
    var tpr: UInt32 = 0
    var ldr: UInt32 = 0
    var dfr: UInt32 = 0xFFFF_FFFF
    var svr: UInt32 = 0xFF
    var isr = [UInt32](repeating: 0, count: 8)
    var tmr = [UInt32](repeating: 0, count: 8)
    var irr = [UInt32](repeating: 0, count: 8)
    var esr: UInt32 = 0           // as last latched by an ESR write
    var esrPending: UInt32 = 0    // errors seen since
    var icrLow: UInt32 = 0
    var icrHigh: UInt32 = 0
    var lvt = [UInt32](repeating: LocalAPIC.lvtMasked, count: 6)
    var timerInitialCount: UInt32 = 0
    var timerDivideConfig: UInt32 = 0
    var tscDeadline: UInt64 = 0
    // Timer bookkeeping (LocalAPICTimer.swift).
    var timerLoadNs: UInt64 = 0       // when the count was last set (to timerLoadCount)
    var timerLoadCount: UInt64 = 0
    var timerCounting = false
    var timerNextNs: UInt64 = 0       // the next expiry (one-shot / periodic)

    // Inputs and latched events.
    var lint0Level = false
    var lint1Level = false
    var nmiPending = false
    var initPending = false
    var sipiVector: UInt8?
    var extINTPending = false

    /// - Parameters:
    ///   - index: the vCPU index; also the initial APIC ID. Index 0 is the BSP.
    ///   - bus: attaches the APIC to it (in index order).
    ///   - timerFrequencyHz: the timer's input clock before the divider (TCGTimeBase.apicTimerFrequencyHz).
    public init(index: Int, bus: APICBus, clock: GuestClock, timerFrequencyHz: UInt64 = TCGTimeBase().apicTimerFrequencyHz,
                maxPhysicalAddressBits: Int = 40) throws {
        self.index = index
        initialID = UInt32(truncatingIfNeeded: index)
        self.clock = clock
        self.timerFrequencyHz = max(timerFrequencyHz, 1)
        self.maxPhysicalAddressBits = min(max(maxPhysicalAddressBits, 32), 52)
        apicBase = Self.defaultBase | Self.baseEN | (index == 0 ? Self.baseBSP : 0)
        id = initialID << 24
        self.bus = bus
        bus.attach(self)
        hostTimer = try clock.makeTimer { [weak self] in self?.timerExpired() }
        setVirtualWireIfBSP()
    }

    /// The firmware leaves the BSP in virtual-wire mode (LINT0 ExtINT, unmasked) so the PIC
    /// reaches it before the OS sets the APIC up; KVM (LINT0_REENABLED quirk) and QEMU do the same
    /// at reset.
    func setVirtualWireIfBSP() {
        if index == 0 { lvt[Self.lvtLINT0] = UInt32(APICDeliveryMode.extINT.rawValue) << 8 }
    }

    // MARK: CPU-facing API

    /// Lock-free: what the vCPU must act on (see `Events`).
    @inline(__always) public var pendingEvents: Events { Events(rawValue: events.load(ordering: .acquiring)) }
    /// Lock-free and cheap: whether anything at all is pending.
    @inlinable public var hasPendingEvent: Bool { events.load(ordering: .acquiring) != 0 }

    /// The INTA cycle: moves the highest deliverable IRR vector to ISR (respecting PPR) and returns
    /// it, or returns the PIC's vector for an ExtINT. nil when nothing is deliverable (say, TPR was
    /// raised since `interrupt` was seen): the CPU just continues.
    public func acknowledgeInterrupt() -> UInt8? {
        defer { updateEvents() }
        if isHardwareEnabled && isSoftwareEnabled, let v = deliverableVector {
            clearBit(&irr, v)
            setBit(&isr, v)
            return v
        }
        if extINTPending {
            extINTPending = false
            return extINTSource?.acknowledge()
        }
        if lint0Level && acceptsPICInterrupt, let pic = extINTSource, pic.hasInterrupt {
            return pic.acknowledge()
        }
        return nil
    }

    /// Takes a pending NMI (the CPU then blocks NMIs until IRET, its own state).
    public func takeNMI() -> Bool {
        guard nmiPending else { return false }
        nmiPending = false
        updateEvents()
        return true
    }

    /// Takes a pending INIT and resets the APIC as INIT does (SDM 10.4.7.3: all but the ID and
    /// APIC base). The CPU then enters wait-for-SIPI (for an AP) and resets its own state.
    public func takeINIT() -> Bool {
        guard initPending else { return false }
        // A start-up IPI that arrived after the INIT (INIT-SIPI-SIPI sent faster than this vCPU
        // got to run) is for the wait-for-SIPI state the INIT starts: keep it.
        let sipi = sipiVector
        resetRegisters()
        sipiVector = sipi
        updateEvents()
        return true
    }

    /// Takes a pending start-up IPI's vector (the AP starts at CS = vector << 8, IP = 0). The CPU
    /// takes and ignores a SIPI when it is not in wait-for-SIPI, as hardware does.
    public func takeSIPI() -> UInt8? {
        guard let v = sipiVector else { return nil }
        sipiVector = nil
        updateEvents()
        return v
    }

    /// The LINT0 pin (the PIC's INT output in virtual-wire mode).
    public func setLINT0(_ level: Bool) {
        let rising = level && !lint0Level
        lint0Level = level
        lintChanged(Self.lvtLINT0, level: level, rising: rising)
    }

    /// The LINT1 pin (NMI on a PC).
    public func setLINT1(_ level: Bool) {
        let rising = level && !lint1Level
        lint1Level = level
        lintChanged(Self.lvtLINT1, level: level, rising: rising)
    }

    /// Power-on (and machine reset) state.
    public func reset() {
        apicBase = Self.defaultBase | Self.baseEN | (index == 0 ? Self.baseBSP : 0)
        id = initialID << 24
        resetRegisters()
        setVirtualWireIfBSP()
        updateEvents()
    }

    /// The xAPIC page's guest-physical base (IA32_APIC_BASE bits 51:12).
    public var mmioBase: UInt64 { apicBase & 0x000F_FFFF_FFFF_F000 }
    /// Whether the xAPIC page decodes (enabled and not in x2APIC mode).
    public var isXAPICMMIOEnabled: Bool { isHardwareEnabled && !isX2APIC }
    public var isHardwareEnabled: Bool { apicBase & Self.baseEN != 0 }
    public var isX2APIC: Bool { apicBase & Self.baseEXTD != 0 && isHardwareEnabled }
    public var isSoftwareEnabled: Bool { svr & 0x100 != 0 }

    // MARK: Priority (SDM 10.8.3.1)

    var highestISR: UInt8? { highestBit(isr) }
    var highestIRR: UInt8? { highestBit(irr) }

    public var processorPriority: UInt32 {
        let isrv = UInt32(highestISR ?? 0)
        return (tpr & 0xF0) >= (isrv & 0xF0) ? tpr & 0xFF : isrv & 0xF0
    }

    /// Arbitration priority (SDM 10.6.2.4), used for lowest-priority delivery.
    public var arbitrationPriority: UInt32 {
        let isrv = UInt32(highestISR ?? 0) & 0xF0, irrv = UInt32(highestIRR ?? 0) & 0xF0
        if (tpr & 0xF0) >= irrv && (tpr & 0xF0) > isrv { return tpr & 0xFF }
        return max(tpr & 0xF0, isrv, irrv)
    }

    /// The highest IRR vector whose priority class is above the PPR's.
    var deliverableVector: UInt8? {
        guard let v = highestIRR, UInt32(v) & 0xF0 > processorPriority & 0xF0 else { return nil }
        return v
    }

    /// The PIC's INTR reaches the CPU: LINT0 unmasked in ExtINT mode, or the APIC hardware-disabled.
    var acceptsPICInterrupt: Bool {
        if !isHardwareEnabled { return true }
        let l = lvt[Self.lvtLINT0]
        return l & Self.lvtMasked == 0 && (l >> 8) & 7 == UInt32(APICDeliveryMode.extINT.rawValue)
    }

    /// Recomputes the lock-free event word; wakes the vCPU when something new appeared.
    func updateEvents() {
        var e: Events = []
        if (isHardwareEnabled && isSoftwareEnabled && deliverableVector != nil) || extINTPending
            || (lint0Level && acceptsPICInterrupt) {
            e.insert(.interrupt)
        }
        if nmiPending { e.insert(.nmi) }
        if initPending { e.insert(.initSignal) }
        if sipiVector != nil { e.insert(.startup) }
        let old = events.exchange(e.rawValue, ordering: .acquiringAndReleasing)
        if e.rawValue & ~old != 0 { wakeup?() }
    }

    // MARK: Receiving

    /// Accepts a message the bus routed here (SDM 10.6).
    func accept(_ m: APICMessage) {
        guard isHardwareEnabled else { return }
        switch m.deliveryMode {
        case .fixed, .lowestPriority:
            acceptFixed(vector: m.vector, level: m.levelTriggered)
        case .nmi: nmiPending = true
        case .initSignal:
            initPending = true
            sipiVector = nil   // an INIT supersedes a start-up IPI not yet taken
        case .startup: sipiVector = m.vector
        case .extINT: extINTPending = true
        case .smi, .reserved3: return
        }
        updateEvents()
    }

    /// Sets `vector` in IRR; vectors 0-15 are illegal (receive-illegal-vector error).
    func acceptFixed(vector: UInt8, level: Bool) {
        guard isSoftwareEnabled else { return }  // dropped while software-disabled, as KVM
        guard vector >= 16 else {
            raiseError(Self.esrReceiveIllegalVector)
            return
        }
        setBit(&irr, vector)
        if level { setBit(&tmr, vector) } else { clearBit(&tmr, vector) }
        updateEvents()
    }

    /// Records an error in ESR and signals it through the error LVT (once per new bit).
    func raiseError(_ bits: UInt32) {
        let new = bits & ~esrPending
        esrPending |= bits
        guard new != 0 else { return }
        let l = lvt[Self.lvtError]
        // An illegal error vector only records another error: no recursion.
        guard l & Self.lvtMasked == 0, isSoftwareEnabled else { return }
        let v = UInt8(truncatingIfNeeded: l)
        if v < 16 { esrPending |= Self.esrReceiveIllegalVector; return }
        setBit(&irr, v)
        clearBit(&tmr, v)
        updateEvents()
    }

    /// Fires local vector table entry `i` (timer, thermal, perf, LINTn, error).
    func deliverLVT(_ i: Int, levelTriggered: Bool = false) {
        guard i >= 0 && i < lvt.count else { return }
        let l = lvt[i]
        guard l & Self.lvtMasked == 0 else { return }
        let mode = (i == Self.lvtTimer || i == Self.lvtError) ? .fixed : APICDeliveryMode(bits: UInt64(l >> 8))
        switch mode {
        case .fixed: acceptFixed(vector: UInt8(truncatingIfNeeded: l), level: levelTriggered)
        case .nmi: nmiPending = true
        case .initSignal: initPending = true
        case .extINT: extINTPending = true
        default: return
        }
        updateEvents()
    }

    func lintChanged(_ i: Int, level: Bool, rising: Bool) {
        let l = lvt[i]
        let mode = APICDeliveryMode(bits: UInt64(l >> 8))
        let levelTriggered = l & (1 << 15) != 0 && mode == .fixed
        if levelTriggered {
            // Remote IRR (bit 14) holds off re-delivery until the EOI.
            if level && l & (1 << 14) == 0 && l & Self.lvtMasked == 0 {
                lvt[i] |= 1 << 14
                deliverLVT(i, levelTriggered: true)
            }
        } else if rising && mode != .extINT {
            deliverLVT(i)
        }
        updateEvents()  // ExtINT is level-sensitive: INTR follows the pin
    }

    // MARK: EOI and IPIs

    /// An EOI: clears the highest ISR bit; a level-triggered vector's EOI goes to the IOAPIC.
    func endOfInterrupt() {
        guard let v = highestISR else { return }
        clearBit(&isr, v)
        if testBit(tmr, v) {
            clearBit(&tmr, v)
            for i in [Self.lvtLINT0, Self.lvtLINT1] where lvt[i] & (1 << 14) != 0 && UInt8(truncatingIfNeeded: lvt[i]) == v {
                lvt[i] &= ~(1 << 14)
            }
            bus?.broadcastEOI(vector: v)
        }
        updateEvents()
    }

    /// Sends the IPI described by the ICR (`icr`: low 32 bits, destination from `destination`).
    func sendIPI(icr: UInt32, destination: UInt32) {
        let mode = APICDeliveryMode(bits: UInt64(icr >> 8))
        let vector = UInt8(truncatingIfNeeded: icr)
        let assert = icr & (1 << 14) != 0, levelTrigger = icr & (1 << 15) != 0
        // INIT level de-assert only synchronises arbitration IDs: nothing to do.
        if mode == .initSignal && levelTrigger && !assert { return }
        if (mode == .fixed || mode == .lowestPriority) && vector < 16 {
            raiseError(Self.esrSendIllegalVector)
            return
        }
        let m = APICMessage(destination: destination, logical: icr & (1 << 11) != 0, deliveryMode: mode,
                            vector: vector, levelTriggered: false, x2APICFormat: isX2APIC)
        let all = bus?.apics ?? [self]
        switch (icr >> 18) & 3 {
        case 1: accept(m)
        case 2: bus?.deliver(m, to: all) ?? accept(m)
        case 3: bus?.deliver(m, to: all.filter { $0 !== self })
        default:
            if let b = bus { b.deliver(m) } else if matches(destination: destination, logical: m.logical, x2APICFormat: isX2APIC) { accept(m) }
        }
    }

    /// Whether a destination selects this APIC (SDM 10.6.2): physical by ID, logical flat or
    /// cluster by LDR/DFR, or x2APIC cluster.
    func matches(destination: UInt32, logical: Bool, x2APICFormat: Bool) -> Bool {
        guard isHardwareEnabled else { return false }
        let broadcast: UInt32 = x2APICFormat ? 0xFFFF_FFFF : 0xFF
        if destination == broadcast { return true }
        if isX2APIC {
            if !logical { return destination == id }
            guard x2APICFormat else { return false }
            return destination >> 16 == ldr >> 16 && destination & ldr & 0xFFFF != 0
        }
        let d = destination & 0xFF
        if !logical { return d == id >> 24 }
        let l = ldr >> 24
        if dfr >> 28 == 0xF { return l & d != 0 }            // flat
        return l >> 4 == d >> 4 && l & d & 0xF != 0          // cluster
    }

    /// SDM 10.4.7.1 / 10.4.7.3: registers as after power-up or INIT (ID and base kept).
    func resetRegisters() {
        tpr = 0; ldr = 0; dfr = 0xFFFF_FFFF; svr = 0xFF
        if isX2APIC { ldr = x2APICLogicalID }
        for i in 0..<8 { isr[i] = 0; tmr[i] = 0; irr[i] = 0 }
        esr = 0; esrPending = 0; icrLow = 0; icrHigh = 0
        for i in 0..<lvt.count { lvt[i] = Self.lvtMasked }
        timerInitialCount = 0; timerDivideConfig = 0; tscDeadline = 0
        stopTimer()
        nmiPending = false; initPending = false; sipiVector = nil; extINTPending = false
    }

    /// x2APIC LDR: cluster (ID[19:4]) in bits 31:16, one bit of 16 for ID[3:0] (SDM 10.12.10.2).
    var x2APICLogicalID: UInt32 { ((id >> 4) << 16) | (1 << (id & 0xF)) }
}

// MARK: 256-bit vector sets

@inline(__always) func testBit(_ a: [UInt32], _ v: UInt8) -> Bool {
    a[Int(v >> 5)] & (1 << UInt32(v & 31)) != 0
}
@inline(__always) func setBit(_ a: inout [UInt32], _ v: UInt8) { a[Int(v >> 5)] |= 1 << UInt32(v & 31) }
@inline(__always) func clearBit(_ a: inout [UInt32], _ v: UInt8) { a[Int(v >> 5)] &= ~(1 << UInt32(v & 31)) }
@inline(__always) func highestBit(_ a: [UInt32]) -> UInt8? {
    var i = 7
    while i >= 0 {
        if a[i] != 0 { return UInt8(i * 32 + 31 - a[i].leadingZeroBitCount) }
        i -= 1
    }
    return nil
}
