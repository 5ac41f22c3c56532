
/// One 8254 counter. Counts are computed from the clock when read: `loadNs` is when the count
/// was loaded (or last restarted by the gate), `frozenNs` the time counting stopped with the gate
/// low (modes 0, 2, 3, 4 pause while GATE is low).
struct PIT8254Channel {
    var count: UInt32 = 0x10000   // the loaded count, 1...0x10000 (binary) or 1...10000 (BCD)
    var loaded = false
    var nullCount = true
    var mode: UInt8 = 0
    var bcd = false
    var access: UInt8 = 3         // 1: LSB, 2: MSB, 3: LSB then MSB
    var readLSBNext = true
    var writeLSBNext = true
    var writeLatch: UInt8 = 0
    var latchedCount: UInt16?
    var latchedCountMSBNext = false
    var latchedStatus: UInt8?
    var gate = true
    var loadNs: UInt64 = 0
    var frozenNs: UInt64?

    /// Input clock ticks since the count was loaded.
    func elapsed(_ now: UInt64) -> UInt64 {
        let t = frozenNs ?? now
        return mulDiv(t >= loadNs ? t - loadNs : 0, PIT8254.frequencyHz, 1_000_000_000)
    }

    /// The counting element now (binary), as 8254 modes define it.
    func counter(_ now: UInt64) -> UInt32 {
        guard loaded else { return 0 }
        let d = elapsed(now), c = UInt64(count)
        switch mode {
        case 2: return UInt32(c - d % c)
        case 3: return UInt32(c - (2 * d) % c)   // counts down by two each clock
        default: return UInt32(truncatingIfNeeded: (c &- d) & 0xFFFF)   // 0, 1, 4, 5 wrap past 0
        }
    }

    /// The OUT pin now.
    func out(_ now: UInt64) -> Bool {
        guard loaded else { return mode != 0 }
        let d = elapsed(now), c = UInt64(count)
        switch mode {
        case 0, 1: return d >= c                    // high at terminal count (mode 1: after trigger)
        case 2: return gate ? d % c != c - 1 : true // low for the clock before each reload
        case 3: return gate ? (d % c) < (c + 1) / 2 : true
        default: return d != c                      // 4, 5: a one-clock low strobe
        }
    }

    /// The value a read returns for the counter, in the channel's number format.
    func readable(_ now: UInt64) -> UInt16 {
        let v = counter(now)
        return bcd ? PIT8254.toBCD(v) : UInt16(truncatingIfNeeded: v)
    }

    func status(_ now: UInt64) -> UInt8 {
        (out(now) ? 0x80 : 0) | (nullCount ? 0x40 : 0) | (access << 4) | (mode << 1) | (bcd ? 1 : 0)
    }
}

/// The 8254 programmable interval timer at ports 0x40-0x43 (1.193182 MHz input clock), channel
/// 0's OUT driving ISA IRQ 0 and channel 2's gate and OUT reachable through port 0x61 (`portB`).
/// Binary and BCD counting, modes 0-5, counter latch and read-back. Big lock held.
///
/// Channel 0's IRQ is driven by one host timer: modes 2 and 3 pulse the line (rise then fall)
/// once per period — the edge the PIC and IOAPIC latch; missed periods coalesce — modes 0 and 1
/// raise it at terminal count until reprogrammed; modes 4 and 5 pulse once.
public final class PIT8254: @unchecked Sendable {
    public static let frequencyHz: UInt64 = 1_193_182
    /// Host timers never fire channel 0 faster than this (a guest may program a count of 2).
    static let minimumPeriodNs: UInt64 = 50_000

    var channels = [PIT8254Channel](repeating: PIT8254Channel(), count: 3)
    let clock: GuestClock
    let irq: InterruptLine
    var hostTimer: GuestTimer?
    var irqLevel = false
    var irqNextNs: UInt64 = 0
    var irqArmed = false
    var speakerData = false
    var portBSpare: UInt8 = 0     // bits 2-3 (parity / channel check enables): stored only

    /// Bus devices: ports 0x40-0x43 and port 0x61.
    public private(set) lazy var ports: BusDevice = PIT8254Ports(pit: self)
    public private(set) lazy var portB: BusDevice = PIT8254PortB(pit: self)

    /// `irq` is ISA IRQ 0 (GSI 0; the board routes it to PIC IRQ 0 and IOAPIC pin 2).
    public init(clock: GuestClock, irq: InterruptLine) throws {
        self.clock = clock
        self.irq = irq
        channels[2].gate = false   // port 0x61 bit 0 starts clear
        hostTimer = try clock.makeTimer { [weak self] in self?.timerExpired() }
    }

    public func reset() {
        channels = [PIT8254Channel](repeating: PIT8254Channel(), count: 3)
        channels[2].gate = false
        speakerData = false; portBSpare = 0
        irqArmed = false
        hostTimer?.disarm()
        setIRQLevel(false)
    }

