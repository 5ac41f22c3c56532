/// The PS/2 (8042) keyboard controller: data port 0x60, status/command port 0x64.
/// Insert `dataPort` at 0x60 and `commandPort` at 0x64 (1 byte each; 0x61 is port B, another
/// device). As a single BusDevice, offset 0 is the data port and offset 4 the command port.
///
/// Enough for Linux's i8042 and atkbd drivers to probe without errors and for the guest to reset
/// the machine through it (0xFE, or output-port bit 0 cleared with 0xD1). There is no keyboard
/// input. There is no AUX (mouse) device: the AUX loop-back command (0xD3) returns its byte with
/// the AUX status bit, but IRQ 12 is never raised, so Linux's AUX IRQ test times out (250 ms) and
/// it registers no AUX port (boot with `i8042.noaux` to skip that wait).
/// A20 is always enabled; the output port's A20 bit is stored and ignored.
public final class I8042: BusDevice {
    enum Status {
        static let outputFull: UInt8 = 0x01
        static let inputFull: UInt8 = 0x02
        static let system: UInt8 = 0x04
        static let command: UInt8 = 0x08
        static let unlocked: UInt8 = 0x10
        static let auxOutputFull: UInt8 = 0x20
    }
    enum Config {
        static let keyboardInterrupt: UInt8 = 0x01
        static let auxInterrupt: UInt8 = 0x02
        static let system: UInt8 = 0x04
        static let keyboardDisabled: UInt8 = 0x10
        static let auxDisabled: UInt8 = 0x20
        static let translate: UInt8 = 0x40
    }
    /// Controller commands the next data-port write is an argument to.
    private enum PendingWrite {
        case none, config, outputPort, keyboardOutput, auxOutput, auxDevice
        case keyboardArgument(command: UInt8)
    }

    public static let outputQueueLimit = 16
    /// As a BIOS leaves it: keyboard interrupt on, system flag (POST passed), scancode translation.
    public static let initialConfig: UInt8 = Config.keyboardInterrupt | Config.system | Config.translate

    private let interrupt: InterruptLine
    private let onReset: () -> Void

    public private(set) var config: UInt8 = I8042.initialConfig
    private var status: UInt8 = 0
    private var outputPort: UInt8 = 0
    private var pending: PendingWrite = .none
    /// Bytes for the guest to read from the data port: (value, from the AUX side).
    private var output: [(UInt8, Bool)] = []
    private var lastRead: UInt8 = 0
    private var lineLevel = false

    public init(interrupt: InterruptLine, onReset: @escaping () -> Void) {
        self.interrupt = interrupt
        self.onReset = onReset
        reset()
    }

    /// Machine reset: controller state to what firmware leaves behind.
    public func reset() {
        config = Self.initialConfig
        status = Status.system | Status.unlocked
        outputPort = 0xCF // reset line high, A20 on
        pending = .none
        output.removeAll()
        updateInterrupt()
    }

    public var interruptAsserted: Bool { lineLevel }

    public static let dataPortAddress: UInt64 = 0x60
    public static let commandPortAddress: UInt64 = 0x64
    /// The data port alone (insert at 0x60, size 1).
    public var dataPort: BusDevice { Port(self, offset: 0) }
    /// The status/command port alone (insert at 0x64, size 1).
    public var commandPort: BusDevice { Port(self, offset: 4) }

