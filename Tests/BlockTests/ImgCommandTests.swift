import Block
import Foundation
import XCTest

/// `keel img` cross-checked with qemu-img on the same images.
final class ImgCommandTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func json(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let o = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try XCTUnwrap(o as? [String: Any], "not a JSON object: \(text)", file: file, line: line)
    }

    /// Every field qemu-img reports, Keel reports equal (actual-size aside: it depends on how
    /// each tool leaves the file's blocks, so it only has to be present).
    func compareInfo(_ path: String, cwd: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let q = try json(try must("qemu-img", ["info", "--output", "json", path], cwd: cwd), file: file, line: line)
        let r = try keel(["info", "--output", "json", path], cwd: cwd)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let k = try json(r.stdout, file: file, line: line)
        XCTAssertEqual(Set(q.keys), Set(k.keys), "fields of \(path)", file: file, line: line)
        for (key, value) in q where key != "actual-size" {
            if key == "snapshots" {
                let qs = value as? [[String: Any]] ?? [], ks = k[key] as? [[String: Any]] ?? []
                XCTAssertEqual(qs.map { $0["name"] as? String }, ks.map { $0["name"] as? String }, file: file, line: line)
                XCTAssertEqual(qs.map { $0["date-sec"] as? Int }, ks.map { $0["date-sec"] as? Int }, file: file, line: line)
                continue
            }
            XCTAssertEqual(try canonical(value), try canonical(k[key] ?? "missing"), "\(key) of \(path)", file: file, line: line)
        }
        XCTAssertNotNil(k["actual-size"] as? Int, file: file, line: line)
    }

    /// A JSON value as sorted-key text, so dictionaries compare regardless of order.
    func canonical(_ v: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
    }

    func testInfoMatchesQemuImg() throws {
        try must("qemu-img", ["create", "-q", "-f", "qcow2", dir + "/v3.qcow2", "1G"])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", dir + "/v2.qcow2", "100M"])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "refcount_bits=1,lazy_refcounts=on", dir + "/lazy.qcow2", "3G"])
        try must("qemu-img", ["create", "-q", "-f", "raw", dir + "/r.raw", "10M"])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2", dir + "/ov.qcow2"], cwd: dir)
        try must("qemu-img", ["snapshot", "-c", "snap1", dir + "/v2.qcow2"])
        for name in ["v3.qcow2", "v2.qcow2", "lazy.qcow2", "r.raw"] { try compareInfo(dir + "/" + name) }
        try compareInfo("ov.qcow2", cwd: dir)
        try compareInfo(dir + "/ov.qcow2")
        // Images Keel creates look the same to qemu-img as qemu-img's own.
        XCTAssertEqual(try keel(["create", "-q", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2", "kov.qcow2"], cwd: dir).status, 0)
        let theirs = try json(try must("qemu-img", ["info", "--output", "json", "ov.qcow2"], cwd: dir))
        let ours = try json(try must("qemu-img", ["info", "--output", "json", "kov.qcow2"], cwd: dir))
        for key in ["virtual-size", "cluster-size", "format", "backing-filename", "backing-filename-format", "format-specific"] {
            XCTAssertEqual(try canonical(theirs[key] ?? "-"), try canonical(ours[key] ?? "-"), key)
        }
        let human = try keel(["info", dir + "/ov.qcow2"])
        XCTAssertTrue(human.stdout.contains("virtual size: 1 GiB (1073741824 bytes)"), human.stdout)
        XCTAssertTrue(human.stdout.contains("backing file format: qcow2"), human.stdout)
    }

    func testCreateOptionsCrossChecked() throws {
        for (opts, cs, bits, compat) in [("cluster_size=4k,refcount_bits=1", 4096, 1, "1.1"), ("cluster_size=2M,refcount_bits=64", 2 << 20, 64, "1.1"),
                                         ("compat=0.10", 65536, 16, "0.10"), ("cluster_size=512", 512, 16, "1.1")] {
            let path = dir + "/c.qcow2"
            XCTAssertEqual(try keel(["create", "-q", "-f", "qcow2", "-o", opts, path, "1.5G"]).status, 0)
            try assertQemuCheckClean(path)
            let info = try json(try must("qemu-img", ["info", "--output", "json", path]))
            XCTAssertEqual(info["virtual-size"] as? Int, 1536 << 20)
            XCTAssertEqual(info["cluster-size"] as? Int, cs)
            let data = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
            XCTAssertEqual(data?["refcount-bits"] as? Int, bits)
            XCTAssertEqual(data?["compat"] as? String, compat)
            try must("qemu-io", ["-c", "write -P 0x3c 1G 1M", "-c", "read -P 0x3c 1G 1M", path])
        }
        let bad = try keel(["create", "-f", "qcow2", "-o", "cluster_size=1000", dir + "/x.qcow2", "1M"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("1000"), bad.stderr)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1)
        let badSize = try keel(["create", "-f", "raw", dir + "/y.raw", "12Q"])
        XCTAssertTrue(badSize.stderr.contains("12Q"), badSize.stderr)
    }

    func testConvertBothWays() throws {
        let raw = dir + "/src.raw"
        try must("qemu-img", ["create", "-q", "-f", "raw", raw, "64M"])
        try must("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 3M", "-c", "write -P 0x33 63M 1M", raw])
        for extra in [[], ["-o", "cluster_size=4k"], ["-o", "compat=0.10"], ["-o", "cluster_size=2M,refcount_bits=1"]] {
            let q = dir + "/out.qcow2", back = dir + "/back.raw"
            XCTAssertEqual(try keel(["convert", "-f", "raw", "-O", "qcow2"] + extra + [raw, q]).status, 0)
            try assertQemuCheckClean(q)
            try must("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", raw, q])
            XCTAssertEqual(try keel(["convert", "-O", "raw", q, back]).status, 0)
            XCTAssertEqual(try readFileBytes(back), try readFileBytes(raw))
            // Sparse: the holes stay holes.
            XCTAssertLessThan(allocated(back), 8 << 20)
        }
        // qcow2 -> qcow2 over a backing chain and compressed clusters flattens it.
        let comp = dir + "/comp.qcow2", top = dir + "/top.qcow2", flat = dir + "/flat.qcow2"
        try must("qemu-img", ["convert", "-c", "-O", "qcow2", raw, comp])
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "comp.qcow2", "-F", "qcow2", top], cwd: dir)
        try must("qemu-io", ["-c", "write -P 0x44 5M 1M", top])
        XCTAssertEqual(try keel(["convert", "-O", "qcow2", top, flat]).status, 0)
        try assertQemuCheckClean(flat)
        try must("qemu-img", ["compare", top, flat])
        let info = try must("qemu-img", ["info", flat])
        XCTAssertFalse(info.contains("backing file"), info)
    }

    func allocated(_ path: String) -> Int {
        var st = stat()
        stat(path, &st)
        return Int(st.st_blocks) * 512
    }

    func testCheckReportsAndRepairsLeaks() throws {
        let path = dir + "/leaky.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", path, "16M"])
        try must("qemu-io", ["-c", "write -P 0x12 0 64k", path])
        XCTAssertEqual(try keel(["check", path]).status, 0)
        // Leaks: the header's and the refcount table's clusters counted twice.
        let dev = try openRW(path) as! Qcow2Image
        try dev.debugAddReference(clusterIndex: 0)
        try dev.debugAddReference(clusterIndex: 1)
        try dev.flush()
        dev.close()
        let q = try BlockTests.run("qemu-img", ["check", path])
        XCTAssertEqual(q.status, 3, q.stdout)
        let k = try keel(["check", path])
        XCTAssertEqual(k.status, 3, k.stdout)
        XCTAssertTrue(k.stdout.contains("2 leaked clusters were found on the image."), k.stdout)
        XCTAssertTrue(k.stdout.contains("Leaked cluster 0 refcount=2 reference=1"), k.stdout)
        let fixed = try keel(["check", "-r", "leaks", path])
        XCTAssertEqual(fixed.status, 0, fixed.stdout + fixed.stderr)
        XCTAssertTrue(fixed.stdout.contains("2 leaked clusters"), fixed.stdout)
        try assertQemuCheckClean(path)
        // A corruption: a referenced cluster with refcount 0 (qemu-img check exit 2 for both).
        let dev2 = try openRW(path) as! Qcow2Image
        try dev2.debugSetRefcount(clusterIndex: 3, 0)
        dev2.close()
        XCTAssertEqual(try BlockTests.run("qemu-img", ["check", path]).status, 2)
        let c = try keel(["check", path])
        XCTAssertEqual(c.status, 2, c.stdout)
        XCTAssertTrue(c.stdout.contains("ERROR cluster 3 refcount=0 reference=1"), c.stdout)
        XCTAssertEqual(try keel(["check", "-r", "all", path]).status, 0)
        try assertQemuCheckClean(path)
        let raw = dir + "/r.raw"
        try must("qemu-img", ["create", "-q", "-f", "raw", raw, "1M"])
        XCTAssertEqual(try keel(["check", raw]).status, 63)
    }

    func testDirtyImageFromLazyRefcountsIsRepairedOnOpen() throws {
        let path = dir + "/lazy.qcow2"
        try must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", path, "16M"])
        // qemu-io -c abort leaves the image dirty with refcounts not updated.
        _ = try BlockTests.run("qemu-io", ["-c", "write -P 0x5a 0 1M", "-c", "abort", path])
        let before = try must("qemu-img", ["info", "--output", "json", path])
        XCTAssertTrue(before.contains("\"dirty-flag\": true"), before)
        let ro = try openRO(path)
        let data = try readAll(ro)
        XCTAssertEqual(data[0], 0x5a)
        ro.close()
        let rw = try openRW(path)
        try writeBytes(rw, [1, 2, 3], at: 2 << 20)
        rw.close()
        try assertQemuCheckClean(path)
        let after = try must("qemu-img", ["info", "--output", "json", path])
        XCTAssertTrue(after.contains("\"dirty-flag\": false"), after)
        try must("qemu-io", ["-c", "read -P 0x5a 0 1M", path])
    }

    func testRawFileDeviceCacheModes() throws {
        let path = dir + "/cm.raw"
        try must("qemu-img", ["create", "-q", "-f", "raw", path, "4M"])
        for mode in CacheMode.allCases {
            let opened = Result { try RawFileDevice(path: path, readOnly: false, cache: mode) }
            if case .failure(let e) = opened, mode == .none || mode == .directsync {
                throw XCTSkip("O_DIRECT unsupported on this file system: \(e)")
            }
            let dev = try opened.get()
            // Unaligned offset, length and buffer: O_DIRECT goes through bounce buffers.
            let data = (0..<10001).map { UInt8(truncatingIfNeeded: $0 * 13 + mode.rawValue.count) }
            try writeBytes(dev, data, at: 777)
            var back = [UInt8](repeating: 0, count: 10001)
            try back.withUnsafeMutableBytes { try dev.read(into: $0, at: 777) }
            XCTAssertEqual(back, data, "\(mode)")
            try dev.flush()
            try dev.writeZeroes(offset: 1000, length: 5000, mayUnmap: true)
            try dev.discard(offset: 1 << 20, length: 1 << 20)
            try back.withUnsafeMutableBytes { try dev.read(into: $0, at: 777) }
            XCTAssertEqual(Array(back[223..<5223]), [UInt8](repeating: 0, count: 5000))
            XCTAssertEqual(back[5223], data[5223])
            XCTAssertThrowsError(try dev.read(into: UnsafeMutableRawBufferPointer(start: &back, count: 16), at: (4 << 20) - 8))
            dev.close()
        }
        let st = try RawFileDevice(path: path, readOnly: true)
        XCTAssertEqual(try st.blockStatus(offset: 3 << 20, length: 1 << 20), BlockStatus(isZero: true, length: 1 << 20))
        XCTAssertFalse(try st.blockStatus(offset: 0, length: 4096).isZero)
        XCTAssertThrowsError(try writeBytes(st, [1], at: 0))
    }
}