    /// Inserts the PIT at 0x40 and port B at 0x61 on the PIO bus.
    public func insert(into pio: Bus) throws {
        try pio.insert(ports, base: 0x40, size: 4, name: "i8254")
        try pio.insert(portB, base: 0x61, size: 1, name: "port B (speaker/PIT gate)")
    }

    // MARK: Ports 0x40-0x43

    func readPort(_ port: UInt64) -> UInt8 {
        guard port < 3 else { return 0xFF }   // the control word register is write-only
        let i = Int(port)
        let now = clock.nanoseconds
        var c = channels[i]
        defer { channels[i] = c }
        if let s = c.latchedStatus {
            c.latchedStatus = nil
            return s
        }
        if let l = c.latchedCount {
            switch c.access {
            case 1: c.latchedCount = nil; return UInt8(truncatingIfNeeded: l)
            case 2: c.latchedCount = nil; return UInt8(truncatingIfNeeded: l >> 8)
            default:
                if c.latchedCountMSBNext {
                    c.latchedCount = nil
                    c.latchedCountMSBNext = false
                    return UInt8(truncatingIfNeeded: l >> 8)
                }
                c.latchedCountMSBNext = true
                return UInt8(truncatingIfNeeded: l)
            }
        }
        let v = c.readable(now)
        switch c.access {
        case 1: return UInt8(truncatingIfNeeded: v)
        case 2: return UInt8(truncatingIfNeeded: v >> 8)
        default:
            // Unlatched LSB-then-MSB reads sample the counter at each read (Linux's
            // quick_pit_calibrate reads the live MSB this way).
            defer { c.readLSBNext.toggle() }
            return c.readLSBNext ? UInt8(truncatingIfNeeded: v) : UInt8(truncatingIfNeeded: v >> 8)
        }
    }

    func writePort(_ port: UInt64, _ v: UInt8) {
        let now = clock.nanoseconds
        if port == 3 {
            writeControl(v, now)
            return
        }
        guard port < 3 else { return }
        let i = Int(port)
        var c = channels[i]
        var value: UInt32?
        switch c.access {
        case 1: value = UInt32(v)
        case 2: value = UInt32(v) << 8
        default:
            if c.writeLSBNext {
                c.writeLatch = v
                c.writeLSBNext = false
                // Mode 0: writing the first byte stops the count (8254 datasheet).
                if c.mode == 0 { c.loaded = false }
            } else {
                value = UInt32(c.writeLatch) | UInt32(v) << 8
                c.writeLSBNext = true
            }
        }
        channels[i] = c
        if let value { load(i, value, now) } else if i == 0 { channelZeroChanged(now) }
    }

