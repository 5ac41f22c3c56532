@testable import Block
import Foundation
import XCTest

/// Images written by Keel pass qemu-img check with no errors and no leaks and read back through
/// qemu-img exactly as an in-memory model of the same operations says.
final class KeelWriteTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s &+= 0x9e37_79b9_7f4a_7c15; var z = s; z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9; z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb; return z ^ (z >> 31) }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// Random writes, zero-writes and discards through the API, mirrored in `model`.
    func exercise(_ dev: Qcow2Image, _ model: inout [UInt8], seed: UInt64, ops: Int, hasBacking: Bool) throws {
        var rng = Rng(s: seed)
        let size = model.count, cs = dev.clusterSize
        for i in 0..<ops {
            let kind = rng.below(10)
            let length = rng.below(4) == 0 ? rng.below(4 * cs) + 1 : rng.below(3 * cs / 2) + 1
            let offset = rng.below(size - length)
            if kind < 7 {
                let byte = UInt8(truncatingIfNeeded: i * 7 + 1)
                let data = (0..<length).map { byte ^ UInt8(truncatingIfNeeded: $0 >> 9) }
                try writeBytes(dev, data, at: UInt64(offset))
                model.replaceSubrange(offset..<(offset + length), with: data)
            } else if kind < 9 {
                try dev.writeZeroes(offset: UInt64(offset), length: UInt64(length), mayUnmap: kind == 8)
                for k in offset..<(offset + length) { model[k] = 0 }
            } else if !hasBacking || dev.header.version >= 3 {
                // Whole clusters of a discarded range read as zeroes here (v3 with a backing
                // file records zero clusters; without one they become unallocated).
                try dev.discard(offset: UInt64(offset), length: UInt64(length))
                let first = (offset + cs - 1) / cs * cs, end = (offset + length) / cs * cs
                if first < end { for k in first..<end { model[k] = 0 } }
            }
            if rng.below(25) == 0 { try dev.flush() }
        }
    }

    func roundTrip(_ createOptions: [String], size: Int = 8 << 20, ops: Int = 300, seed: UInt64 = 1,
                   l2Cache: Int? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = dir + "/w-\(seed).qcow2"
        XCTAssertEqual(try keel(["create", "-q", "-f", "qcow2"] + createOptions + [path, "\(size)"]).status, 0)
        var model = [UInt8](repeating: 0, count: size)
        let dev = try openRW(path) as! Qcow2Image
        if let l2Cache { dev.l2CacheCapacity = l2Cache }
        try exercise(dev, &model, seed: seed, ops: ops, hasBacking: false)
        XCTAssertNil(firstDifference(try readAll(dev), model), "Keel reads back what it wrote", file: file, line: line)
        dev.close()
        try assertQemuCheckClean(path, file: file, line: line)
        let viewed = try qemuRaw(path, in: dir)
        XCTAssertNil(firstDifference(viewed, model), "qemu-img reads what Keel wrote (\(createOptions))", file: file, line: line)
        XCTAssertEqual(try keel(["check", path]).status, 0, file: file, line: line)
    }

    func testDefaultImage() throws { try roundTrip([]) }
    func testSmallClustersWideRefcountsGrowTheRefcountTable() throws {
        // 512-byte clusters with 64-bit refcounts: a refcount block covers 32 KiB, the first
        // table only 2 MiB, so writes all over 8 MiB move the table several times.
        try roundTrip(["-o", "cluster_size=512,refcount_bits=64"], ops: 400, seed: 2)
    }
    func testOneBitRefcounts() throws { try roundTrip(["-o", "cluster_size=4k,refcount_bits=1"], seed: 3) }
    func testVersion2() throws { try roundTrip(["-o", "compat=0.10,cluster_size=4k"], seed: 4) }
    func testBigClusters() throws { try roundTrip(["-o", "cluster_size=2M"], size: 16 << 20, ops: 100, seed: 5) }
    func testL2CacheEviction() throws { try roundTrip(["-o", "cluster_size=4k"], size: 32 << 20, ops: 400, seed: 6, l2Cache: 2) }

    func testWritesOverQemuImagesWithBackingAndCompressedClusters() throws {
        let base = dir + "/base.raw", comp = dir + "/comp.qcow2", top = dir + "/top.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "raw", base, "8M"])
        try must("qemu-io", ["-f", "raw", "-c", "write -P 0x61 0 3M", "-c", "write -P 0x62 5M 2M", base])
        try must("qemu-img", ["convert", "-c", "-O", "qcow2", base, comp])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "comp.qcow2", "-F", "qcow2", top], cwd: dir)
        var model = try readFileBytes(base)
        // Partial writes over compressed clusters copy them (decompressed) first.
        let direct = try openRW(comp) as! Qcow2Image
        try exercise(direct, &model, seed: 7, ops: 150, hasBacking: false)
        direct.close()
        try assertQemuCheckClean(comp)
        XCTAssertNil(firstDifference(try qemuRaw(comp, in: dir), model))
        // Copy-on-write from a compressed backing file through an overlay.
        let dev = try openRW(top) as! Qcow2Image
        try exercise(dev, &model, seed: 8, ops: 200, hasBacking: true)
        XCTAssertNil(firstDifference(try readAll(dev), model))
        dev.close()
        try assertQemuCheckClean(top)
        XCTAssertNil(firstDifference(try qemuRaw(top, in: dir), model))
    }

    func testConcurrentWriters() throws {
        let path = dir + "/mt.qcow2"
        try Qcow2Image.create(path: path, options: Qcow2CreateOptions(size: 16 << 20))
        let dev = try openRW(path)
        let threads = 4, perThread = 4 << 20
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let data = [UInt8](repeating: UInt8(t + 1), count: 12345)
            var off = t * perThread
            while off + data.count <= (t + 1) * perThread { try! writeBytes(dev, data, at: UInt64(off)); off += 40000 }
        }
        try dev.flush()
        dev.close()
        try assertQemuCheckClean(path)
        let bytes = try qemuRaw(path, in: dir)
        for t in 0..<threads {
            XCTAssertEqual(bytes[t * perThread], UInt8(t + 1))
            XCTAssertEqual(bytes[t * perThread + 12344], UInt8(t + 1))
            XCTAssertEqual(bytes[t * perThread + 12345], 0)
        }
    }

    func testTemporaryOverlayLeavesTheBaseUntouched() throws {
        let base = dir + "/b.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
        try must("qemu-io", ["-c", "write -P 0x42 0 1M", base])
        let before = try readFileBytes(base)
        let overlay = try Qcow2Image.temporaryOverlay(on: try openRO(base))
        try writeBytes(overlay, [UInt8](repeating: 0x99, count: 70000), at: 1000)
        try overlay.flush()
        var expected = try qemuRaw(base, in: dir)
        expected.replaceSubrange(1000..<71000, with: [UInt8](repeating: 0x99, count: 70000))
        XCTAssertEqual(try readAll(overlay), expected)
        overlay.close()
        XCTAssertEqual(try readFileBytes(base), before)
    }

    func testResizeGrowsTheL1Table() throws {
        let path = dir + "/r.qcow2"
        // 4 KiB clusters: one L1 entry maps 2 MiB, so 1 MiB -> 64 MiB needs a bigger L1.
        XCTAssertEqual(try keel(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", path, "1M"]).status, 0)
        try must("qemu-io", ["-c", "write -P 0x10 0 1M", path])
        XCTAssertEqual(try keel(["resize", path, "+63M"]).status, 0)
        try must("qemu-io", ["-c", "write -P 0x20 60M 1M", "-c", "read -P 0x10 0 1M", path])
        try assertQemuCheckClean(path)
        let info = try must("qemu-img", ["info", "--output", "json", path])
        XCTAssertTrue(info.contains("\"virtual-size\": 67108864"), info)
        XCTAssertEqual(try keel(["resize", path, "-1M"]).status, 1, "qcow2 shrink is refused")
        let raw = dir + "/r.raw"
        XCTAssertEqual(try keel(["create", "-q", "-f", "raw", raw, "8M"]).status, 0)
        let refused = try keel(["resize", raw, "4M"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("--shrink"), refused.stderr)
        XCTAssertEqual(try keel(["resize", "--shrink", raw, "4M"]).status, 0)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: raw)[.size] as? Int, 4 << 20)
    }
}
