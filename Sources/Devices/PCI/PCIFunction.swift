/// What a function's Base Address Register decodes (PCI Local Bus 3.0 §6.2.5.1).
public enum PCIBarKind: Sendable, Equatable {
    case io
    case memory32
    /// Takes two BAR slots (the next one holds the upper half of the address).
    case memory64
}

/// One BAR: its size (a power of two), kind, and the registers behind it.
public struct PCIBar {
    public let kind: PCIBarKind
    public let size: UInt64
    public let prefetchable: Bool
    public let region: BusDevice
    public let name: String

    public init(kind: PCIBarKind, size: UInt64, prefetchable: Bool = false, region: BusDevice, name: String) {
        precondition(size.nonzeroBitCount == 1 && size >= (kind == .io ? 4 : 16), "BAR size must be a power of two (I/O >= 4, memory >= 16)")
        self.kind = kind; self.size = size; self.prefetchable = prefetchable; self.region = region; self.name = name
    }
}

/// A PCI function as the configuration mechanisms see it. A device model owns one `PCIFunction`
/// (its standard header, BARs and capability list) and implements the rest.
public protocol PCIDevice: AnyObject {
    var pci: PCIFunction { get }
    /// Machine reset: the device's own state (the header is reset by the host bridge).
    func pciReset()
}

