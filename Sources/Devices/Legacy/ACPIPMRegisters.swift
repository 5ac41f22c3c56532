import Glibc

/// The ACPI fixed-hardware register blocks (ACPI 6.5 §4.8.3) Keel's FADT points at, as one
/// 12-byte I/O range at 0x600:
///
///     0x600 PM1a_EVT_BLK: PM1_STS (2 bytes, write 1 to clear), PM1_EN (2 bytes)
///     0x604 PM1a_CNT_BLK: PM1_CNT (2 bytes)          0x606: reserved, reads 0
///     0x608 PM_TMR_BLK:   PM_TMR (4 bytes, 32-bit, 3.579545 MHz; FADT sets TMR_VAL_EXT)
///
/// SCI_EN reads as 1: ACPI mode is always on (the FADT has no SMI_CMD). Writing SLP_EN with
/// SLP_TYP equal to the DSDT's \_S5 value powers off; other sleep states are ignored.
/// The SCI is level-triggered and follows (PM1_STS & PM1_EN) != 0. The timer's overflow status
/// (TMR_STS) is never set, so TMR_EN raises no SCI.
public final class ACPIPMRegisters: BusDevice {
    public static let base: UInt64 = 0x600
    public static let size: UInt64 = 12
    public static let eventBlock: UInt64 = 0x600, eventBlockLength = 4
    public static let controlBlock: UInt64 = 0x604, controlBlockLength = 2
    public static let timerBlock: UInt64 = 0x608, timerBlockLength = 4
    public static let timerFrequency: UInt64 = 3_579_545

    public enum Status {
        public static let timer: UInt16 = 1 << 0
        public static let busMaster: UInt16 = 1 << 4
        public static let global: UInt16 = 1 << 5
        public static let powerButton: UInt16 = 1 << 8
        public static let sleepButton: UInt16 = 1 << 9
        public static let rtc: UInt16 = 1 << 10
        public static let wake: UInt16 = 1 << 15
    }
    public enum Enable {
        public static let timer: UInt16 = 1 << 0
        public static let global: UInt16 = 1 << 5
        public static let powerButton: UInt16 = 1 << 8
        public static let sleepButton: UInt16 = 1 << 9
        public static let rtc: UInt16 = 1 << 10
        static let writable: UInt16 = timer | global | powerButton | sleepButton | rtc
    }
    public enum Control {
        public static let sciEnable: UInt16 = 1 << 0
        public static let busMasterReload: UInt16 = 1 << 1
        public static let globalRelease: UInt16 = 1 << 2
        public static let sleepTypeShift: UInt16 = 10
        public static let sleepTypeMask: UInt16 = 0x7 << 10
        public static let sleepEnable: UInt16 = 1 << 13
        static let stored: UInt16 = busMasterReload | sleepTypeMask
    }

    private let sci: InterruptLine
    private let onPowerOff: () -> Void
    private let s5SleepType: UInt16
    private let timerStart: UInt64

    public private(set) var status: UInt16 = 0
    public private(set) var enable: UInt16 = 0
    private var control: UInt16 = 0
    private var sciLevel = false

    /// `sci` is the SCI line (IRQ 9 on a PC, as the FADT's SCI_INT says); `s5SleepType` the
    /// SLP_TYP value of the DSDT's \_S5 package.
    public init(sci: InterruptLine, s5SleepType: UInt16 = 5, onPowerOff: @escaping () -> Void) {
        self.sci = sci
        self.s5SleepType = s5SleepType & 0x7
        self.onPowerOff = onPowerOff
        self.timerStart = Self.monotonicNanoseconds()
    }

    /// Machine reset: status, enables and control back to 0; the timer keeps running.
    public func reset() {
        status = 0
        enable = 0
        control = 0
        updateSCI()
    }

    public var sciAsserted: Bool { sciLevel }

    /// The PM1_CNT value as the guest reads it.
    public var controlValue: UInt16 { (control & Control.stored) | Control.sciEnable }

    /// Presses the power button: PWRBTN_STS is set, and the SCI fires if PWRBTN_EN is set
    /// (the guest's ACPI driver then powers off cleanly).
    public func pressPowerButton() {
        status |= Status.powerButton
        updateSCI()
    }

    /// PM_TMR: CLOCK_MONOTONIC since the device was made, in 3.579545 MHz ticks, 32 bits.
    public func timerValue() -> UInt32 {
        let ns = Self.monotonicNanoseconds() &- timerStart
        let product = ns.multipliedFullWidth(by: Self.timerFrequency)
        // The quotient fits as long as the high half is below the divisor (ns < ~5e18).
        guard product.high < 1_000_000_000 else { return 0 }
        let ticks = (1_000_000_000 as UInt64).dividingFullWidth(product).quotient
        return UInt32(truncatingIfNeeded: ticks)
    }

    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(truncatingIfNeeded: ts.tv_sec) &* 1_000_000_000 &+ UInt64(truncatingIfNeeded: ts.tv_nsec)
    }

    // MARK: BusDevice

    /// Any width at any offset reads the bytes it covers from one snapshot of the block (so a
    /// 4-byte timer read is never torn); bytes past the block read 0xFF.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        var image = [UInt8](repeating: 0, count: Int(Self.size))
        func put16(_ at: Int, _ v: UInt16) {
            image[at] = UInt8(truncatingIfNeeded: v)
            image[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
        }
        put16(0, status)
        put16(2, enable)
        put16(4, controlValue)
        let needsTimer = offset < Self.size && offset &+ UInt64(data.count) > 8
        let t = needsTimer ? timerValue() : 0
        for i in 0..<4 { image[8 + i] = UInt8(truncatingIfNeeded: t >> (8 * UInt32(i))) }
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            data[i] = (!overflow && o < Self.size) ? image[Int(o)] : 0xFF
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        var clear: UInt16 = 0
        var newEnable = enable
        var newControl = control
        var controlWritten = false
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            guard !overflow else { break }
            let b = UInt16(data[i])
            switch o {
            case 0: clear |= b
            case 1: clear |= b << 8
            case 2: newEnable = (newEnable & 0xFF00) | b
            case 3: newEnable = (newEnable & 0x00FF) | b << 8
            case 4: newControl = (newControl & 0xFF00) | b; controlWritten = true
            case 5: newControl = (newControl & 0x00FF) | b << 8; controlWritten = true
            default: break // reserved bytes and the read-only timer
            }
        }
        status &= ~clear
        enable = newEnable & Enable.writable
        if controlWritten {
            control = newControl & Control.stored
            let sleepType = (newControl & Control.sleepTypeMask) >> Control.sleepTypeShift
            if newControl & Control.sleepEnable != 0 && sleepType == s5SleepType {
                updateSCI()
                onPowerOff()
                return
            }
        }
        updateSCI()
    }

    private func updateSCI() {
        let level = status & enable != 0
        if level != sciLevel {
            sciLevel = level
            sci.setLevel(level)
        }
    }
}
