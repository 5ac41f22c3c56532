/// Offsets and bits of the type 0 configuration header (PCI Local Bus 3.0 §6.1, §6.2).
public enum PCIConfig {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revisionID = 0x08
    public static let classProg = 0x09
    public static let classDevice = 0x0A
    public static let cacheLineSize = 0x0C
    public static let latencyTimer = 0x0D
    public static let headerType = 0x0E
    public static let bar0 = 0x10
    public static let subsystemVendorID = 0x2C
    public static let subsystemID = 0x2E
    public static let expansionROM = 0x30
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3C
    public static let interruptPin = 0x3D

    public static let commandIO: UInt16 = 1 << 0
    public static let commandMemory: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2
    public static let commandINTxDisable: UInt16 = 1 << 10
    public static let statusINTx: UInt16 = 1 << 3
    public static let statusCapabilities: UInt16 = 1 << 4

    public static let capabilityMSIX: UInt8 = 0x11
    public static let capabilityVendor: UInt8 = 0x09

    /// Conventional configuration space; PCIe's extended space (ECAM only) runs to 4 KiB.
    public static let conventionalSize = 256
    public static let extendedSize = 4096
    public static let barCount = 6
}

/// A function's configuration space: bytes with a per-byte mask of guest-writable bits and of
/// write-one-to-clear bits, as QEMU's config/wmask/w1cmask. Accesses are bounds-checked.
public struct PCIConfigSpace {
    public private(set) var bytes: [UInt8]
    var writable: [UInt8]
    var writeOneToClear: [UInt8]

    public init(size: Int = PCIConfig.extendedSize) {
        bytes = [UInt8](repeating: 0, count: size)
        writable = bytes
        writeOneToClear = bytes
    }

    public var size: Int { bytes.count }

    /// Whether [offset, offset + length) lies inside the space (offset and length are guest-made).
    @inline(__always)
    public func contains(_ offset: Int, length: Int) -> Bool {
        offset >= 0 && length >= 0 && offset <= bytes.count && length <= bytes.count - offset
    }

    public func read(_ offset: Int, length: Int) -> UInt64 {
        guard contains(offset, length: length), length <= 8 else { return 0 }
        var v: UInt64 = 0
        for i in 0..<length { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    public func u8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read(offset, length: 1)) }
    public func u16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read(offset, length: 2)) }
    public func u32(_ offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: read(offset, length: 4)) }

    /// Sets bytes as the device (not the guest) sees fit: no masks apply.
    public mutating func set(_ offset: Int, length: Int, _ value: UInt64) {
        guard contains(offset, length: length) else { return }
        for i in 0..<min(length, 8) { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    public mutating func setWritable(_ offset: Int, length: Int, mask: UInt64) {
        guard contains(offset, length: length) else { return }
        for i in 0..<min(length, 8) { writable[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt64(i))) }
    }

    public mutating func setWriteOneToClear(_ offset: Int, length: Int, mask: UInt64) {
        guard contains(offset, length: length) else { return }
        for i in 0..<min(length, 8) { writeOneToClear[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt64(i))) }
    }

    /// A guest write: only writable bits change; write-one-to-clear bits clear where a 1 is written.
    public mutating func guestWrite(_ offset: Int, length: Int, _ value: UInt64) {
        guard contains(offset, length: length), length <= 8 else { return }
        for i in 0..<length {
            let b = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
            let o = offset + i
            let w = writable[o], c = writeOneToClear[o]
            bytes[o] = (bytes[o] & ~w) | (b & w)
            bytes[o] &= ~(b & c)
        }
    }
}
