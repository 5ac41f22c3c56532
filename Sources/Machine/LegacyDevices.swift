import Devices

/// The PC's trapped-emulation devices and where they sit: COM1..COM4, the i8042, the CMOS RTC,
/// the ACPI PM register blocks the FADT names, the 0xCF9 reset register, and the optional
/// isa-debug-exit and pc-testdev. Their actions on the machine become machine requests.
final class LegacyDevices {
    let serialPorts: [Serial16550]
    let i8042: I8042
    let rtc: CMOSRTC
    let pm: ACPIPMRegisters
    let resetControl: ResetControlRegister
    let debugExit: DebugExit?
    let testDevice: PCTestDevice?

    static let i8042Data: UInt64 = 0x60, i8042Command: UInt64 = 0x64
    static let rtcBase: UInt64 = 0x70
    static let resetControlPort: UInt64 = 0xCF9
    static let sciGSI: UInt32 = 9

    init(board: PCBoard) throws {
        let c = board.configuration
        let pio = board.pioBus
        let requests = board.requests
        var ports: [Serial16550] = []
        for (i, spec) in c.serialPorts.enumerated() where spec != .disabled {
            let chardev = try openChardev(spec, loop: board.loop, muxEscape: i == 0 && c.stdioMux) {
                requests.raise(.quit(reason: ""))
            }
            board.chardevs.append(chardev)
            let r = MachineConfiguration.serialPortResources[i]
            let uart = Serial16550(interrupt: board.interrupts.line(UInt32(r.irq)), chardev: chardev)
            try pio.insert(uart, base: UInt64(r.base), size: 8, name: "COM\(i + 1)")
            ports.append(uart)
        }
        serialPorts = ports

        i8042 = I8042(interrupt: board.interrupts.line(1)) { requests.raise(.reset) }
        try pio.insert(i8042.dataPort, base: Self.i8042Data, size: 1, name: "i8042-data")
        try pio.insert(i8042.commandPort, base: Self.i8042Command, size: 1, name: "i8042-command")

        rtc = CMOSRTC(memory: CMOSMemorySizes(belowFourGiB: board.map.lowRAMSize, aboveFourGiB: board.map.highRAMSize))
        try pio.insert(rtc, base: Self.rtcBase, size: 2, name: "cmos-rtc")

        pm = ACPIPMRegisters(sci: board.interrupts.line(Self.sciGSI)) { requests.raise(.powerOff) }
        try pio.insert(pm, base: ACPIPMRegisters.base, size: ACPIPMRegisters.size, name: "acpi-pm")

        resetControl = ResetControlRegister { requests.raise(.reset) }
        try pio.insert(resetControl, base: Self.resetControlPort, size: 1, name: "reset-control")

        if let d = c.debugExit {
            let dev = DebugExit { requests.raise(.exit(status: $0)) }
            try pio.insert(dev, base: UInt64(d.ioBase), size: UInt64(d.ioSize), name: "isa-debug-exit")
            debugExit = dev
        } else {
            debugExit = nil
        }

        if c.testDevice {
            let routing = board.interrupts
            let dev = PCTestDevice { irq, level in routing.line(UInt32(irq)).setLevel(level) }
            try dev.attach(pio: pio, mmio: board.mmioBus)
            testDevice = dev
        } else {
            testDevice = nil
        }
    }

    /// Machine reset, with the big lock held. The RTC keeps its time and NVRAM.
    func reset() {
        for s in serialPorts { s.reset() }
        i8042.reset()
        rtc.reset()
        pm.reset()
        resetControl.reset()
    }
}
