import Glibc

/// RAM sizes the PC BIOS area of CMOS reports (QEMU's pc_cmos_init layout).
public struct CMOSMemorySizes: Equatable {
    /// Guest RAM below 4 GiB, in bytes.
    public var belowFourGiB: UInt64
    /// Guest RAM at and above 4 GiB, in bytes.
    public var aboveFourGiB: UInt64
    public init(belowFourGiB: UInt64, aboveFourGiB: UInt64) {
        self.belowFourGiB = belowFourGiB
        self.aboveFourGiB = aboveFourGiB
    }
}

/// The MC146818 real-time clock and 128 bytes of CMOS RAM: index port 0x70 (offset 0; bit 7
/// masks NMI) and data port 0x71 (offset 1).
///
/// The clock is the host's CLOCK_REALTIME (UTC) plus an offset the guest changes by writing the
/// time registers (with register B's SET bit held, or directly). Registers follow register B:
/// BCD or binary (DM), 24- or 12-hour (bit 7 of the hour register = PM).
///
/// Interrupts are not generated (no IRQ 8): register C reports the update-ended flag (UF) when
/// the second changed since C was last read, so guests that poll C see updates; periodic and
/// alarm flags stay clear. UIP reads as set only during the last 244 µs of each second, the
/// datasheet's update window, so a reader waiting for UIP to clear never waits longer.
///
/// CMOS RAM (everything but the clock registers) lives as long as the device: `reset()` (a
/// machine reset) keeps it, as a battery does.
public final class CMOSRTC: BusDevice {
    public static let size = 128
    public static let centuryRegister = 0x32

    enum Index {
        static let seconds = 0x00, secondsAlarm = 0x01, minutes = 0x02, minutesAlarm = 0x03
        static let hours = 0x04, hoursAlarm = 0x05, weekday = 0x06, dayOfMonth = 0x07
        static let month = 0x08, year = 0x09, a = 0x0A, b = 0x0B, c = 0x0C, d = 0x0D
    }
    enum RegA { static let uip: UInt8 = 0x80, divider: UInt8 = 0x70, normalDivider: UInt8 = 0x20 }
    enum RegB {
        static let set: UInt8 = 0x80, pie: UInt8 = 0x40, aie: UInt8 = 0x20, uie: UInt8 = 0x10
        static let sqwe: UInt8 = 0x08, binary: UInt8 = 0x04, hour24: UInt8 = 0x02
    }
    enum RegC { static let irqf: UInt8 = 0x80, pf: UInt8 = 0x40, af: UInt8 = 0x20, uf: UInt8 = 0x10 }

    /// A calendar time as the clock registers hold it (decoded).
    struct CalendarTime: Equatable {
        var second: Int64, minute: Int64, hour: Int64
        var weekday: Int64 // 1 = Sunday
        var day: Int64, month: Int64, year: Int64
    }

    private var cmos = [UInt8](repeating: 0, count: CMOSRTC.size)
    private var index = 0
    public private(set) var nmiMasked = false
    /// Guest time minus host UTC, in nanoseconds.
    private var offsetNanoseconds: Int64
    /// The time being set while register B's SET bit is on (the clock is stopped meanwhile).
    private var heldTime: CalendarTime?
    /// The guest second at the last register C read, for UF.
    private var lastSecondSeenByC: Int64 = Int64.min
    /// The host clock (CLOCK_REALTIME) in nanoseconds since the epoch; replaceable in tests.
    var hostNow: () -> Int64 = CMOSRTC.realtimeNanoseconds

    /// `offsetSeconds` starts the guest clock that far from host UTC (QEMU's -rtc base).
    public init(memory: CMOSMemorySizes? = nil, offsetSeconds: Int64 = 0) {
        offsetNanoseconds = offsetSeconds.multipliedReportingOverflow(by: 1_000_000_000).partialValue
        cmos[Index.a] = 0x26 // 32.768 kHz time base, 1024 Hz rate
        cmos[Index.b] = RegB.hour24
        cmos[Index.d] = 0x80 // valid RAM and time
        if let m = memory { storeMemorySizes(m) }
    }

