/// A 16550A UART (PC COM port: 8 byte-wide registers), modelled on the National Semiconductor
/// PC16550D datasheet and matching QEMU's hw/char/serial.c where the guest can tell the difference
/// (Linux's 8250 autoconfig probes IER, MCR loopback, the FIFO size and the IIR FIFO bits).
///
/// Transmission is instantaneous: every THR write goes straight to the attached chardev, so LSR
/// THRE/TEMT always read as set and the THR-empty interrupt re-arms after each write.
/// Reception is flow-controlled: the chardev asks `receiveCapacity()` before reading its input,
/// and the UART calls `Chardev.frontendCanReceive()` when a guest read frees space.
///
/// Interrupt line: QEMU's serial drives its IRQ from IIR alone, without gating by MCR.OUT2
/// (even though a real PC routes the line through OUT2). Keel follows QEMU, so guests that leave
/// OUT2 clear still get interrupts, as they do under QEMU.
///
/// Called with the big lock held; never blocks.
public final class Serial16550: BusDevice, ChardevFrontend {
    public static let fifoLength = 16

    // Register offsets (datasheet table 2).
    enum Reg {
        static let rbrThr = 0, ier = 1, iirFcr = 2, lcr = 3, mcr = 4, lsr = 5, msr = 6, scr = 7
    }
    enum IER {
        static let erbfi: UInt8 = 0x01, etbei: UInt8 = 0x02, elsi: UInt8 = 0x04, edssi: UInt8 = 0x08
    }
    enum IIR {
        static let noInterrupt: UInt8 = 0x01
        static let modemStatus: UInt8 = 0x00
        static let thrEmpty: UInt8 = 0x02
        static let receivedData: UInt8 = 0x04
        static let lineStatus: UInt8 = 0x06
        static let charTimeout: UInt8 = 0x0C
        static let fifosEnabled: UInt8 = 0xC0
    }
    enum FCR {
        static let enable: UInt8 = 0x01, clearRx: UInt8 = 0x02, clearTx: UInt8 = 0x04
        static let dmaMode: UInt8 = 0x08, triggerMask: UInt8 = 0xC0
    }
    enum LCR { static let dlab: UInt8 = 0x80 }
    enum MCR {
        static let dtr: UInt8 = 0x01, rts: UInt8 = 0x02, out1: UInt8 = 0x04, out2: UInt8 = 0x08
        static let loop: UInt8 = 0x10
    }
    enum LSR {
        static let dr: UInt8 = 0x01, oe: UInt8 = 0x02, pe: UInt8 = 0x04, fe: UInt8 = 0x08
        static let bi: UInt8 = 0x10, thre: UInt8 = 0x20, temt: UInt8 = 0x40
        static let errorBits: UInt8 = 0x1E
    }
    enum MSR {
        static let cts: UInt8 = 0x10, dsr: UInt8 = 0x20, ri: UInt8 = 0x40, dcd: UInt8 = 0x80
        static let deltas: UInt8 = 0x0F
    }

    private let interrupt: InterruptLine
    /// The host side: guest output goes here, and it is told when receive space frees up.
    public private(set) var chardev: Chardev?

    // Register state.
    private(set) public var divisor: UInt16 = 0
    private var ier: UInt8 = 0
    private var iir: UInt8 = IIR.noInterrupt
    private var fcr: UInt8 = 0
    private var lcr: UInt8 = 0
    private var mcr: UInt8 = 0
    private var lsr: UInt8 = 0
    private var msr: UInt8 = 0
    private var scr: UInt8 = 0
    /// Non-FIFO (16450) mode's single receiver buffer register.
    private var rbr: UInt8 = 0
    /// THR-empty interrupt pending: set when THR becomes empty or ETBEI is turned on while THR
    /// is empty; cleared by a THR write or by reading IIR while it reports THR empty.
    private var thrInterruptPending = false
    private var triggerLevel = 1

    // Receive FIFO: a ring of fifoLength bytes.
    private var rxFIFO = [UInt8](repeating: 0, count: Serial16550.fifoLength)
    private var rxHead = 0
    private var rxCount = 0

    private var lineLevel = false

    public init(interrupt: InterruptLine, chardev: Chardev? = nil) {
        self.interrupt = interrupt
        self.chardev = chardev
        resetRegisters()
        chardev?.frontend = self
    }

    /// Attaches (or replaces) the host side.
    public func attach(_ chardev: Chardev?) {
        self.chardev = chardev
        chardev?.frontend = self
        chardev?.frontendCanReceive()
    }

