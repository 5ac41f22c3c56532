import Block
import Foundation
import XCTest

/// Corrupt headers and tables: a clear error naming the problem, never a crash.
final class CorruptImageTests: XCTestCase {
    var dir = ""
    var good = [UInt8]()
    override func setUpWithError() throws {
        dir = try scratchDirectory()
        let path = dir + "/good.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", path, "16M"])
        try must("qemu-io", ["-c", "write -P 0xab 0 64k", path])
        good = try readFileBytes(path)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func be(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> UInt64(8 * (n - 1 - $0))) } }

    /// Patches the good image, opens it (and reads it all), expects an error mentioning `words`.
    func expectError(_ name: String, _ patches: [(Int, [UInt8])], _ words: String, readOnly: Bool = true,
                     file: StaticString = #filePath, line: UInt = #line) throws {
        var bytes = good
        for (at, data) in patches { bytes.replaceSubrange(at..<(at + data.count), with: data) }
        let path = dir + "/\(name).qcow2"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            let dev = readOnly ? try openRO(path, .qcow2) : try openRW(path, .qcow2)
            _ = try readAll(dev)
            if !readOnly { try writeBytes(dev, [1, 2, 3], at: 0); try writeBytes(dev, [1, 2, 3], at: 3 << 20); try dev.flush() }
            XCTFail("\(name): no error", file: file, line: line)
        } catch let e as BlockError {
            XCTAssertTrue(e.message.contains(words), "\(name): '\(e.message)' should mention '\(words)'", file: file, line: line)
        }
        // keel img info must fail cleanly too (exit 1, one line on stderr) or succeed.
        let r = try keel(["info", path])
        XCTAssertTrue(r.status == 0 || (r.status == 1 && r.stderr.hasPrefix("keel img: ")), "\(name): \(r.stderr)", file: file, line: line)
    }

    var l1Offset: Int { Int(good[40..<48].reduce(0) { $0 << 8 | UInt64($1) }) }
    var refTableOffset: Int { Int(good[48..<56].reduce(0) { $0 << 8 | UInt64($1) }) }

    func testHeaders() throws {
        try expectError("magic", [(0, [0x51, 0x46, 0x49, 0xfc])], "bad magic")
        try expectError("version", [(4, be(7, 4))], "version 7")
        try expectError("cluster-bits-small", [(20, be(8, 4))], "cluster_bits 8")
        try expectError("cluster-bits-large", [(20, be(30, 4))], "cluster_bits 30")
        try expectError("l1-size-huge", [(36, be(0xffff_ffff, 4))], "l1_size")
        try expectError("l1-too-small", [(24, be(1 << 40, 8))], "l1_size")
        try expectError("l1-past-end", [(40, be(1 << 40, 8))], "past the end")
        try expectError("l1-unaligned", [(40, be(0x1234, 8))], "not cluster-aligned")
        try expectError("reftable-huge", [(56, be(0x7fff_ffff, 4))], "refcount_table_clusters")
        try expectError("reftable-past-end", [(48, be(1 << 50, 8))], "past the end")
        try expectError("refcount-order", [(96, be(7, 4))], "refcount_order 7")
        try expectError("header-length", [(100, be(12345, 4))], "header_length")
        try expectError("snapshots", [(60, be(1 << 20, 4))], "nb_snapshots")
        try expectError("encrypted", [(32, be(1, 4))], "encrypted")
        try expectError("backing-name-length", [(8, be(512, 8)), (16, be(5000, 4))], "backing file name")
        // Unknown incompatible bit, named by number.
        try expectError("unknown-feature", [(72, be(1 << 9, 8))], "bit 9")
        try expectError("external-data", [(72, be(1 << 2, 8))], "external data file")
        try expectError("extended-l2", [(72, be(1 << 4, 8))], "extended L2")
        // Corrupt bit: read-only allowed, read-write refused.
        var bytes = good
        bytes.replaceSubrange(72..<80, with: be(2, 8))
        let path = dir + "/corrupt-bit.qcow2"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        XCTAssertNoThrow(try readAll(try openRO(path)))
        XCTAssertThrowsError(try openRW(path)) { XCTAssertTrue("\($0)".contains("marked corrupt"), "\($0)") }
    }

    func testTables() throws {
        // L1 entry pointing past the end / at the header / at the L1 table itself (a loop).
        try expectError("l2-past-end", [(l1Offset, be(1 << 40, 8))], "past the end")
        try expectError("l2-loop", [(l1Offset, be(UInt64(l1Offset), 8))], "overlaps the L1")
        try expectError("l2-unaligned", [(l1Offset, be(0x1200, 8))], "not cluster-aligned")
        // Refcount table entry pointing past the end: writing needs refcounts.
        try expectError("refblock-past-end", [(refTableOffset, be(1 << 40, 8))], "past the end", readOnly: false)
    }

    func testDataClusterPointingAtMetadataIsRefused() throws {
        // The first L2 table's first entry made to point at the L1 table: reading is harmless,
        // writing guest data there would destroy metadata.
        let l2 = Int(good[l1Offset..<(l1Offset + 8)].reduce(0) { $0 << 8 | UInt64($1) } & 0x00ff_ffff_ffff_fe00)
        try expectError("data-on-l1", [(l2, be((1 << 63) | UInt64(l1Offset), 8))], "metadata", readOnly: false)
    }

    func testRefcountOverflow() throws {
        // 1-bit refcounts: a second reference to a cluster cannot be counted.
        let path = dir + "/rc1.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "refcount_bits=1,cluster_size=4k", path, "1M"])
        let dev = try openRW(path) as! Qcow2Image
        XCTAssertThrowsError(try dev.debugAddReference(clusterIndex: 0)) {
            XCTAssertTrue("\($0)".contains("refcount overflow"), "\($0)")
        }
    }

    func testBackingLoop() throws {
        let a = dir + "/a.qcow2", b = dir + "/b.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", a, "1M"])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", b], cwd: dir)
        // Point a at b: qemu-img refuses to make the loop, so rewrite a's header by hand.
        try must("qemu-img", ["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a], cwd: dir)
        XCTAssertThrowsError(try openRO(b)) { XCTAssertTrue("\($0)".contains("loop"), "\($0)") }
    }

    func testTruncatedAndGarbageFilesNeverCrash() throws {
        var rng: UInt64 = 42
        for n in 0..<200 {
            var bytes = Array(good.prefix(max(72, (n * 977) % good.count)))
            for _ in 0..<8 {
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                let at = Int(rng >> 33) % min(bytes.count, 4096 * 4)
                if at >= 8 { bytes[at] = UInt8(truncatingIfNeeded: rng >> 17) }   // keep the magic
            }
            let path = dir + "/fuzz.qcow2"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            if let dev = try? openRO(path) {
                _ = try? readAll(dev)
                _ = try? (dev as? Qcow2Image)?.check()
            }
        }
    }
}
