/// The data-out (initiator to target) and data-in (target to initiator) buffers of one command,
/// as host windows a transport has already checked (guest memory for virtio-scsi). A command
/// reads only the bytes its CDB asks for and never writes past `dataIn`'s total length.
public struct SCSIBuffers {
    public var dataOut: [UnsafeRawBufferPointer]
    public var dataIn: [UnsafeMutableRawBufferPointer]

    public init(dataOut: [UnsafeRawBufferPointer] = [], dataIn: [UnsafeMutableRawBufferPointer] = []) {
        self.dataOut = dataOut; self.dataIn = dataIn
    }

    public var dataOutLength: UInt64 { dataOut.reduce(0) { $0 + UInt64($1.count) } }
    public var dataInLength: UInt64 { dataIn.reduce(0) { $0 + UInt64($1.count) } }

    /// Copies `bytes` into the data-in buffers, at most `limit` of them (an allocation length);
    /// returns how many were placed.
    public func putDataIn(_ bytes: [UInt8], limit: Int) -> Int {
        var left = min(bytes.count, max(0, limit))
        var from = 0
        for seg in dataIn where left > 0 {
            let n = min(left, seg.count)
            guard n > 0, let dst = seg.baseAddress else { continue }
            bytes.withUnsafeBytes { src in
                if let s = src.baseAddress { dst.copyMemory(from: s + from, byteCount: n) }
            }
            from += n
            left -= n
        }
        return from
    }

    /// The first `count` bytes of the data-out buffers (a parameter list), or nil if shorter.
    public func dataOutBytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, UInt64(count) <= dataOutLength else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for seg in dataOut where out.count < count {
            out.append(contentsOf: seg.prefix(count - out.count))
        }
        return out
    }

    /// The data-out windows cut to exactly `count` bytes (nil if shorter).
    func dataOutPrefix(_ count: UInt64) -> [UnsafeRawBufferPointer]? {
        guard count <= dataOutLength else { return nil }
        var out: [UnsafeRawBufferPointer] = []
        var left = count
        for seg in dataOut where left > 0 {
            let n = Int(min(left, UInt64(seg.count)))
            out.append(UnsafeRawBufferPointer(rebasing: seg[0..<n]))
            left -= UInt64(n)
        }
        return out
    }

    /// The data-in windows cut to exactly `count` bytes (nil if shorter).
    func dataInPrefix(_ count: UInt64) -> [UnsafeMutableRawBufferPointer]? {
        guard count <= dataInLength else { return nil }
        var out: [UnsafeMutableRawBufferPointer] = []
        var left = count
        for seg in dataIn where left > 0 {
            let n = Int(min(left, UInt64(seg.count)))
            out.append(UnsafeMutableRawBufferPointer(rebasing: seg[0..<n]))
            left -= UInt64(n)
        }
        return out
    }
}

/// Big-endian fields of a CDB or parameter list; indices past the end read as zero, so a short
/// CDB from the guest can never trap (the caller checks the length it needs first anyway).
struct BigEndianBytes {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    subscript(_ i: Int) -> UInt8 { i >= 0 && i < bytes.count ? bytes[i] : 0 }
    func u16(_ o: Int) -> UInt16 { UInt16(self[o]) << 8 | UInt16(self[o + 1]) }
    func u24(_ o: Int) -> UInt32 { UInt32(self[o]) << 16 | UInt32(self[o + 1]) << 8 | UInt32(self[o + 2]) }
    func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) << 16 | UInt32(u16(o + 2)) }
    func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) << 32 | UInt64(u32(o + 4)) }
}

extension Array where Element == UInt8 {
    mutating func putBE(_ value: UInt64, at offset: Int, bytes: Int) {
        for i in 0..<bytes where offset + i < count {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(bytes - 1 - i)))
        }
    }
}
