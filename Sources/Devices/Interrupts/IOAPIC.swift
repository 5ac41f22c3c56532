
/// The I/O APIC (82093AA datasheet; version 0x20 as in later chipsets and QEMU, with the EOI
/// register): 24 pins, each with a 64-bit redirection table entry, delivering over the APIC bus.
/// MMIO at 0xFEC00000: IOREGSEL 0x00, IOWIN 0x10, EOI 0x40. Big lock held for everything.
///
/// Pin polarity is stored but not applied: devices drive their lines as "asserted", as in QEMU
/// and KVM, so an active-low PCI pin still works.
public final class IOAPIC: BusDevice, @unchecked Sendable {
    public static let pinCount = 24
    public static let defaultBase: UInt64 = 0xFEC0_0000
    static let version: UInt32 = 0x0017_0020   // max redirection entry 23, version 0x20

    // Redirection entry bits.
    static let deliveryStatus: UInt64 = 1 << 12
    static let remoteIRR: UInt64 = 1 << 14
    static let levelTrigger: UInt64 = 1 << 15
    static let masked: UInt64 = 1 << 16
    /// Bits the guest writes in the low half: vector, delivery mode, destination mode,
    /// polarity, trigger mode, mask.
    static let writableLow: UInt64 = 0x1_AFFF

    weak var bus: APICBus?
    var id: UInt32 = 0
    var ioregsel: UInt32 = 0
    var redirection = [UInt64](repeating: IOAPIC.masked, count: IOAPIC.pinCount)
    /// Per pin: level pins mirror the input; edge pins latch a rising edge until delivered.
    var irr: UInt32 = 0
    var pinLevel: UInt32 = 0
    /// Called after the guest rewrote a redirection entry (the kvm accelerator's split irqchip
    /// mirrors the table into KVM's MSI routes, which tell KVM which EOIs to report).
    public var redirectionChanged: (() -> Void)?

    public init(bus: APICBus) {
        self.bus = bus
    }

    public func reset() {
        id = 0; ioregsel = 0; irr = 0; pinLevel = 0
        for i in 0..<redirection.count { redirection[i] = Self.masked }
    }

    /// A redirection entry, for tests and debugging.
    public func redirectionEntry(_ pin: Int) -> UInt64? {
        pin >= 0 && pin < Self.pinCount ? redirection[pin] : nil
    }

    // MARK: Pins

    /// Drives input `pin` (out-of-range pins are ignored).
    public func setIRQ(_ pin: Int, level: Bool) {
        guard pin >= 0 && pin < Self.pinCount else { return }
        let bit = UInt32(1) << UInt32(pin)
        let wasHigh = pinLevel & bit != 0
        if level { pinLevel |= bit } else { pinLevel &= ~bit }
        if redirection[pin] & Self.levelTrigger != 0 {
            if level { irr |= bit } else { irr &= ~bit }
        } else if level && !wasHigh {
            irr |= bit
        }
        service()
    }

    /// The EOI of a level-triggered `vector` (LAPIC broadcast or the EOI register): clears remote
    /// IRR of the pins using it, and re-delivers those still asserted.
    public func endOfInterrupt(vector: UInt8) {
        var any = false
        for pin in 0..<Self.pinCount where UInt8(truncatingIfNeeded: redirection[pin]) == vector
            && redirection[pin] & Self.remoteIRR != 0 {
            redirection[pin] &= ~Self.remoteIRR
            any = true
        }
        if any { service() }
    }

    /// Delivers every requested, unmasked pin; a level pin once per EOI (remote IRR).
    func service() {
        for pin in 0..<Self.pinCount {
            let bit = UInt32(1) << UInt32(pin)
            let e = redirection[pin]
            guard irr & bit != 0, e & Self.masked == 0 else { continue }
            if e & Self.levelTrigger != 0 {
                guard e & Self.remoteIRR == 0 else { continue }
                redirection[pin] |= Self.remoteIRR
            } else {
                irr &= ~bit
            }
            deliver(e)
        }
    }

    func deliver(_ e: UInt64) {
        bus?.deliver(Self.message(for: e))
    }

    /// The interrupt message a redirection entry sends (82093AA §3.2.4).
    static func message(for e: UInt64) -> APICMessage {
        let mode = APICDeliveryMode(bits: e >> 8)
        return APICMessage(destination: UInt32(truncatingIfNeeded: e >> 56),
                           logical: e & (1 << 11) != 0,
                           deliveryMode: mode,
                           vector: UInt8(truncatingIfNeeded: e),
                           levelTriggered: e & Self.levelTrigger != 0 && (mode == .fixed || mode == .lowestPriority))
    }

    /// The message of `pin`'s entry, or nil while the pin is masked.
    public func message(pin: Int) -> APICMessage? {
        guard pin >= 0 && pin < Self.pinCount, redirection[pin] & Self.masked == 0 else { return nil }
        return Self.message(for: redirection[pin])
    }

    // MARK: MMIO

    /// 32-bit registers at 0x00, 0x10, 0x40; narrower reads return the low bytes, other offsets
    /// read zero.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        var v: UInt32 = 0
        switch offset {
        case 0x00: v = ioregsel
        case 0x10: v = readIndirect(ioregsel)
        default: v = 0
        }
        data.storeLittleEndian(UInt64(v))
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let v = UInt32(truncatingIfNeeded: data.littleEndianValue)
        switch offset {
        case 0x00: ioregsel = v & 0xFF
        case 0x10 where data.count >= 4: writeIndirect(ioregsel, v)
        case 0x40 where data.count >= 4: endOfInterrupt(vector: UInt8(truncatingIfNeeded: v))
        default: return
        }
    }

    func readIndirect(_ reg: UInt32) -> UInt32 {
        switch reg {
        case 0x00: return id << 24
        case 0x01: return Self.version
        case 0x02: return id << 24   // arbitration ID
        case 0x10..<0x40:
            let e = redirection[Int((reg - 0x10) >> 1)]
            return UInt32(truncatingIfNeeded: reg & 1 == 0 ? e : e >> 32)
        default: return 0
        }
    }

    func writeIndirect(_ reg: UInt32, _ v: UInt32) {
        switch reg {
        case 0x00: id = (v >> 24) & 0xF
        case 0x10..<0x40:
            let pin = Int((reg - 0x10) >> 1)
            var e = redirection[pin]
            if reg & 1 == 0 {
                e = (e & ~Self.writableLow) | (UInt64(v) & Self.writableLow)
                // Remote IRR means nothing for an edge pin (QEMU clears it too).
                if e & Self.levelTrigger == 0 { e &= ~Self.remoteIRR }
                // A pin switched to level mirrors its input level.
                let bit = UInt32(1) << UInt32(pin)
                if e & Self.levelTrigger != 0 {
                    if pinLevel & bit != 0 { irr |= bit } else { irr &= ~bit }
                }
            } else {
                e = (e & 0xFFFF_FFFF) | (UInt64(v) << 32)
            }
            let changed = redirection[pin] != e
            redirection[pin] = e
            if changed { redirectionChanged?() }
            service()
        default: return
        }
    }
}