    /// One port of the controller as its own bus device (keeps the controller alive).
    private final class Port: BusDevice {
        let controller: I8042
        let offset: UInt64
        init(_ controller: I8042, offset: UInt64) { self.controller = controller; self.offset = offset }
        func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
            if offset == 0 { controller.read(offset: self.offset, data: data) } else { for i in 0..<data.count { data[i] = 0xFF } }
        }
        func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            if offset == 0 { controller.write(offset: self.offset, data: data) }
        }
    }

    // MARK: BusDevice (offset 0 = data port 0x60, offset 4 = status/command port 0x64)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count > 0 else { return }
        for i in 0..<data.count { data[i] = 0 }
        switch offset {
        case 0: data[0] = readData()
        case 4: data[0] = readStatus()
        default: data[0] = 0xFF
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        switch offset {
        case 0: writeData(data[0])
        case 4: writeCommand(data[0])
        default: break
        }
    }

    public func readStatus() -> UInt8 {
        var s = status & ~(Status.outputFull | Status.auxOutputFull)
        if let head = output.first {
            s |= Status.outputFull
            if head.1 { s |= Status.auxOutputFull }
        }
        return s
    }

    public func readData() -> UInt8 {
        if !output.isEmpty { lastRead = output.removeFirst().0 }
        updateInterrupt()
        return lastRead // an empty buffer reads the last byte again, as QEMU
    }

    private func enqueue(_ byte: UInt8, aux: Bool = false) {
        guard output.count < Self.outputQueueLimit else { return }
        output.append((byte, aux))
        updateInterrupt()
    }

    public func writeCommand(_ command: UInt8) {
        status |= Status.command
        pending = .none
        switch command {
        case 0x20: enqueue(config)                       // read config byte
        case 0x60: pending = .config                     // write config byte
        case 0xA7: config |= Config.auxDisabled          // disable AUX
        case 0xA8: config &= ~Config.auxDisabled         // enable AUX
        case 0xA9: enqueue(0x00)                         // AUX interface test: no error
        case 0xAA:                                       // controller self-test
            status |= Status.system
            enqueue(0x55)
        case 0xAB: enqueue(0x00)                         // keyboard interface test: no error
        case 0xAD: config |= Config.keyboardDisabled     // disable keyboard
        case 0xAE: config &= ~Config.keyboardDisabled    // enable keyboard
        case 0xC0: enqueue(0x80)                         // input port: keyboard not inhibited
        case 0xD0: enqueue(outputPort)                   // read output port
        case 0xD1: pending = .outputPort                 // write output port
        case 0xD2: pending = .keyboardOutput             // write keyboard output buffer
        case 0xD3: pending = .auxOutput                  // write AUX output buffer (loop-back)
        case 0xD4: pending = .auxDevice                  // write to AUX device
        case 0xF0...0xFF:
            // Pulse output-port lines low for 6 µs; bit 0 is the CPU reset line (0xFE).
            if command & 0x01 == 0 { onReset() }
        default: break
        }
        updateInterrupt()
    }

    public func writeData(_ value: UInt8) {
        status &= ~Status.command
        let p = pending
        pending = .none
        switch p {
        case .config:
            config = value
            if value & Config.system != 0 { status |= Status.system } else { status &= ~Status.system }
            updateInterrupt()
        case .outputPort:
            outputPort = value
            if value & 0x01 == 0 { onReset() }
        case .keyboardOutput:
            enqueue(value)
        case .auxOutput:
            enqueue(value, aux: true)
        case .auxDevice:
            break // no mouse: the byte goes nowhere and nothing answers
        case .keyboardArgument(let command):
            keyboardArgument(command, value)
        case .none:
            keyboardCommand(value)
        }
    }

    // MARK: The keyboard behind the controller (enough for atkbd's probe)

    private func keyboardCommand(_ command: UInt8) {
        switch command {
        case 0xFF: // reset and self-test (BAT passed)
            enqueue(0xFA)
            enqueue(0xAA)
        case 0xF2: // identify: MF2 keyboard (translated ID when the controller translates)
            enqueue(0xFA)
            enqueue(0xAB)
            enqueue(config & Config.translate != 0 ? 0x41 : 0x83)
        case 0xEE: // echo
            enqueue(0xEE)
        case 0xED, 0xF0, 0xF3: // set LEDs, scancode set, typematic: take an argument
            enqueue(0xFA)
            pending = .keyboardArgument(command: command)
        default: // enable, disable, defaults, resend, ...: acknowledge
            enqueue(0xFA)
        }
    }

    private func keyboardArgument(_ command: UInt8, _ value: UInt8) {
        enqueue(0xFA)
        if command == 0xF0 && value == 0 {
            enqueue(config & Config.translate != 0 ? 0x41 : 0x02) // current set: 2
        }
    }

    /// IRQ 1 is asserted while a keyboard-side byte waits and the config byte enables it.
    private func updateInterrupt() {
        var level = false
        if let head = output.first, !head.1, config & Config.keyboardInterrupt != 0 { level = true }
        if level != lineLevel {
            lineLevel = level
            interrupt.setLevel(level)
        }
    }
}
