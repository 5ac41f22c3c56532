import Memory

/// Why a virtqueue could not be used. Each is the guest breaking the virtio 1.2 §2.7 rules; the
/// transport answers with NEEDS_RESET (§2.1.2) and stops processing that device's queues.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    case ringNotInRAM(UInt64)
    case misalignedRing(UInt64)
    case availIndexJumped(from: UInt16, to: UInt16)
    case headOutOfRange(UInt16)
    case descriptorOutOfRange(UInt16)
    case chainTooLong
    case nestedIndirect
    case indirectWithNext
    case badIndirectLength(UInt32)
    case indirectNotNegotiated
    case bufferNotInRAM(address: UInt64, length: UInt32)
    case readableAfterWritable

    public var description: String {
        switch self {
        case .ringNotInRAM(let a): return "virtqueue ring at 0x\(String(a, radix: 16)) is not in RAM"
        case .misalignedRing(let a): return "virtqueue ring at 0x\(String(a, radix: 16)) is misaligned"
        case .availIndexJumped(let f, let t): return "driver moved the available index from \(f) to \(t)"
        case .headOutOfRange(let h): return "chain head \(h) is past the queue size"
        case .descriptorOutOfRange(let d): return "descriptor index \(d) is past the table"
        case .chainTooLong: return "descriptor chain is longer than its table (a loop)"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .indirectWithNext: return "indirect descriptor with the NEXT flag"
        case .badIndirectLength(let l): return "indirect table of \(l) bytes"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case .bufferNotInRAM(let a, let l): return "buffer [0x\(String(a, radix: 16)), +\(l)) is not in RAM"
        case .readableAfterWritable: return "device-readable descriptor after a device-writable one"
        }
    }
}

/// One buffer of a chain, already checked to lie inside guest RAM.
public struct VirtqueueBuffer: Equatable, Sendable {
    public let address: UInt64
    public let length: UInt32
    public let isDeviceWritable: Bool
}

/// A request: the head index (what goes back in the used ring) and its buffers in order,
/// device-readable ones first.
public struct DescriptorChain: Sendable {
    public let head: UInt16
    public let buffers: [VirtqueueBuffer]

    public var readableLength: UInt64 { buffers.reduce(0) { $0 + ($1.isDeviceWritable ? 0 : UInt64($1.length)) } }
    public var writableLength: UInt64 { buffers.reduce(0) { $0 + ($1.isDeviceWritable ? UInt64($1.length) : 0) } }
    public var readable: ArraySlice<VirtqueueBuffer> { buffers.prefix { !$0.isDeviceWritable } }
    public var writable: ArraySlice<VirtqueueBuffer> { buffers.drop { !$0.isDeviceWritable } }
}

/// A position in the readable (or writable) part of a chain, for copying structured data
/// across however the driver chose to split it into buffers.
public struct ChainCursor {
    let memory: GuestMemory
    let buffers: ArraySlice<VirtqueueBuffer>
    var index: Int
    var offset: UInt32 = 0

    public init(memory: GuestMemory, buffers: ArraySlice<VirtqueueBuffer>) {
        self.memory = memory
        self.buffers = buffers
        index = buffers.startIndex
    }

    /// Bytes left from here to the end.
    public var remaining: UInt64 {
        guard index < buffers.endIndex else { return 0 }
        var n = UInt64(buffers[index].length - offset)
        for b in buffers[(index + 1)...] { n += UInt64(b.length) }
        return n
    }

    /// Copies out `count` bytes; nil if the chain ends first.
    public mutating func read(_ count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            guard index < buffers.endIndex else { return nil }
            let b = buffers[index]
            let n = min(UInt32(count - out.count), b.length - offset)
            if n > 0, let p = memory.hostPointer(b.address + UInt64(offset), length: UInt64(n)) {
                out.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(n)))
            }
            advance(n)
        }
        return out
    }

    /// Copies `bytes` in; returns how many fit.
    @discardableResult
    public mutating func write(_ bytes: [UInt8]) -> Int {
        var done = 0
        while done < bytes.count, index < buffers.endIndex {
            let b = buffers[index]
            let n = min(UInt32(bytes.count - done), b.length - offset)
            if n > 0, let p = memory.hostPointer(b.address + UInt64(offset), length: UInt64(n)) {
                bytes[done..<done + Int(n)].withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: Int(n)) }
            }
            done += Int(n)
            advance(n)
        }
        return done
    }

    /// Host windows for the next `count` bytes (for I/O straight into guest memory); nil if short.
    public mutating func segments(_ count: UInt64) -> [UnsafeMutableRawBufferPointer]? {
        var out: [UnsafeMutableRawBufferPointer] = []
        var left = count
        while left > 0 {
            guard index < buffers.endIndex else { return nil }
            let b = buffers[index]
            let n = UInt32(min(left, UInt64(b.length - offset)))
            if n > 0 {
                guard let p = memory.hostPointer(b.address + UInt64(offset), length: UInt64(n)) else { return nil }
                out.append(UnsafeMutableRawBufferPointer(start: p, count: Int(n)))
            }
            left -= UInt64(n)
            advance(n)
        }
        return out
    }

    private mutating func advance(_ n: UInt32) {
        offset += n
        while index < buffers.endIndex && offset >= buffers[index].length {
            offset = 0
            index += 1
        }
    }
}