    /// Machine reset: registers to power-on values (QEMU's serial_reset), FIFOs emptied.
    public func reset() {
        resetRegisters()
        updateInterrupt()
        chardev?.frontendCanReceive()
    }

    private func resetRegisters() {
        divisor = 0x0C // 9600 baud from 1.8432 MHz
        ier = 0
        iir = IIR.noInterrupt
        fcr = 0
        lcr = 0
        mcr = MCR.out2
        lsr = LSR.temt | LSR.thre
        msr = MSR.dcd | MSR.dsr | MSR.cts
        scr = 0
        rbr = 0
        thrInterruptPending = false
        triggerLevel = 1
        rxHead = 0
        rxCount = 0
    }

    // MARK: BusDevice

    /// Registers are a byte wide; a wider access is split into byte accesses at consecutive
    /// offsets, as QEMU's memory core does for a device with max access size 1.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let before = receiveCapacity()
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            data[i] = (!overflow && o < 8) ? readRegister(Int(o)) : 0xFF
        }
        notifyIfSpaceFreed(before)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let before = receiveCapacity()
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            if !overflow && o < 8 { writeRegister(Int(o), data[i]) }
        }
        notifyIfSpaceFreed(before)
    }

    private func notifyIfSpaceFreed(_ before: Int) {
        if before == 0 && receiveCapacity() > 0 { chardev?.frontendCanReceive() }
    }

    private func readRegister(_ reg: Int) -> UInt8 {
        switch reg {
        case Reg.rbrThr:
            if lcr & LCR.dlab != 0 { return UInt8(truncatingIfNeeded: divisor) }
            return readReceiver()
        case Reg.ier:
            if lcr & LCR.dlab != 0 { return UInt8(truncatingIfNeeded: divisor >> 8) }
            return ier
        case Reg.iirFcr:
            let value = iir
            // Reading IIR while it reports THR empty acknowledges that interrupt.
            if value & 0x0F == IIR.thrEmpty {
                thrInterruptPending = false
                updateInterrupt()
            }
            return value
        case Reg.lcr:
            return lcr
        case Reg.mcr:
            return mcr
        case Reg.lsr:
            let value = lsr
            if lsr & (LSR.bi | LSR.oe) != 0 {
                lsr &= ~(LSR.bi | LSR.oe)
                updateInterrupt()
            }
            return value
        case Reg.msr:
            if mcr & MCR.loop != 0 {
                // Loopback wires OUT2→DCD, OUT1→RI, RTS→CTS, DTR→DSR (datasheet 8.6).
                return (mcr & (MCR.out2 | MCR.out1)) << 4
                    | (mcr & MCR.rts) << 3
                    | (mcr & MCR.dtr) << 5
            }
            let value = msr
            if msr & MSR.deltas != 0 {
                msr &= ~MSR.deltas
                updateInterrupt()
            }
            return value
        default:
            return scr
        }
    }

    private func readReceiver() -> UInt8 {
        let value: UInt8
        if fcr & FCR.enable != 0 {
            if rxCount > 0 {
                value = rxFIFO[rxHead]
                rxHead = (rxHead + 1) % Self.fifoLength
                rxCount -= 1
            } else {
                value = 0
            }
            if rxCount == 0 { lsr &= ~(LSR.dr | LSR.bi) }
        } else {
            value = rbr
            lsr &= ~(LSR.dr | LSR.bi)
        }
        updateInterrupt()
        return value
    }

    private func writeRegister(_ reg: Int, _ value: UInt8) {
        switch reg {
        case Reg.rbrThr:
            if lcr & LCR.dlab != 0 {
                divisor = (divisor & 0xFF00) | UInt16(value)
                return
            }
            transmit(value)
        case Reg.ier:
            if lcr & LCR.dlab != 0 {
                divisor = (divisor & 0x00FF) | UInt16(value) << 8
                return
            }
            let new = value & 0x0F
            let changed = ier ^ new
            ier = new
            // Turning ETBEI on while THR is empty raises the THR-empty interrupt even if it was
            // acknowledged before (QEMU, Bochs; Linux's UART_BUG_TXEN probe and Windows rely on it).
            if changed & IER.etbei != 0 {
                thrInterruptPending = (ier & IER.etbei != 0) && (lsr & LSR.thre != 0)
            }
            if changed != 0 { updateInterrupt() }
        case Reg.iirFcr:
            writeFCR(value)
        case Reg.lcr:
            lcr = value
        case Reg.mcr:
            mcr = value & 0x1F
        case Reg.lsr, Reg.msr:
            break // read-only (factory test writes ignored, as QEMU)
        default:
            scr = value
        }
    }

    private func writeFCR(_ value: UInt8) {
        var v = value
        // Changing the FIFO enable bit empties both FIFOs (datasheet FCR bit 0).
        if (v ^ fcr) & FCR.enable != 0 { v |= FCR.clearRx | FCR.clearTx }
        if v & FCR.clearRx != 0 {
            rxHead = 0
            rxCount = 0
            lsr &= ~(LSR.dr | LSR.bi)
        }
        if v & FCR.clearTx != 0 {
            // The transmitter is always empty here; clearing it re-raises THR empty.
            lsr |= LSR.thre | LSR.temt
            thrInterruptPending = true
        }
        if v & FCR.enable != 0 {
            switch v & FCR.triggerMask {
            case 0x00: triggerLevel = 1
            case 0x40: triggerLevel = 4
            case 0x80: triggerLevel = 8
            default: triggerLevel = 14
            }
        }
        // Only enable, DMA mode and trigger bits stick; the clear bits self-reset.
        fcr = v & (FCR.enable | FCR.dmaMode | FCR.triggerMask)
        updateInterrupt()
    }

    private func transmit(_ byte: UInt8) {
        thrInterruptPending = false
        if mcr & MCR.loop != 0 {
            // Loopback: the transmitter shift register feeds the receiver; nothing leaves.
            receiveByte(byte)
        } else {
            withUnsafeBytes(of: byte) { chardev?.write($0) }
        }
        // The byte left at once: THR and the shift register are empty again.
        lsr |= LSR.thre | LSR.temt
        thrInterruptPending = true
        updateInterrupt()
    }

    // MARK: Receive path

    private func receiveByte(_ byte: UInt8) {
        if fcr & FCR.enable != 0 {
            // An overrun keeps the FIFO's contents and drops the new byte (datasheet LSR bit 1).
            if rxCount < Self.fifoLength {
                rxFIFO[(rxHead + rxCount) % Self.fifoLength] = byte
                rxCount += 1
            } else {
                lsr |= LSR.oe
            }
        } else {
            if lsr & LSR.dr != 0 { lsr |= LSR.oe }
            rbr = byte
        }
        lsr |= LSR.dr
    }

    /// FIFO space (1 or 0 in 16450 mode). In loopback the receiver is disconnected from the
    /// serial input, so nothing is taken from the chardev.
    public func receiveCapacity() -> Int {
        if mcr & MCR.loop != 0 { return 0 }
        if fcr & FCR.enable != 0 { return Self.fifoLength - rxCount }
        return lsr & LSR.dr != 0 ? 0 : 1
    }

    /// Bytes from the chardev; anything beyond `receiveCapacity()` is an overrun and is dropped.
    public func receive(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        if mcr & MCR.loop != 0 { return }
        for b in bytes { receiveByte(b) }
        updateInterrupt()
    }

    // MARK: Interrupts

    /// Recomputes IIR by the datasheet's priority (table 4): line status, received data /
    /// character timeout, THR empty, modem status; then drives the line.
    private func updateInterrupt() {
        var id = IIR.noInterrupt
        let fifo = fcr & FCR.enable != 0
        if ier & IER.elsi != 0 && lsr & LSR.errorBits != 0 {
            id = IIR.lineStatus
        } else if ier & IER.erbfi != 0 && lsr & LSR.dr != 0 {
            if !fifo || rxCount >= triggerLevel {
                id = IIR.receivedData
            } else {
                // Fewer bytes than the trigger level: report the character timeout at once
                // instead of after four character times.
                id = IIR.charTimeout
            }
        } else if ier & IER.etbei != 0 && thrInterruptPending {
            id = IIR.thrEmpty
        } else if ier & IER.edssi != 0 && msr & MSR.deltas != 0 {
            id = IIR.modemStatus
        }
        iir = id | (fifo ? IIR.fifosEnabled : 0)
        let level = id != IIR.noInterrupt
        if level != lineLevel {
            lineLevel = level
            interrupt.setLevel(level)
        }
    }

    // MARK: Introspection (tests, monitor)

    public var interruptAsserted: Bool { lineLevel }
    public var receiveFIFOCount: Int { fcr & FCR.enable != 0 ? rxCount : (lsr & LSR.dr != 0 ? 1 : 0) }
}
