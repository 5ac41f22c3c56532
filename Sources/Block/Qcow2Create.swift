import CKeel
import Glibc

/// What a new qcow2 image looks like (qemu-img create's -o options).
public struct Qcow2CreateOptions: Sendable {
    public var size: UInt64
    public var clusterSize: Int = 65536
    public var version: UInt32 = 3           // 2 is compat=0.10, 3 is compat=1.1
    public var refcountBits: Int = 16
    public var backingFile: String? = nil
    public var backingFormat: String? = nil
    public init(size: UInt64) { self.size = size }
}

extension Qcow2Image {
    /// Creates (or truncates) a file and formats it as an empty qcow2 image.
    public static func create(path: String, options: Qcow2CreateOptions) throws(BlockError) {
        try validate(options)
        let fd = ckeel_open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BlockError.errno("cannot create '\(path)'") }
        Glibc.close(fd)
        let file = try RawFileDevice(path: path, readOnly: false)
        defer { file.close() }
        try format(file, options)
    }

    static func validate(_ o: Qcow2CreateOptions) throws(BlockError) {
        let cs = o.clusterSize
        guard cs >= 512, cs <= 2 << 20, cs & (cs - 1) == 0 else {
            throw BlockError(.unsupported, "cluster size \(cs) must be a power of two between 512 and 2M")
        }
        guard [1, 2, 4, 8, 16, 32, 64].contains(o.refcountBits) else {
            throw BlockError(.unsupported, "refcount_bits \(o.refcountBits) must be a power of two up to 64")
        }
        guard o.version == 3 || (o.version == 2 && o.refcountBits == 16) else {
            throw BlockError(.unsupported, o.version == 2 ? "compat=0.10 requires refcount_bits=16" : "unsupported qcow2 version \(o.version)")
        }
        if let b = o.backingFile, b.utf8.count > 1023 || b.isEmpty {
            throw BlockError(.unsupported, "backing file name '\(b)' must be 1 to 1023 bytes long")
        }
        let perL1 = UInt64(cs) * UInt64(cs / 8)
        guard o.size / perL1 + 1 <= Qcow2Header.maxL1Bytes / 8 else {
            throw BlockError(.unsupported, "size \(o.size) is too large for cluster size \(cs)")
        }
    }

    /// Lays out header, refcount table, refcount blocks and an empty L1 table from cluster 0 on.
    static func format(_ file: RawFileDevice, _ o: Qcow2CreateOptions) throws(BlockError) {
        try validate(o)
        let cs = o.clusterSize
        let cb = UInt32(cs.trailingZeroBitCount)
        let perL1 = UInt64(cs) * UInt64(cs / 8)
        let l1Size = Int(o.size / perL1 + (o.size % perL1 == 0 ? 0 : 1))
        let l1Clusters = max(1, (l1Size * 8 + cs - 1) / cs)
        let perBlock = cs * 8 / o.refcountBits
        var rt = 1, rb = 1
        while true {
            let total = 1 + rt + rb + l1Clusters
            let needBlocks = (total + perBlock - 1) / perBlock
            let needTable = (needBlocks * 8 + cs - 1) / cs
            if needBlocks <= rb && needTable <= rt { break }
            rb = max(rb, needBlocks); rt = max(rt, needTable)
        }
        let total = 1 + rt + rb + l1Clusters
        let rtOffset = UInt64(cs), rbOffset = UInt64((1 + rt) * cs), l1Offset = UInt64((1 + rt + rb) * cs)
        let order = UInt32(o.refcountBits.trailingZeroBitCount)
        let header = Qcow2Header.serialize(version: o.version, clusterBits: cb, size: o.size, l1Size: UInt32(l1Size),
                                           l1TableOffset: l1Offset, refcountTableOffset: rtOffset,
                                           refcountTableClusters: UInt32(rt), refcountOrder: order,
                                           backingFile: o.backingFile, backingFormat: o.backingFormat)
        var table = [UInt8](repeating: 0, count: rt * cs)
        for i in 0..<rb { table.putBE64(rbOffset + UInt64(i * cs), at: i * 8) }
        var blocks = [UInt8](repeating: 0, count: rb * cs)
        for c in 0..<total {
            // refcount 1 in an entry of refcount_bits bits (sub-byte widths: LSB first).
            let bit = c * o.refcountBits
            if o.refcountBits >= 8 { blocks[(bit + o.refcountBits) / 8 - 1] = 1 } else { blocks[bit / 8] |= 1 << UInt8(bit % 8) }
        }
        try bytesOf(header) { (p) throws(BlockError) in try file.pwrite(p, at: 0) }
        try bytesOf(table) { (p) throws(BlockError) in try file.pwrite(p, at: rtOffset) }
        try bytesOf(blocks) { (p) throws(BlockError) in try file.pwrite(p, at: rbOffset) }
        try file.truncate(to: UInt64(total * cs))
        try file.sync()
    }
}
