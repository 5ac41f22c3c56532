/// QEMU's `pc-testdev` (hw/misc/pc-testdev.c), so one test guest runs unchanged under QEMU and
/// Keel. Its pieces are separate bus devices at QEMU's fixed addresses; `attach(pio:mmio:)`
/// inserts them all.
///
///     I/O 0xE0, 4 bytes    ioport: a 32-bit readback register; an access of width w at offset o
///                          reads/writes bits [8*o, 8*(o+w)) (bits past 32 are dropped / read 0)
///     I/O 0xE4, 4 bytes    flush-page: QEMU re-maps the written guest page to flush TLBs;
///                          Keel accepts and ignores the write (guest memory is never remapped)
///     I/O 0xE8, 4 bytes    ioport-byte: the same register through byte-wide accesses
///     I/O 0x2000, 24 bytes irq-line: a 1-byte write of v to 0x2000+n sets ISA IRQ n's level to
///                          v != 0, through `setIRQ` if given (ignored otherwise)
///     MMIO 0xFF000000, 64 KiB  iomem: a readback buffer; width w at offset o reads/writes bytes
///                          [o, o+w) (bytes past the end are dropped / read 0)
public final class PCTestDevice {
    public static let ioportAddress: UInt64 = 0xE0
    public static let ioportSize: UInt64 = 4
    public static let flushPageAddress: UInt64 = 0xE4
    public static let flushPageSize: UInt64 = 4
    public static let ioportByteAddress: UInt64 = 0xE8
    public static let ioportByteSize: UInt64 = 4
    public static let irqLineAddress: UInt64 = 0x2000
    public static let irqLineCount: UInt64 = 24
    public static let iomemAddress: UInt64 = 0xFF00_0000
    public static let iomemSize: UInt64 = 0x1_0000

    /// The readback register shared by the `ioport` and `ioportByte` windows.
    public var ioportData: UInt32 = 0
    fileprivate var iomemBuffer = [UInt8](repeating: 0, count: Int(PCTestDevice.iomemSize))
    fileprivate let setIRQ: ((Int, Bool) -> Void)?

    public init(setIRQ: ((_ irq: Int, _ asserted: Bool) -> Void)? = nil) {
        self.setIRQ = setIRQ
    }

    public var ioport: BusDevice { RegisterWindow(self) }
    public var ioportByte: BusDevice { RegisterWindow(self) }
    public var flushPage: BusDevice { FlushPage() }
    public var irqLines: BusDevice { IRQLines(self) }
    public var iomem: BusDevice { IOMem(self) }

    /// Inserts every piece at QEMU's address.
    public func attach(pio: Bus, mmio: Bus) throws {
        try pio.insert(ioport, base: Self.ioportAddress, size: Self.ioportSize, name: "pc-testdev-ioport")
        try pio.insert(flushPage, base: Self.flushPageAddress, size: Self.flushPageSize, name: "pc-testdev-flush-page")
        try pio.insert(ioportByte, base: Self.ioportByteAddress, size: Self.ioportByteSize, name: "pc-testdev-ioport-byte")
        try pio.insert(irqLines, base: Self.irqLineAddress, size: Self.irqLineCount, name: "pc-testdev-irq-line")
        try mmio.insert(iomem, base: Self.iomemAddress, size: Self.iomemSize, name: "pc-testdev-iomem")
    }

    /// Bytes [o, o+w) of the little-endian register; lanes past byte 3 read 0.
    fileprivate func readRegister(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let (lane, overflow) = (offset & 3).addingReportingOverflow(UInt64(i))
            data[i] = (!overflow && lane < 4) ? UInt8(truncatingIfNeeded: ioportData >> (8 * UInt32(lane))) : 0
        }
    }

    fileprivate func writeRegister(offset: UInt64, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let (lane, overflow) = (offset & 3).addingReportingOverflow(UInt64(i))
            guard !overflow, lane < 4 else { break }
            let shift = 8 * UInt32(lane)
            ioportData = (ioportData & ~(0xFF << shift)) | UInt32(data[i]) << shift
        }
    }
}

private final class RegisterWindow: BusDevice {
    let device: PCTestDevice
    init(_ d: PCTestDevice) { device = d }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { device.readRegister(offset: offset, data: data) }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) { device.writeRegister(offset: offset, data: data) }
}

private final class FlushPage: BusDevice {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0xFF } // write-only in QEMU
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
}

private final class IRQLines: BusDevice {
    let device: PCTestDevice
    init(_ d: PCTestDevice) { device = d }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0xFF } // write-only in QEMU
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        // QEMU accepts only byte writes here.
        guard data.count == 1, offset < PCTestDevice.irqLineCount else { return }
        device.setIRQ?(Int(offset), data[0] != 0)
    }
}

private final class IOMem: BusDevice {
    let device: PCTestDevice
    init(_ d: PCTestDevice) { device = d }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            data[i] = (!overflow && o < PCTestDevice.iomemSize) ? device.iomemBuffer[Int(o)] : 0
        }
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let (o, overflow) = offset.addingReportingOverflow(UInt64(i))
            guard !overflow, o < PCTestDevice.iomemSize else { return }
            device.iomemBuffer[Int(o)] = data[i]
        }
    }
}
