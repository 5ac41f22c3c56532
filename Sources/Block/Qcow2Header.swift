/// The qcow2 header (QEMU docs/interop/qcow2.txt, "Header" and "Header extensions"), parsed from
/// untrusted bytes: every field is range-checked before anything is sized from it.
public struct Qcow2Header: Sendable {
    public static let magic: UInt32 = 0x5146_49fb   // "QFI\xfb"
    public static let maxL1Bytes: UInt64 = 32 << 20      // QEMU's QCOW_MAX_L1_SIZE
    public static let maxRefcountTableBytes: UInt64 = 8 << 20   // QCOW_MAX_REFTABLE_SIZE
    public static let maxSnapshots: UInt32 = 65536

    // Incompatible feature bits.
    public static let dirtyBit: UInt64 = 1 << 0
    public static let corruptBit: UInt64 = 1 << 1
    public static let externalDataFileBit: UInt64 = 1 << 2
    public static let compressionTypeBit: UInt64 = 1 << 3
    public static let extendedL2Bit: UInt64 = 1 << 4
    // Compatible and autoclear bits.
    public static let lazyRefcountsBit: UInt64 = 1 << 0
    public static let bitmapsAutoclearBit: UInt64 = 1 << 0

    // Header extension types.
    static let extBackingFormat: UInt32 = 0xe279_2aca
    static let extFeatureTable: UInt32 = 0x6803_f857
    static let extBitmaps: UInt32 = 0x2385_2875
    static let extCrypto: UInt32 = 0x0537_be77
    static let extDataFile: UInt32 = 0x4441_5441

    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var size: UInt64
    public var cryptMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var nbSnapshots: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = 72
    public var compressionType: UInt8 = 0

    public var backingFile: String?
    public var backingFormat: String?
    public var hasBitmaps = false
    /// (type, bit, name) from the feature name table.
    public var featureNames: [(UInt8, UInt8, String)] = []

    public var clusterSize: Int { 1 << Int(clusterBits) }
    public var refcountBits: Int { 1 << Int(refcountOrder) }

