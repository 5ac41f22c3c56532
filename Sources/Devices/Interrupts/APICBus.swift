/// Delivery modes of an interrupt message (SDM Vol. 3 10.6.1, ICR bits 10:8; the same encoding in
/// IOAPIC redirection entries and MSI data).
public enum APICDeliveryMode: UInt8, Sendable {
    case fixed = 0, lowestPriority = 1, smi = 2, reserved3 = 3, nmi = 4, initSignal = 5, startup = 6, extINT = 7

    init(bits: UInt64) { self = APICDeliveryMode(rawValue: UInt8(truncatingIfNeeded: bits & 7)) ?? .fixed }
}

/// One interrupt message on the APIC bus (an IPI, an IOAPIC redirection or an MSI).
public struct APICMessage: Sendable, Equatable {
    public var destination: UInt32
    /// Logical destination mode (else physical).
    public var logical: Bool
    public var deliveryMode: APICDeliveryMode
    public var vector: UInt8
    /// Level-triggered (sets the TMR bit, so the EOI is broadcast back to the IOAPIC).
    public var levelTriggered: Bool
    /// A 32-bit x2APIC destination (broadcast 0xFFFFFFFF); else 8-bit xAPIC (broadcast 0xFF).
    public var x2APICFormat: Bool

    public init(destination: UInt32, logical: Bool = false, deliveryMode: APICDeliveryMode = .fixed,
                vector: UInt8, levelTriggered: Bool = false, x2APICFormat: Bool = false) {
        self.destination = destination
        self.logical = logical
        self.deliveryMode = deliveryMode
        self.vector = vector
        self.levelTriggered = levelTriggered
        self.x2APICFormat = x2APICFormat
    }
}

/// The system bus between the local APICs, the IOAPIC and MSI writers: routes a message to the
/// APICs its destination selects and carries level-triggered EOIs back to the IOAPIC.
/// All methods: call with the big lock held.
public final class APICBus: @unchecked Sendable {
    public private(set) var apics: [LocalAPIC] = []
    /// Called with the vector of every EOI of a level-triggered interrupt (the IOAPIC's EOI).
    public var levelTriggeredEOI: ((UInt8) -> Void)?
    /// Where messages go when the local APICs are not Keel's (kvm's split irqchip keeps them in
    /// the kernel); nil sends them to `apics`.
    public var forward: ((APICMessage) -> Void)?

    public init() {}

    /// Adds `apic` (its `index` must be the next free one; index 0 is the BSP).
    func attach(_ apic: LocalAPIC) {
        precondition(apic.index == apics.count, "LocalAPIC indices must be attached in order")
        apics.append(apic)
    }

    /// The APICs a destination selects (no shorthand).
    public func targets(of m: APICMessage) -> [LocalAPIC] {
        apics.filter { $0.matches(destination: m.destination, logical: m.logical, x2APICFormat: m.x2APICFormat) }
    }

    /// Delivers `m` to the APICs its destination selects; lowest priority goes to the one with
    /// the lowest arbitration priority (ties: lowest index), as QEMU's apic_bus_deliver.
    public func deliver(_ m: APICMessage) {
        if let f = forward { return f(m) }
        deliver(m, to: targets(of: m))
    }

    func deliver(_ m: APICMessage, to targets: [LocalAPIC]) {
        if m.deliveryMode == .lowestPriority {
            var best: LocalAPIC?
            for a in targets where a.isSoftwareEnabled {
                if let b = best, b.arbitrationPriority <= a.arbitrationPriority { continue }
                best = a
            }
            // Nobody enabled: the first target gets it (and drops it, being disabled).
            if let b = best ?? targets.first { b.accept(m) }
            return
        }
        for a in targets { a.accept(m) }
    }

    /// A message-signalled interrupt: a DWORD write of `data` to `address` in 0xFEExxxxx
    /// (SDM Vol. 3 10.11). Writes elsewhere are dropped.
    public func signalMSI(address: UInt64, data: UInt32) {
        guard address >> 20 == 0xFEE else { return }
        let d = UInt64(data)
        deliver(APICMessage(destination: UInt32((address >> 12) & 0xFF),
                            logical: address & 0x4 != 0,
                            deliveryMode: APICDeliveryMode(bits: d >> 8),
                            vector: UInt8(truncatingIfNeeded: d),
                            levelTriggered: d & 0x8000 != 0))
    }

    func broadcastEOI(vector: UInt8) { levelTriggeredEOI?(vector) }
}

extension APICMessage {
    /// The message as an MSI write (SDM Vol. 3 §11.11): address 0xFEEx_x000 with the 8-bit
    /// destination and mode, data with vector, delivery mode, trigger mode and level = assert.
    public var msiAddress: UInt64 {
        0xFEE0_0000 | UInt64(destination & 0xFF) << 12 | (logical ? 1 << 2 : 0)
    }

    public var msiData: UInt32 {
        UInt32(vector) | UInt32(deliveryMode.rawValue) << 8 | 1 << 14 | (levelTriggered ? 1 << 15 : 0)
    }
}