/// The standard type 0 header of one function: identity, command/status, BARs with sizing, the
/// interrupt pin, and a capability list. BARs are mapped on the PIO/MMIO buses while their
/// decode bit in the command register is set, and moved when the guest rewrites them.
public final class PCIFunction {
    public var config: PCIConfigSpace
    public private(set) var bars: [PCIBar?] = Array(repeating: nil, count: PCIConfig.barCount)
    /// Where each BAR is mapped now (nil: not decoded).
    public private(set) var mappedAddresses: [UInt64?] = Array(repeating: nil, count: PCIConfig.barCount)
    /// Called after a BAR moved or stopped decoding (for ioeventfds that follow the BAR).
    public var barMoved: ((_ index: Int, _ address: UInt64?) -> Void)?
    /// Called after a guest write to the capability area [0x40, 0x100), with its offset and length.
    public var capabilityWritten: ((_ offset: Int, _ length: Int) -> Void)?
    /// The function's MSI-X capability, if it has one (it sees writes to its Message Control).
    public internal(set) var msix: PCIMSIX?
    /// The buses BARs are mapped on; set when the function is plugged into a host bridge.
    weak var pioBus: Bus?
    weak var mmioBus: Bus?
    private var lastCapability = 0
    private var nextCapabilityOffset = 0x40
    private var resetImage: PCIConfigSpace?

    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, interruptPin: UInt8 = 0) {
        config = PCIConfigSpace()
        config.set(PCIConfig.vendorID, length: 2, UInt64(vendorID))
        config.set(PCIConfig.deviceID, length: 2, UInt64(deviceID))
        config.set(PCIConfig.revisionID, length: 1, UInt64(revision))
        config.set(PCIConfig.classProg, length: 3, UInt64(classCode & 0xFF_FFFF))
        config.set(PCIConfig.subsystemVendorID, length: 2, UInt64(subsystemVendorID))
        config.set(PCIConfig.subsystemID, length: 2, UInt64(subsystemID))
        config.set(PCIConfig.interruptPin, length: 1, UInt64(interruptPin))
        let commandMask = PCIConfig.commandIO | PCIConfig.commandMemory | PCIConfig.commandBusMaster | PCIConfig.commandINTxDisable
        config.setWritable(PCIConfig.command, length: 2, mask: UInt64(commandMask))
        config.setWritable(PCIConfig.cacheLineSize, length: 2, mask: 0xFFFF)
        config.setWritable(PCIConfig.interruptLine, length: 1, mask: 0xFF)
    }

    public var command: UInt16 { config.u16(PCIConfig.command) }
    public var busMasterEnabled: Bool { command & PCIConfig.commandBusMaster != 0 }

    /// Declares BAR `index` (the device's layout is fixed before it is plugged).
    public func setBar(_ index: Int, _ bar: PCIBar) {
        precondition(index >= 0 && index < PCIConfig.barCount && (bar.kind != .memory64 || index < PCIConfig.barCount - 1))
        bars[index] = bar
        let offset = PCIConfig.bar0 + 4 * index
        switch bar.kind {
        case .io:
            config.set(offset, length: 4, 1)
            config.setWritable(offset, length: 4, mask: UInt64(UInt32(truncatingIfNeeded: ~(bar.size - 1))) & 0xFFFF_FFFC)
        case .memory32, .memory64:
            let flags: UInt64 = (bar.kind == .memory64 ? 0b100 : 0) | (bar.prefetchable ? 0b1000 : 0)
            config.set(offset, length: 4, flags)
            config.setWritable(offset, length: 4, mask: UInt64(UInt32(truncatingIfNeeded: ~(bar.size - 1))) & 0xFFFF_FFF0)
            if bar.kind == .memory64 {
                config.setWritable(offset + 4, length: 4, mask: UInt64(UInt32(truncatingIfNeeded: ~(bar.size - 1) >> 32)))
            }
        }
    }

    /// The address BAR `index` is programmed with (whether or not it decodes).
    public func barAddress(_ index: Int) -> UInt64? {
        guard index >= 0, index < PCIConfig.barCount, let bar = bars[index] else { return nil }
        let offset = PCIConfig.bar0 + 4 * index
        let low = UInt64(config.u32(offset))
        switch bar.kind {
        case .io: return low & ~3
        case .memory32: return low & ~0xF
        case .memory64: return (low & ~0xF) | UInt64(config.u32(offset + 4)) << 32
        }
    }

    /// Programs a BAR as firmware would (Keel has none).
    public func assignBar(_ index: Int, address: UInt64) {
        guard let bar = bars[index] else { return }
        let offset = PCIConfig.bar0 + 4 * index
        let low = UInt64(config.u32(offset)) & (bar.kind == .io ? 3 : 0xF)
        config.set(offset, length: 4, (address & 0xFFFF_FFFF & ~(bar.size - 1)) | low)
        if bar.kind == .memory64 { config.set(offset + 4, length: 4, address >> 32) }
        updateMappings()
    }

    /// Appends a capability with `body` (bytes after the ID and next pointer); returns its offset.
    /// `writableMask` (same length as body) marks the guest-writable bits.
    @discardableResult
    public func addCapability(id: UInt8, body: [UInt8], writableMask: [UInt8] = []) -> Int {
        let offset = nextCapabilityOffset
        let length = 2 + body.count
        precondition(offset + length <= PCIConfig.conventionalSize, "capabilities overflow the conventional config space")
        config.set(offset, length: 1, UInt64(id))
        for (i, b) in body.enumerated() {
            config.set(offset + 2 + i, length: 1, UInt64(b))
            if i < writableMask.count { config.setWritable(offset + 2 + i, length: 1, mask: UInt64(writableMask[i])) }
        }
        if lastCapability == 0 {
            config.set(PCIConfig.capabilitiesPointer, length: 1, UInt64(offset))
            config.set(PCIConfig.status, length: 2, UInt64(config.u16(PCIConfig.status) | PCIConfig.statusCapabilities))
        } else {
            config.set(lastCapability + 1, length: 1, UInt64(offset))
        }
        lastCapability = offset
        nextCapabilityOffset = (offset + length + 3) & ~3
        return offset
    }

    /// Call once the layout is complete: what a machine reset returns the header to.
    public func sealResetImage() { resetImage = config }

    public func configRead(offset: Int, length: Int) -> UInt64 {
        guard config.contains(offset, length: length) else { return ~0 }
        return config.read(offset, length: length)
    }

    public func configWrite(offset: Int, length: Int, value: UInt64) {
        guard config.contains(offset, length: length), length <= 8 else { return }
        config.guestWrite(offset, length: length, value)
        let end = offset + length
        let touchesCommand = offset < PCIConfig.command + 2 && end > PCIConfig.command
        let touchesBars = offset < PCIConfig.bar0 + 4 * PCIConfig.barCount && end > PCIConfig.bar0
        if touchesCommand || touchesBars { updateMappings() }
        if touchesCommand { intxLine?.setLevel(intxLevel && command & PCIConfig.commandINTxDisable == 0) }
        if let m = msix, m.covers(offset, length) { m.controlWritten() }
        if end > 0x40 && offset < PCIConfig.conventionalSize { capabilityWritten?(offset, length) }
    }

    /// Maps every BAR whose decode is enabled at its programmed address; unmaps the rest.
    /// A BAR the guest leaves overlapping something else, or at an impossible address, stays
    /// unmapped (the guest sees all-ones there) rather than failing the machine.
    public func updateMappings() {
        let cmd = command
        for i in 0..<PCIConfig.barCount {
            guard let bar = bars[i] else { continue }
            var want: UInt64? = nil
            if let a = barAddress(i), a != 0 {
                let decode = bar.kind == .io ? cmd & PCIConfig.commandIO != 0 : cmd & PCIConfig.commandMemory != 0
                let (end, o) = a.addingReportingOverflow(bar.size)
                let limit: UInt64 = bar.kind == .io ? 0x1_0000 : 1 << 52
                if decode, !o, end <= limit { want = a }
            }
            guard want != mappedAddresses[i] else { continue }
            let bus = bar.kind == .io ? pioBus : mmioBus
            if let old = mappedAddresses[i] { bus?.remove(base: old) }
            mappedAddresses[i] = nil
            if let a = want, let bus, (try? bus.insert(bar.region, base: a, size: bar.size, name: bar.name)) != nil {
                mappedAddresses[i] = a
            }
            barMoved?(i, mappedAddresses[i])
        }
    }

    /// The INTx line the board wired this function's interrupt pin to (the DSDT's _PRT says which).
    public var intxLine: InterruptLine?
    private var intxLevel = false

    /// Drives the legacy interrupt: Interrupt Status follows the device; the line only while
    /// Interrupt Disable is clear.
    public func setINTx(_ asserted: Bool) {
        intxLevel = asserted
        var status = config.u16(PCIConfig.status)
        status = asserted ? status | PCIConfig.statusINTx : status & ~PCIConfig.statusINTx
        config.set(PCIConfig.status, length: 2, UInt64(status))
        intxLine?.setLevel(asserted && command & PCIConfig.commandINTxDisable == 0)
    }

    /// Machine reset: the header as the device built it, nothing decoded.
    public func reset() {
        if let image = resetImage { config = image }
        updateMappings()
        if intxLevel { intxLevel = false; intxLine?.setLevel(false) }
    }

    /// Unmaps everything (the function is unplugged or the machine torn down).
    func unmapAll() {
        let saved = config
        config.set(PCIConfig.command, length: 2, 0)
        updateMappings()
        config = saved
    }
}
