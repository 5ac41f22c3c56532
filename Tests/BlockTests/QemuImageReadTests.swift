import Block
import Foundation
import XCTest

/// Images made by qemu-img and qemu-io read byte-identically by Keel.
final class QemuImageReadTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// Patterns at cluster boundaries, inside clusters, across L2 tables, and a zeroed range.
    let patternCommands = ["write -P 0xab 0 1M", "write -P 0x11 1536 5000", "write -P 0xcd 3M 70k",
                           "write -P 0x5a 8388096 1024", "write -z 100k 8k", "write -P 0x77 12M 4k"]

    func makeAndCompare(_ createOptions: [String], size: String = "16M", commands: [String]? = nil,
                        file: StaticString = #filePath, line: UInt = #line) throws {
        let path = dir + "/img-\(UUID().uuidString).qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2"] + createOptions + [path, size])
        let io = (commands ?? patternCommands).flatMap { ["-c", $0] }
        try must("qemu-io", ["-f", "qcow2"] + io + [path])
        try compare(path, file: file, line: line)
    }

    func compare(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try qemuRaw(path, in: dir)
        let dev = try openRO(path)
        defer { dev.close() }
        XCTAssertTrue(dev is Qcow2Image, file: file, line: line)
        let got = try readAll(dev)
        XCTAssertEqual(got.count, expected.count, file: file, line: line)
        XCTAssertNil(firstDifference(got, expected), "first difference at \(firstDifference(got, expected) ?? -1) in \(path)", file: file, line: line)
        XCTAssertTrue(got.contains { $0 != 0 }, "the patterns should be there", file: file, line: line)
    }

    func testClusterSizes() throws {
        for cs in ["512", "4k", "64k", "2M"] { try makeAndCompare(["-o", "cluster_size=\(cs)"]) }
    }

    func testRefcountWidths() throws {
        for bits in [1, 2, 4, 8, 16, 32, 64] { try makeAndCompare(["-o", "refcount_bits=\(bits),cluster_size=4k"]) }
    }

    func testVersion2() throws {
        try makeAndCompare(["-o", "compat=0.10"])
        try makeAndCompare(["-o", "compat=0.10,cluster_size=4k"])
    }

    func testPreallocation() throws {
        for mode in ["metadata", "falloc", "full"] { try makeAndCompare(["-o", "preallocation=\(mode)"], size: "16M") }
    }

    func testCompressed() throws {
        let raw = dir + "/src.raw"
        try must("qemu-img", ["create", "-q", "-f", "raw", raw, "8M"])
        try must("qemu-io", ["-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "write -P 0x12 2M 300k", "-c", "write -P 0x99 7M 4k", raw])
        // Mixed content so some clusters compress and some are stored as is.
        let noise = (0..<65536).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761) >> 13) }
        let fh = try FileHandle(forWritingTo: URL(fileURLWithPath: raw))
        try fh.seek(toOffset: 5 << 20); fh.write(Data(noise)); try fh.close()
        for cs in ["4k", "64k", "2M"] {
            let out = dir + "/c-\(cs).qcow2"
            try must("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "cluster_size=\(cs)", raw, out])
            try compare(out)
            XCTAssertEqual(try readAll(try openRO(out)), try readFileBytes(raw))
        }
    }

    func testBackingChains() throws {
        let base = dir + "/base.qcow2", mid = dir + "/mid.qcow2", top = dir + "/top.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", base, "16M"])
        try must("qemu-io", ["-c", "write -P 0x01 0 4M", "-c", "write -P 0x02 10M 1M", base])
        // Relative backing names: resolved against the overlay's directory, not the cwd.
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid], cwd: dir)
        try must("qemu-io", ["-c", "write -P 0x03 1M 512", "-c", "write -z 2M 64k", mid])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top, "20M"], cwd: dir)
        try must("qemu-io", ["-c", "write -P 0x04 3000 10000", "-c", "write -P 0x05 17M 1M", top])
        try compare(top)
        // A raw backing file, and a backing format left to probing.
        let rawBase = dir + "/rb.raw"
        try must("qemu-img", ["create", "-q", "-f", "raw", rawBase, "8M"])
        try must("qemu-io", ["-f", "raw", "-c", "write -P 0xab 0 2M", rawBase])
        let over = dir + "/over.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", rawBase, "-F", "raw", over])
        try must("qemu-io", ["-c", "write -P 0x33 64k 4k", over])
        try compare(over)
    }

    func testInternalSnapshotsAreListed() throws {
        let path = dir + "/snap.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", path, "8M"])
        try must("qemu-io", ["-c", "write -P 0xab 0 1M", path])
        try must("qemu-img", ["snapshot", "-c", "first", path])
        try must("qemu-io", ["-c", "write -P 0xcd 0 64k", path])
        try must("qemu-img", ["snapshot", "-c", "second", path])
        let dev = try openRO(path) as! Qcow2Image
        XCTAssertEqual(dev.snapshots.map(\.name), ["first", "second"])
        XCTAssertEqual(dev.snapshots.map(\.id), ["1", "2"])
        dev.close()
        try compare(path)
        XCTAssertThrowsError(try openRW(path)) { XCTAssertTrue("\($0)".contains("snapshots"), "\($0)") }
        let r = try keel(["check", path])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
    }

    func testProbing() throws {
        let q = dir + "/p.qcow2", r = dir + "/p.raw"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", q, "1M"])
        try must("qemu-img", ["create", "-q", "-f", "raw", r, "1M"])
        XCTAssertEqual(try probeImageFormat(path: q), .qcow2)
        XCTAssertEqual(try probeImageFormat(path: r), .raw)
        XCTAssertTrue(try openRO(q) is Qcow2Image)
        XCTAssertTrue(try openRO(r) is RawFileDevice)
        // A probed raw image may not be turned into a qcow2 image by a write to sector 0.
        let dev = try openRW(r)
        XCTAssertThrowsError(try writeBytes(dev, [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3], at: 0))
        XCTAssertNoThrow(try writeBytes(dev, [1, 2, 3, 4], at: 0))
    }
}