    /// Parses and validates the header in the image's first bytes (at least one cluster's worth,
    /// or the whole file if smaller). `fileSize` bounds every offset.
    public init(bytes b: [UInt8], fileSize: UInt64, path: String) throws(BlockError) {
        func bad(_ m: String) -> BlockError { BlockError.corrupt("'\(path)': \(m)") }
        guard b.count >= 72, b.be32(0) == Self.magic else { throw bad("not a qcow2 image (bad magic)") }
        version = b.be32(4)
        guard version == 2 || version == 3 else { throw bad("unsupported qcow2 version \(version)") }
        backingFileOffset = b.be64(8)
        backingFileSize = b.be32(16)
        clusterBits = b.be32(20)
        guard (9...21).contains(clusterBits) else { throw bad("cluster_bits \(clusterBits) is outside 9..21") }
        size = b.be64(24)
        cryptMethod = b.be32(32)
        l1Size = b.be32(36)
        l1TableOffset = b.be64(40)
        refcountTableOffset = b.be64(48)
        refcountTableClusters = b.be32(56)
        nbSnapshots = b.be32(60)
        snapshotsOffset = b.be64(64)
        if version >= 3 {
            guard b.count >= 104 else { throw bad("truncated version 3 header") }
            incompatibleFeatures = b.be64(72)
            compatibleFeatures = b.be64(80)
            autoclearFeatures = b.be64(88)
            refcountOrder = b.be32(96)
            headerLength = b.be32(100)
            guard headerLength >= 104, headerLength % 8 == 0 else { throw bad("header_length \(headerLength) is invalid") }
            guard Int(headerLength) <= min(b.count, 1 << Int(clusterBits)) else {
                throw bad("header_length \(headerLength) exceeds the first cluster")
            }
            if headerLength > 104 { compressionType = b[104] }
        }
        guard refcountOrder <= 6 else { throw bad("refcount_order \(refcountOrder) exceeds 6") }
        let cs = UInt64(1) << UInt64(clusterBits)

        func checkTable(_ name: String, _ offset: UInt64, _ bytes: UInt64) throws(BlockError) {
            guard offset % cs == 0 else { throw bad("\(name) offset \(offset) is not cluster-aligned") }
            let (end, o) = offset.addingReportingOverflow(bytes)
            guard !o, offset < fileSize || bytes == 0, end <= (fileSize + cs - 1) / cs * cs else {
                throw bad("\(name) at offset \(offset) (\(bytes) bytes) is past the end of the file (\(fileSize) bytes)")
            }
        }
        // L1: large enough for the virtual size, small enough to hold in memory.
        let l2Entries = cs / 8
        let perL1 = cs * l2Entries
        let needed = size / perL1 + (size % perL1 == 0 ? 0 : 1)
        guard UInt64(l1Size) * 8 <= Self.maxL1Bytes else { throw bad("l1_size \(l1Size) exceeds QEMU's 32 MiB L1 limit") }
        guard UInt64(l1Size) >= needed else { throw bad("l1_size \(l1Size) is too small for the virtual size \(size) (needs \(needed))") }
        try checkTable("L1 table", l1TableOffset, UInt64(l1Size) * 8)
        guard refcountTableClusters > 0 else { throw bad("refcount_table_clusters is 0") }
        guard UInt64(refcountTableClusters) * cs <= Self.maxRefcountTableBytes else {
            throw bad("refcount_table_clusters \(refcountTableClusters) exceeds QEMU's 8 MiB refcount table limit")
        }
        try checkTable("refcount table", refcountTableOffset, UInt64(refcountTableClusters) * cs)
        guard nbSnapshots <= Self.maxSnapshots else { throw bad("nb_snapshots \(nbSnapshots) exceeds 65536") }
        if nbSnapshots > 0 { try checkTable("snapshot table", snapshotsOffset, 40) }
        guard cryptMethod == 0 else { throw BlockError(.unsupported, "'\(path)': encrypted qcow2 images (crypt_method \(cryptMethod)) are not supported") }

        // Extensions: from the end of the header to the end of the first cluster at most.
        var at = Int(version >= 3 ? headerLength : 72)
        let limit = min(b.count, Int(cs))
        while at + 8 <= limit {
            let type = b.be32(at), length = Int(b.be32(at + 4))
            if type == 0 { break }
            guard length <= limit - at - 8 else { throw bad("header extension 0x\(String(type, radix: 16)) overruns the first cluster") }
            let data = Array(b[(at + 8)..<(at + 8 + length)])
            switch type {
            case Self.extBackingFormat: backingFormat = String(decoding: data, as: UTF8.self)
            case Self.extFeatureTable:
                var i = 0
                while i + 48 <= data.count {
                    let nameBytes = data[(i + 2)..<(i + 48)].prefix { $0 != 0 }
                    featureNames.append((data[i], data[i + 1], String(decoding: nameBytes, as: UTF8.self)))
                    i += 48
                }
            case Self.extBitmaps: hasBitmaps = true
            case Self.extDataFile:
                throw BlockError(.unsupported, "'\(path)': images with an external data file are not supported")
            default: break   // unknown extensions are safely ignored (and preserved: Keel never rewrites them)
            }
            at += 8 + (length + 7) / 8 * 8
        }

        if backingFileOffset != 0 {
            guard backingFileSize > 0, backingFileSize <= 1023 else { throw bad("backing file name length \(backingFileSize) is invalid") }
            let (end, o) = backingFileOffset.addingReportingOverflow(UInt64(backingFileSize))
            guard !o, end <= UInt64(limit) else { throw bad("backing file name at offset \(backingFileOffset) is outside the first cluster") }
            backingFile = String(decoding: b[Int(backingFileOffset)..<Int(end)], as: UTF8.self)
        }

        // Incompatible features last, so the feature table can name an unknown bit.
        let known = Self.dirtyBit | Self.corruptBit | Self.externalDataFileBit | Self.compressionTypeBit | Self.extendedL2Bit
        let unknown = incompatibleFeatures & ~known
        if unknown != 0 {
            let bit = UInt8(unknown.trailingZeroBitCount)
            let name = featureNames.first { $0.0 == 0 && $0.1 == bit }.map { " (\($0.2))" } ?? ""
            throw BlockError(.unsupported, "'\(path)': unsupported incompatible feature bit \(bit)\(name)")
        }
        if incompatibleFeatures & Self.externalDataFileBit != 0 {
            throw BlockError(.unsupported, "'\(path)': images with an external data file are not supported")
        }
        if incompatibleFeatures & Self.extendedL2Bit != 0 {
            throw BlockError(.unsupported, "'\(path)': extended L2 entries (subclusters) are not supported")
        }
        if incompatibleFeatures & Self.compressionTypeBit != 0 || compressionType != 0 {
            guard compressionType == 0 else {
                throw BlockError(.unsupported, "'\(path)': compression type \(compressionType == 1 ? "zstd" : String(compressionType)) is not supported")
            }
        }
    }

