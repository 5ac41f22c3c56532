/// A device reached by trapped emulation: state plus byte-level register access, as rust-vmm's
/// vm-superio devices. `offset` is relative to the start of the range the device was added at;
/// `data` holds the access width (1, 2, 4 or 8 bytes), little-endian. The device never learns
/// which thread calls it: the caller holds the big lock (or owns the device).
public protocol BusDevice: AnyObject {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

public enum BusError: Error, Equatable, CustomStringConvertible {
    case overlap(base: UInt64, size: UInt64, existing: String)
    case emptyRange(base: UInt64)

    public var description: String {
        switch self {
        case .overlap(let b, let s, let e):
            return "bus range [0x\(String(b, radix: 16)), +0x\(String(s, radix: 16))) overlaps \(e)"
        case .emptyRange(let b): return "bus range at 0x\(String(b, radix: 16)) is empty"
        }
    }
}

/// An address space (PIO or MMIO) of non-overlapping ranges, each owned by one device.
/// Dispatch is a binary search over the range bases, kept in their own array (with the limits
/// and devices beside it) so an access touches no strings and copies no structs.
public final class Bus: @unchecked Sendable {
    public struct Range {
        public let base: UInt64
        public let size: UInt64
        public let name: String
        public let device: BusDevice
    }

    public let name: String
    public private(set) var ranges: [Range] = []
    private var bases: [UInt64] = []
    /// The last address of each range (inclusive, so a range may end at 2^64 - 1).
    private var lasts: [UInt64] = []
    private var devices: [BusDevice] = []

    public init(name: String) { self.name = name }

    public func insert(_ device: BusDevice, base: UInt64, size: UInt64, name: String) throws {
        guard size > 0 else { throw BusError.emptyRange(base: base) }
        let (last, o) = base.addingReportingOverflow(size - 1)
        precondition(!o, "bus range at 0x\(String(base, radix: 16)) wraps around the address space")
        for r in ranges where base <= r.base + (r.size - 1) && r.base <= last {
            throw BusError.overlap(base: base, size: size, existing: "\(r.name) at 0x\(String(r.base, radix: 16))")
        }
        let i = ranges.firstIndex { $0.base > base } ?? ranges.endIndex
        ranges.insert(Range(base: base, size: size, name: name, device: device), at: i)
        rebuildIndex()
    }

    public func remove(base: UInt64) {
        ranges.removeAll { $0.base == base }
        rebuildIndex()
    }

    private func rebuildIndex() {
        bases = ranges.map(\.base)
        lasts = ranges.map { $0.base + ($0.size - 1) }
        devices = ranges.map(\.device)
    }

    @inline(__always)
    func lookup(_ address: UInt64) -> Int? {
        bases.withUnsafeBufferPointer { b in
            var lo = 0, hi = b.count
            while lo < hi {
                let mid = (lo + hi) >> 1
                if b[mid] <= address { lo = mid + 1 } else { hi = mid }
            }
            guard lo > 0, address <= lasts[lo - 1] else { return nil }
            return lo - 1
        }
    }

    /// Dispatches a read; an access no device claims reads as all ones, as on a PC. Returns
    /// whether a device claimed the address.
    @discardableResult
    public func read(_ address: UInt64, data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let i = lookup(address) else {
            for k in 0..<data.count { data[k] = 0xff }
            return false
        }
        devices[i].read(offset: address &- bases[i], data: data)
        return true
    }

    /// Dispatches a write; writes nobody claims are dropped.
    @discardableResult
    public func write(_ address: UInt64, data: UnsafeRawBufferPointer) -> Bool {
        guard let i = lookup(address) else { return false }
        devices[i].write(offset: address &- bases[i], data: data)
        return true
    }
}

/// Little-endian helpers for devices whose registers are wider than a byte.
extension UnsafeRawBufferPointer {
    @inline(__always) public var littleEndianValue: UInt64 {
        var v: UInt64 = 0
        for i in 0..<Swift.min(count, 8) { v |= UInt64(self[i]) << (8 * UInt64(i)) }
        return v
    }
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always) public func storeLittleEndian(_ value: UInt64) {
        for i in 0..<Swift.min(count, 8) { self[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}

/// A level-triggered interrupt line from a device to the machine's interrupt controller.
/// ISA devices assert it while they have an interrupt pending, as QEMU's qemu_set_irq.
public protocol InterruptLine: AnyObject {
    func setLevel(_ asserted: Bool)
}

/// A line connected to nothing (e.g. a device built in a unit test).
public final class DisconnectedInterruptLine: InterruptLine {
    public init() {}
    public func setLevel(_ asserted: Bool) {}
}
