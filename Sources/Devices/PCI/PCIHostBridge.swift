/// PCI bus 0 of Keel's PC: a host bridge at 00:00.0 (the identity of Q35's MCH) and up to 31
/// more single-function devices, reached through configuration mechanism #1 (0xCF8/0xCFC) and
/// ECAM (PCIe §7.2.2: bus << 20 | device << 15 | function << 12 | register).
public final class PCIHostBridge: PCIDevice {
    public static let configAddressPort: UInt64 = 0xCF8
    public static let configDataPort: UInt64 = 0xCFC
    public static let slotCount = 32

    public let pci: PCIFunction
    let pioBus: Bus
    let mmioBus: Bus
    private(set) public var slots: [PCIDevice?] = Array(repeating: nil, count: PCIHostBridge.slotCount)
    /// The latched CONFIG_ADDRESS (mechanism #1).
    var configAddress: UInt32 = 0

    public init(pio: Bus, mmio: Bus) {
        pioBus = pio
        mmioBus = mmio
        // 8086:29C0, class 06/00/00 (host bridge), as QEMU's Q35 MCH.
        pci = PCIFunction(vendorID: 0x8086, deviceID: 0x29C0, classCode: 0x06_0000)
        pci.sealResetImage()
        slots[0] = self
    }

    public func pciReset() {}

    /// Inserts CONFIG_ADDRESS and CONFIG_DATA (0xCFC, 4 bytes) on the PIO bus and the ECAM window
    /// on the MMIO bus. CONFIG_ADDRESS only answers dword accesses, which start at 0xCF8, so it
    /// claims that one port and leaves 0xCF9 (the reset control register) and 0xCFA-0xCFB to others.
    public func attach(ecamBase: UInt64, busCount: Int) throws {
        try pioBus.insert(ConfigAddressRegister(self), base: Self.configAddressPort, size: 1, name: "pci-config-address")
        try pioBus.insert(ConfigDataRegister(self), base: Self.configDataPort, size: 4, name: "pci-config-data")
        try mmioBus.insert(ECAMWindow(self), base: ecamBase, size: UInt64(busCount) << 20, name: "pci-ecam")
    }

    /// Plugs `device` at `slot` (or the first free one); returns the slot.
    @discardableResult
    public func plug(_ device: PCIDevice, slot: Int? = nil) throws -> Int {
        let s: Int
        if let slot {
            guard slot > 0, slot < Self.slotCount, slots[slot] == nil else { throw PCIError.slotTaken(slot) }
            s = slot
        } else {
            guard let free = slots.indices.first(where: { slots[$0] == nil }) else { throw PCIError.busFull }
            s = free
        }
        slots[s] = device
        device.pci.pioBus = pioBus
        device.pci.mmioBus = mmioBus
        if device !== self { device.pci.sealResetImage() }
        return s
    }

    func function(bus: Int, device: Int, function: Int) -> PCIFunction? {
        guard bus == 0, function == 0, device >= 0, device < Self.slotCount else { return nil }
        return slots[device]?.pci
    }

    /// A configuration read; absent functions read as all ones (the vendor ID 0xFFFF says so).
    public func configRead(bus: Int, device: Int, function fn: Int, offset: Int, length: Int) -> UInt64 {
        guard let f = function(bus: bus, device: device, function: fn) else { return ~0 }
        return f.configRead(offset: offset, length: length)
    }

    public func configWrite(bus: Int, device: Int, function fn: Int, offset: Int, length: Int, value: UInt64) {
        function(bus: bus, device: device, function: fn)?.configWrite(offset: offset, length: length, value: value)
    }