    public var isDirty: Bool { incompatibleFeatures & Self.dirtyBit != 0 }
    public var isCorrupt: Bool { incompatibleFeatures & Self.corruptBit != 0 }
    public var hasLazyRefcounts: Bool { compatibleFeatures & Self.lazyRefcountsBit != 0 }

    /// A fresh image's first cluster: header, feature name table, backing format, backing name.
    static func serialize(version: UInt32, clusterBits: UInt32, size: UInt64, l1Size: UInt32, l1TableOffset: UInt64,
                          refcountTableOffset: UInt64, refcountTableClusters: UInt32, refcountOrder: UInt32,
                          backingFile: String?, backingFormat: String?) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 1 << Int(clusterBits))
        b.putBE32(magic, at: 0)
        b.putBE32(version, at: 4)
        b.putBE32(clusterBits, at: 20)
        b.putBE64(size, at: 24)
        b.putBE32(l1Size, at: 36)
        b.putBE64(l1TableOffset, at: 40)
        b.putBE64(refcountTableOffset, at: 48)
        b.putBE32(refcountTableClusters, at: 56)
        var at = 72
        if version >= 3 {
            b.putBE32(refcountOrder, at: 96)
            b.putBE32(112, at: 100)     // through compression_type, padded to 8
            at = 112
        }
        func ext(_ type: UInt32, _ data: [UInt8]) {
            b.putBE32(type, at: at); b.putBE32(UInt32(data.count), at: at + 4)
            for (i, x) in data.enumerated() where at + 8 + i < b.count { b[at + 8 + i] = x }
            at += 8 + (data.count + 7) / 8 * 8
        }
        if let f = backingFormat, backingFile != nil { ext(extBackingFormat, Array(f.utf8)) }
        let formatBytes = backingFile != nil ? (backingFormat.map { 8 + ($0.utf8.count + 7) / 8 * 8 } ?? 0) : 0
        let roomForTable = at + formatBytes + 8 + 8 * 48 + 8 + (backingFile?.utf8.count ?? 0) <= b.count
        if version >= 3 && roomForTable {
            var table: [UInt8] = []
            for (type, bit, name) in [(0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
                                      (0, 3, "compression type"), (0, 4, "extended L2 entries"),
                                      (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data")] {
                var e = [UInt8](repeating: 0, count: 48)
                e[0] = UInt8(type); e[1] = UInt8(bit)
                for (i, c) in name.utf8.enumerated() { e[2 + i] = c }
                table += e
            }
            ext(extFeatureTable, table)
        }
        at += 8   // end-of-extensions marker (zeroes)
        if let name = backingFile {
            let bytes = Array(name.utf8)
            b.putBE64(UInt64(at), at: 8)
            b.putBE32(UInt32(bytes.count), at: 16)
            for (i, x) in bytes.enumerated() where at + i < b.count { b[at + i] = x }
        }
        return b
    }
}
