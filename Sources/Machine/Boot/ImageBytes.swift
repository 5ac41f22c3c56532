import Memory

/// Bounds-checked little-endian reads from a host file image. Every offset that comes out of the
/// image itself is untrusted: these return nil instead of trapping when it points outside.
extension Array where Element == UInt8 {
    @inline(__always)
    func le<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, at offset: UInt64) -> T? {
        let width = UInt64(MemoryLayout<T>.size)
        guard offset <= UInt64(count), width <= UInt64(count) - offset else { return nil }
        var v: T = 0
        let base = Int(offset)
        for i in 0..<MemoryLayout<T>.size { v |= T(self[base + i]) << (8 * i) }
        return v
    }

    /// The bytes in [offset, offset + length), or nil if that is not inside the image.
    func bytes(at offset: UInt64, length: UInt64) -> ArraySlice<UInt8>? {
        guard offset <= UInt64(count), length <= UInt64(count) - offset else { return nil }
        return self[Int(offset)..<Int(offset + length)]
    }

    /// Stores at Keel's own (constant, in-range) offsets while building a table.
    @inline(__always)
    mutating func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }
}


/// Writes into guest RAM, turning an out-of-range write into a BootError about `subject`.
struct GuestMemoryWriter {
    let memory: GuestMemory
    let subject: String

    func write<C: Collection>(_ bytes: C, at address: UInt64, what: String) throws where C.Element == UInt8 {
        let data = Array(bytes)
        do {
            try memory.write(data, at: address)
        } catch {
            throw BootError(.placement, subject,
                            "\(what) [\(hex(address)), +\(data.count)) is outside guest RAM")
        }
    }

    func zero(at address: UInt64, length: UInt64, what: String) throws {
        guard length > 0 else { return }
        guard length <= UInt64(Int.max), let dst = try? memory.slice(at: address, length: Int(length)) else {
            throw BootError(.placement, subject, "\(what) [\(hex(address)), +\(length)) is outside guest RAM")
        }
        dst.initializeMemory(as: UInt8.self, repeating: 0)
    }
}
