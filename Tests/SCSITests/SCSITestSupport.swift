import Block
@testable import SCSI
import XCTest

/// An in-memory disk that counts flushes and records discards.
final class MemoryDisk: BlockDevice, @unchecked Sendable {
    var bytes: [UInt8]
    let isReadOnly: Bool
    var flushes = 0
    var discards: [(UInt64, UInt64)] = []
    var failNext: BlockError.Kind?
    init(size: Int, readOnly: Bool = false) {
        bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        isReadOnly = readOnly
    }
    var size: UInt64 { UInt64(bytes.count) }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        if let k = failNext { failNext = nil; throw BlockError(k, "injected") }
        try checkRange(offset: offset, length: UInt64(buffer.count))
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        if let k = failNext { failNext = nil; throw BlockError(k, "injected") }
        try checkRange(offset: offset, length: UInt64(data.count))
        bytes.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
    }
    func flush() throws(BlockError) { flushes += 1 }
    func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        try checkRange(offset: offset, length: length)
        discards.append((offset, length))
    }
    func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {
        try checkRange(offset: offset, length: length)
        for i in Int(offset)..<Int(offset + length) { bytes[i] = 0 }
    }
    func close() {}
}

/// Runs one CDB against a LUN or target with host buffers.
struct Exchange {
    var result: SCSIResult
    var dataIn: [UInt8]
    var senseKey: UInt8? { result.sense.count >= 18 ? result.sense[2] : nil }
    var asc: UInt8? { result.sense.count >= 18 ? result.sense[12] : nil }
    var ascq: UInt8? { result.sense.count >= 18 ? result.sense[13] : nil }
    var data: [UInt8] { Array(dataIn.prefix(result.dataInLength)) }
}

func exchange(_ execute: (SCSIBuffers) -> SCSIResult, dataOut: [UInt8] = [], dataInCapacity: Int = 4096, split: Int? = nil) -> Exchange {
    var inBuf = [UInt8](repeating: 0xEE, count: dataInCapacity)
    let result: SCSIResult = dataOut.withUnsafeBytes { out in
        inBuf.withUnsafeMutableBytes { inp in
            // `split` cuts both buffers in two windows, as a guest's scatter-gather list would.
            func cut<T>(_ count: Int, _ make: (Int, Int) -> T) -> [T] {
                guard let s = split, s < count else { return [make(0, count)] }
                return [make(0, s), make(s, count)]
            }
            let o = cut(out.count) { UnsafeRawBufferPointer(rebasing: out[$0..<$1]) }
            let i = cut(inp.count) { UnsafeMutableRawBufferPointer(rebasing: inp[$0..<$1]) }
            return execute(SCSIBuffers(dataOut: o, dataIn: i))
        }
    }
    return Exchange(result: result, dataIn: inBuf)
}

func cdb(_ bytes: [UInt8]) -> [UInt8] { bytes + [UInt8](repeating: 0, count: max(0, 32 - bytes.count)) }

func be(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64(n - 1 - $0))) } }