    func writeControl(_ v: UInt8, _ now: UInt64) {
        let sel = Int(v >> 6)
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status; bits 1-3 pick.
            for i in 0..<3 where v & (2 << UInt8(i)) != 0 {
                if v & 0x20 == 0 { latchCount(i, now) }
                if v & 0x10 == 0 && channels[i].latchedStatus == nil {
                    channels[i].latchedStatus = channels[i].status(now)
                }
            }
            return
        }
        let access = (v >> 4) & 3
        if access == 0 {
            latchCount(sel, now)
            return
        }
        var c = channels[sel]
        c.access = access
        var mode = (v >> 1) & 7
        if mode > 5 { mode -= 4 }   // 6 and 7 are aliases of 2 and 3
        c.mode = mode
        c.bcd = v & 1 != 0
        c.readLSBNext = true
        c.writeLSBNext = true
        c.latchedCount = nil
        c.latchedCountMSBNext = false
        c.latchedStatus = nil
        c.nullCount = true
        // A control word stops the counter until a count is written; OUT takes the mode's
        // initial level (low in mode 0, high otherwise).
        c.loaded = false
        c.frozenNs = nil
        channels[sel] = c
        if sel == 0 { channelZeroChanged(now) }
    }

    func latchCount(_ i: Int, _ now: UInt64) {
        guard channels[i].latchedCount == nil else { return }   // the first latch holds
        channels[i].latchedCount = channels[i].readable(now)
        channels[i].latchedCountMSBNext = false
    }

    func load(_ i: Int, _ raw: UInt32, _ now: UInt64) {
        var c = channels[i]
        var value = c.bcd ? Self.fromBCD(UInt16(truncatingIfNeeded: raw)) : raw & 0xFFFF
        if value == 0 { value = c.bcd ? 10000 : 0x10000 }
        // Modes 2 and 3 need a count of at least 2; 1 behaves as the datasheet's "illegal" value.
        if value == 1 && (c.mode == 2 || c.mode == 3) { value = 2 }
        c.count = value
        c.loaded = true
        c.nullCount = false
        c.loadNs = now
        c.frozenNs = (!c.gate && c.mode != 1 && c.mode != 5) ? now : nil
        channels[i] = c
        if i == 0 { channelZeroChanged(now) }
    }

    // MARK: Gate (channel 2 through port B)

    func setGate(_ i: Int, _ high: Bool, _ now: UInt64) {
        var c = channels[i]
        guard c.gate != high else { return }
        c.gate = high
        if high {
            switch c.mode {
            case 1, 2, 3, 5:
                // A rising edge (re)triggers: the count reloads.
                c.loadNs = now
                c.frozenNs = nil
            default:
                if let f = c.frozenNs {
                    c.loadNs = c.loadNs &+ (now >= f ? now - f : 0)
                    c.frozenNs = nil
                }
            }
        } else if c.mode != 1 && c.mode != 5 {
            c.frozenNs = now
        }
        channels[i] = c
        if i == 0 { channelZeroChanged(now) }
    }

    // MARK: Channel 0 -> IRQ 0

    func setIRQLevel(_ level: Bool) {
        guard level != irqLevel else { return }
        irqLevel = level
        irq.setLevel(level)
    }

    /// Recomputes channel 0's line and the host timer after a change.
    func channelZeroChanged(_ now: UInt64) {
        let c = channels[0]
        hostTimer?.disarm()
        irqArmed = false
        guard c.loaded else {
            // Mode 0's OUT is low after a control word; the other modes' line only pulses.
            setIRQLevel(false)
            return
        }
        let period = periodNs(c)
        switch c.mode {
        case 0, 1:
            let fired = c.out(now)
            setIRQLevel(fired)
            if !fired && c.frozenNs == nil { arm(c.loadNs &+ period) }
        default:
            setIRQLevel(false)
            if c.frozenNs == nil && (c.mode == 2 || c.mode == 3 || c.elapsed(now) < UInt64(c.count)) {
                arm(c.loadNs &+ period)
            }
        }
    }

    func periodNs(_ c: PIT8254Channel) -> UInt64 { nanoseconds(forTicks: UInt64(c.count)) }

    func nanoseconds(forTicks t: UInt64) -> UInt64 { mulDivRoundingUp(t, 1_000_000_000, Self.frequencyHz) }

    func arm(_ at: UInt64) {
        irqNextNs = at
        irqArmed = true
        hostTimer?.arm(atNanoseconds: at)
    }

    func timerExpired() {
        guard irqArmed else { return }
        let now = clock.nanoseconds
        guard now >= irqNextNs else { hostTimer?.arm(atNanoseconds: irqNextNs); return }
        irqArmed = false
        let c = channels[0]
        switch c.mode {
        case 0, 1:
            setIRQLevel(true)
        case 2, 3:
            setIRQLevel(true)
            setIRQLevel(false)
            // The next reload after now, from the load time (no rounding drift).
            let periods = c.elapsed(now) / UInt64(c.count) + 1
            irqNextNs = c.loadNs &+ nanoseconds(forTicks: periods &* UInt64(c.count))
            irqArmed = true
            hostTimer?.arm(atNanoseconds: max(irqNextNs, now &+ Self.minimumPeriodNs))
        default:
            setIRQLevel(true)
            setIRQLevel(false)
        }
    }

    // MARK: Port B (0x61)

    /// Bit 0 channel 2 gate, bit 1 speaker data, bits 2-3 stored, bit 4 the refresh toggle
    /// (every 15.085 us), bit 5 channel 2 OUT.
    func readPortB() -> UInt8 {
        let now = clock.nanoseconds
        let refresh: UInt8 = (now / 15_085) & 1 == 1 ? 0x10 : 0
        return (channels[2].gate ? 1 : 0) | (speakerData ? 2 : 0) | portBSpare | refresh | (channels[2].out(now) ? 0x20 : 0)
    }

    func writePortB(_ v: UInt8) {
        speakerData = v & 2 != 0
        portBSpare = v & 0x0C
        setGate(2, v & 1 != 0, clock.nanoseconds)
    }

    // MARK: BCD

    static func toBCD(_ v: UInt32) -> UInt16 {
        let x = v % 10000
        return UInt16((x / 1000) << 12 | (x / 100 % 10) << 8 | (x / 10 % 10) << 4 | x % 10)
    }

    /// Invalid digits (A-F) count as 9, so any guest value gives a count in 0...9999.
    static func fromBCD(_ v: UInt16) -> UInt32 {
        var r: UInt32 = 0
        for shift in stride(from: 12, through: 0, by: -4) {
            r = r * 10 + min(UInt32((v >> UInt16(shift)) & 0xF), 9)
        }
        return r
    }
}

final class PIT8254Ports: BusDevice {
    unowned let pit: PIT8254
    init(pit: PIT8254) { self.pit = pit }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let (o, ovf) = offset.addingReportingOverflow(UInt64(i))
            data[i] = !ovf && o < 4 ? pit.readPort(o) : 0xFF
        }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let (o, ovf) = offset.addingReportingOverflow(UInt64(i))
            if !ovf && o < 4 { pit.writePort(o, data[i]) }
        }
    }
}

final class PIT8254PortB: BusDevice {
    unowned let pit: PIT8254
    init(pit: PIT8254) { self.pit = pit }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = offset == 0 && i == 0 ? pit.readPortB() : 0xFF }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count >= 1 else { return }
        pit.writePortB(data[0])
    }
}