    /// Gives every BAR an address and turns decoding on, as firmware would (Keel boots without
    /// any): I/O BARs from `io`, 32-bit memory BARs from `memory32`, 64-bit ones from `memory64`
    /// (or `memory32` when that window is empty), each naturally aligned, largest first.
    public func assignResources(io: Range<UInt64>, memory32: Range<UInt64>, memory64: Range<UInt64>) throws {
        var ioNext = io.lowerBound, m32Next = memory32.lowerBound, m64Next = memory64.lowerBound
        var wanted: [(PCIFunction, Int, PCIBar)] = []
        for case let d? in slots {
            for (i, b) in d.pci.bars.enumerated() { if let b { wanted.append((d.pci, i, b)) } }
        }
        wanted.sort { $0.2.size > $1.2.size }
        func take(_ cursor: inout UInt64, _ window: Range<UInt64>, _ size: UInt64, _ name: String) throws -> UInt64 {
            let (bumped, o1) = cursor.addingReportingOverflow(size - 1)
            let start = bumped & ~(size - 1)
            let (end, o2) = start.addingReportingOverflow(size)
            guard !o1, !o2, end <= window.upperBound else { throw PCIError.noSpace(name) }
            cursor = end
            return start
        }
        for (f, i, b) in wanted {
            let address: UInt64
            switch b.kind {
            case .io: address = try take(&ioNext, io, b.size, b.name)
            case .memory32: address = try take(&m32Next, memory32, b.size, b.name)
            case .memory64:
                address = memory64.isEmpty ? try take(&m32Next, memory32, b.size, b.name) : try take(&m64Next, memory64, b.size, b.name)
            }
            f.assignBar(i, address: address)
        }
        for case let d? in slots where d !== self {
            let hasIO = d.pci.bars.contains { $0?.kind == .io }
            let hasMemory = d.pci.bars.contains { $0 != nil && $0?.kind != .io }
            var cmd = d.pci.command | PCIConfig.commandBusMaster
            if hasIO { cmd |= PCIConfig.commandIO }
            if hasMemory { cmd |= PCIConfig.commandMemory }
            d.pci.configWrite(offset: PCIConfig.command, length: 2, value: UInt64(cmd))
        }
    }

    /// Machine reset: every header back to its power-on image (BARs unassigned, decode off).
    public func reset() {
        configAddress = 0
        for case let d? in slots {
            d.pci.reset()
            if d !== self { d.pciReset() }
        }
    }
}

public enum PCIError: Error, CustomStringConvertible {
    case slotTaken(Int)
    case busFull
    case noSpace(String)

    public var description: String {
        switch self {
        case .slotTaken(let s): return "PCI slot \(s) is taken or not a valid slot (1-31)"
        case .busFull: return "PCI bus 0 has no free slot (at most 31 devices)"
        case .noSpace(let n): return "PCI: no room for BAR \(n) in the PCI hole"
        }
    }
}

/// CONFIG_ADDRESS: enable (bit 31), bus (23-16), device (15-11), function (10-8), register (7-2).
/// Only dword accesses reach it, as on a PC (byte accesses to 0xCF8-0xCFB belong to others).
final class ConfigAddressRegister: BusDevice {
    unowned let bridge: PCIHostBridge
    init(_ bridge: PCIHostBridge) { self.bridge = bridge }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(offset == 0 && data.count == 4 ? UInt64(bridge.configAddress) : ~0)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 4 else { return }
        bridge.configAddress = UInt32(truncatingIfNeeded: data.littleEndianValue) & 0x80FF_FFFC
    }
}

/// CONFIG_DATA: the register CONFIG_ADDRESS selects, any width at 0xCFC-0xCFF.
final class ConfigDataRegister: BusDevice {
    unowned let bridge: PCIHostBridge
    init(_ bridge: PCIHostBridge) { self.bridge = bridge }

    private func target(_ offset: UInt64, _ length: Int) -> (Int, Int, Int, Int)? {
        let a = bridge.configAddress
        guard a & 0x8000_0000 != 0, offset < 4, Int(offset) + length <= 4 else { return nil }
        return (Int(a >> 16 & 0xFF), Int(a >> 11 & 0x1F), Int(a >> 8 & 7), Int(a & 0xFC) + Int(offset))
    }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard let (b, d, f, r) = target(offset, data.count) else { data.storeLittleEndian(~0); return }
        data.storeLittleEndian(bridge.configRead(bus: b, device: d, function: f, offset: r, length: data.count))
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let (b, d, f, r) = target(offset, data.count) else { return }
        bridge.configWrite(bus: b, device: d, function: f, offset: r, length: data.count, value: data.littleEndianValue)
    }
}

/// The ECAM window: 1 MiB per bus, 4 KiB per function.
final class ECAMWindow: BusDevice {
    unowned let bridge: PCIHostBridge
    init(_ bridge: PCIHostBridge) { self.bridge = bridge }

    private func split(_ offset: UInt64, _ length: Int) -> (Int, Int, Int, Int)? {
        let register = Int(offset & 0xFFF)
        guard length <= 4, register + length <= 0x1000 else { return nil }
        return (Int(offset >> 20 & 0xFF), Int(offset >> 15 & 0x1F), Int(offset >> 12 & 7), register)
    }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard let (b, d, f, r) = split(offset, data.count) else { data.storeLittleEndian(~0); return }
        data.storeLittleEndian(bridge.configRead(bus: b, device: d, function: f, offset: r, length: data.count))
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard let (b, d, f, r) = split(offset, data.count) else { return }
        bridge.configWrite(bus: b, device: d, function: f, offset: r, length: data.count, value: data.littleEndianValue)
    }
}
