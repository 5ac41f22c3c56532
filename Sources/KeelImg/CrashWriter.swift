import Block
import Glibc

/// A deterministic stream of writes and zero-writes with periodic flushes, for the crash test
/// (`keel img x-crash-writer FILE SEED OPS FLUSH_EVERY`): after each completed flush it prints
/// "F <ops done>", so a test that kills it can replay the plan and know what must be on disk.
public enum CrashWriter {
    public static let blockSize = 4096

    public struct Op: Sendable, Equatable {
        public var id: UInt64          // 1-based; a block's first 8 bytes hold the id that wrote it
        public var zero: Bool
        public var block: Int
        public var count: Int
    }

    /// SplitMix64: the same sequence in the writer and in the test.
    public static func plan(seed: UInt64, ops: Int, blocks: Int) -> [Op] {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        var out: [Op] = []
        for i in 0..<ops {
            let count = Int(next() % 16) + 1
            let block = Int(next() % UInt64(max(1, blocks - count)))
            out.append(Op(id: UInt64(i + 1), zero: next() % 7 == 0, block: block, count: count))
        }
        return out
    }

    /// The content a write op puts in one block.
    public static func fill(_ p: UnsafeMutableRawBufferPointer, id: UInt64, block: Int) {
        memset(p.baseAddress!, Int32(truncatingIfNeeded: id &* 31 &+ UInt64(block)) & 0xff, p.count)
        p.storeBytes(of: id.littleEndian, toByteOffset: 0, as: UInt64.self)
    }

    static func run(_ args: [String]) throws -> Int32 {
        guard args.count == 4, let seed = UInt64(args[1]), let ops = Int(args[2]), let every = Int(args[3]), every > 0 else {
            throw ImgError("x-crash-writer FILE SEED OPS FLUSH_EVERY")
        }
        let dev = try openImage(path: args[0], options: ImageOpenOptions(format: .qcow2, readOnly: false))
        let blocks = Int(dev.size / UInt64(blockSize))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * blockSize, alignment: 4096)
        for op in plan(seed: seed, ops: ops, blocks: blocks) {
            let offset = UInt64(op.block * blockSize), length = op.count * blockSize
            if op.zero {
                try dev.writeZeroes(offset: offset, length: UInt64(length), mayUnmap: true)
            } else {
                for b in 0..<op.count {
                    fill(UnsafeMutableRawBufferPointer(rebasing: buffer[(b * blockSize)..<((b + 1) * blockSize)]), id: op.id, block: op.block + b)
                }
                try dev.write(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), at: offset)
            }
            if op.id % UInt64(every) == 0 {
                try dev.flush()
                output("F \(op.id)\n")
            }
        }
        output("DONE\n")
        return 0
    }
}