    /// Machine reset: interrupt enables and flags clear (as QEMU's rtc_reset); RAM and time stay.
    public func reset() {
        cmos[Index.b] &= ~(RegB.pie | RegB.aie | RegB.uie | RegB.sqwe)
        cmos[Index.c] = 0
    }

    /// Raw CMOS byte (for the machine and tests); clock registers read their stored bytes.
    public subscript(byte i: Int) -> UInt8 {
        get { (0..<Self.size).contains(i) ? cmos[i] : 0 }
        set { if (0..<Self.size).contains(i) { cmos[i] = newValue } }
    }

    private func storeMemorySizes(_ m: CMOSMemorySizes) {
        let kib: UInt64 = 1024, mib: UInt64 = 1024 * 1024
        func put16(_ at: Int, _ v: UInt64) {
            cmos[at] = UInt8(truncatingIfNeeded: v)
            cmos[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
        }
        put16(0x15, min(m.belowFourGiB / kib, 640))
        let extended = m.belowFourGiB > mib ? min((m.belowFourGiB - mib) / kib, 0xFFFF) : 0
        put16(0x17, extended)
        put16(0x30, extended)
        let above16M = m.belowFourGiB > 16 * mib ? min((m.belowFourGiB - 16 * mib) / (64 * kib), 0xFFFF) : 0
        put16(0x34, above16M)
        let high = m.aboveFourGiB / (64 * kib)
        cmos[0x5B] = UInt8(truncatingIfNeeded: high)
        cmos[0x5C] = UInt8(truncatingIfNeeded: high >> 8)
        cmos[0x5D] = UInt8(truncatingIfNeeded: high >> 16)
    }

    // MARK: BusDevice

    /// Byte registers; a wider access is split into byte accesses (an outw to 0x70 writes the
    /// index, then the data), as QEMU's memory core splits it.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            data[i] = (!overflow && o == 1) ? readData() : 0xFF
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            guard !overflow else { return }
            if o == 0 {
                index = Int(data[i] & 0x7F)
                nmiMasked = data[i] & 0x80 != 0
            } else if o == 1 {
                writeData(data[i])
            }
        }
    }

    // MARK: Registers

    private var regB: UInt8 { cmos[Index.b] }
    private var binary: Bool { regB & RegB.binary != 0 }
    private var hour24: Bool { regB & RegB.hour24 != 0 }

    private func readData() -> UInt8 {
        switch index {
        case Index.seconds, Index.minutes, Index.hours, Index.weekday, Index.dayOfMonth,
             Index.month, Index.year, Self.centuryRegister:
            return encode(field: index, of: heldTime ?? currentTime().calendar)
        case Index.a:
            return cmos[Index.a] | (updateInProgress() ? RegA.uip : 0)
        case Index.c:
            var flags = cmos[Index.c]
            let second = currentTime().epochSecond
            if heldTime == nil && second != lastSecondSeenByC { flags |= RegC.uf }
            lastSecondSeenByC = second
            let enabled = regB & (RegB.pie | RegB.aie | RegB.uie)
            if flags & (RegC.pf | RegC.af | RegC.uf) & enabled != 0 { flags |= RegC.irqf }
            cmos[Index.c] = 0
            return flags
        case Index.d:
            return 0x80
        default:
            return cmos[index]
        }
    }

    private func writeData(_ value: UInt8) {
        switch index {
        case Index.seconds, Index.minutes, Index.hours, Index.weekday, Index.dayOfMonth,
             Index.month, Index.year, Self.centuryRegister:
            if var held = heldTime {
                decode(value, field: index, into: &held)
                heldTime = held
            } else {
                var now = currentTime().calendar
                decode(value, field: index, into: &now)
                setGuestTime(now)
            }
        case Index.a:
            cmos[Index.a] = value & ~RegA.uip
        case Index.b:
            var new = value
            let old = cmos[Index.b]
            if new & RegB.set != 0 && old & RegB.set == 0 {
                // SET stops the clock and clears UIE (datasheet register B bit 7).
                heldTime = currentTime().calendar
                new &= ~RegB.uie
            } else if new & RegB.set == 0, let held = heldTime {
                heldTime = nil
                setGuestTime(held)
            }
            cmos[Index.b] = new
        case Index.c, Index.d:
            break // read-only
        default:
            cmos[index] = value
        }
    }

    // MARK: Time

    static func realtimeNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
    }

    private func guestNanoseconds() -> Int64 { hostNow() &+ offsetNanoseconds }

    private func currentTime() -> (calendar: CalendarTime, epochSecond: Int64) {
        let ns = guestNanoseconds()
        let (q, r) = ns.quotientAndRemainder(dividingBy: 1_000_000_000)
        let second = r < 0 ? q - 1 : q
        return (Self.calendar(fromEpochSecond: second), second)
    }

    private func updateInProgress() -> Bool {
        guard heldTime == nil, cmos[Index.a] & RegA.divider == RegA.normalDivider else { return false }
        var r = guestNanoseconds() % 1_000_000_000
        if r < 0 { r += 1_000_000_000 }
        return r >= 1_000_000_000 - 244_000
    }

    private func setGuestTime(_ t: CalendarTime) {
        guard let second = Self.epochSecond(from: t) else { return }
        let (target, overflow) = second.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return }
        offsetNanoseconds = target &- hostNow()
        lastSecondSeenByC = second
    }

    static func calendar(fromEpochSecond s: Int64) -> CalendarTime {
        var t = time_t(s)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        return CalendarTime(second: Int64(tm.tm_sec), minute: Int64(tm.tm_min), hour: Int64(tm.tm_hour),
                            weekday: Int64(tm.tm_wday) + 1, day: Int64(tm.tm_mday),
                            month: Int64(tm.tm_mon) + 1, year: Int64(tm.tm_year) + 1900)
    }

    /// The epoch second of a guest-written time; fields out of range are normalized by timegm
    /// (every field comes from a byte, so none can overflow a C int).
    static func epochSecond(from c: CalendarTime) -> Int64? {
        var tm = Glibc.tm()
        tm.tm_sec = Int32(truncatingIfNeeded: c.second)
        tm.tm_min = Int32(truncatingIfNeeded: c.minute)
        tm.tm_hour = Int32(truncatingIfNeeded: c.hour)
        tm.tm_mday = Int32(truncatingIfNeeded: c.day)
        tm.tm_mon = Int32(truncatingIfNeeded: c.month - 1)
        tm.tm_year = Int32(truncatingIfNeeded: c.year - 1900)
        let t = timegm(&tm)
        return t == -1 && c.year != 1969 ? nil : Int64(t)
    }

    private func encodeNumber(_ v: Int64) -> UInt8 {
        let n = ((v % 100) + 100) % 100
        return binary ? UInt8(n) : UInt8(n / 10) << 4 | UInt8(n % 10)
    }

    private func decodeNumber(_ v: UInt8) -> Int64 {
        binary ? Int64(v) : Int64(v >> 4) * 10 + Int64(v & 0x0F)
    }

    private func encode(field: Int, of t: CalendarTime) -> UInt8 {
        switch field {
        case Index.seconds: return encodeNumber(t.second)
        case Index.minutes: return encodeNumber(t.minute)
        case Index.hours:
            if hour24 { return encodeNumber(t.hour) }
            let h12 = t.hour % 12 == 0 ? 12 : t.hour % 12
            return encodeNumber(h12) | (t.hour >= 12 ? 0x80 : 0)
        case Index.weekday: return encodeNumber(t.weekday)
        case Index.dayOfMonth: return encodeNumber(t.day)
        case Index.month: return encodeNumber(t.month)
        case Index.year: return encodeNumber(t.year % 100)
        default: return encodeNumber(t.year / 100) // century
        }
    }

    private func decode(_ v: UInt8, field: Int, into t: inout CalendarTime) {
        switch field {
        case Index.seconds: t.second = decodeNumber(v)
        case Index.minutes: t.minute = decodeNumber(v)
        case Index.hours:
            if hour24 {
                t.hour = decodeNumber(v)
            } else {
                t.hour = decodeNumber(v & 0x7F) % 12 + (v & 0x80 != 0 ? 12 : 0)
            }
        case Index.weekday: t.weekday = decodeNumber(v)
        case Index.dayOfMonth: t.day = decodeNumber(v)
        case Index.month: t.month = decodeNumber(v)
        case Index.year: t.year = t.year - t.year % 100 + decodeNumber(v)
        default: t.year = decodeNumber(v) * 100 + t.year % 100
        }
    }
}
