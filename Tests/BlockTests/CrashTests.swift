import Block
import Foundation
import KeelImg
import XCTest

/// `keel img x-crash-writer` killed with SIGKILL at random points: qemu-img check finds no
/// corruption (leaks are allowed, as QEMU allows) and every write completed before the last
/// completed flush is there (later ones may or may not be).
final class CrashTests: XCTestCase {
    func testSIGKILLDuringWrites() throws {
        let dir = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bs = CrashWriter.blockSize
        for (round, options) in [["-o", "cluster_size=4k"], [], ["-o", "cluster_size=512,refcount_bits=64"],
                                 ["-o", "compat=0.10,cluster_size=4k"], ["-o", "cluster_size=4k"]].enumerated() {
            let path = dir + "/crash-\(round).qcow2"
            XCTAssertEqual(try keel(["create", "-q", "-f", "qcow2"] + options + [path, "16M"]).status, 0)
            let seed = UInt64(100 + round), ops = 100_000
            let p = Process()
            p.executableURL = URL(fileURLWithPath: PackagePaths.keel)
            p.arguments = ["img", "x-crash-writer", path, "\(seed)", "\(ops)", "8"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            // Kill after a random delay, once some flushes completed.
            usleep(UInt32(150_000 + (round * 97_000) % 400_000))
            kill(p.processIdentifier, SIGKILL)
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            let flushed = text.split(separator: "\n").compactMap { $0.hasPrefix("F ") ? Int($0.dropFirst(2)) : nil }.last ?? 0
            XCTAssertGreaterThan(flushed, 0, "the writer completed some flushes before the kill")

            let check = try BlockTests.run("qemu-img", ["check", path])
            XCTAssertTrue(check.status == 0 || check.status == 3, "round \(round): qemu-img check: \(check.stdout)\(check.stderr)")

            // Which op last wrote each block as of the last flush, and which later ops touched it.
            let blocks = 16 << 20 / bs
            let plan = CrashWriter.plan(seed: seed, ops: ops, blocks: blocks)
            var owner = [UInt64](repeating: 0, count: blocks)
            var later = [[UInt64]](repeating: [], count: blocks)
            for op in plan {
                for b in op.block..<(op.block + op.count) {
                    if op.id <= UInt64(flushed) { owner[b] = op.zero ? 0 : op.id } else if later[b].count < 64 { later[b].append(op.zero ? 0 : op.id) }
                }
                if op.id > UInt64(flushed) + 50_000 { break }
            }
            let bytes = try qemuRaw(path, in: dir)
            XCTAssertEqual(try readAll(try openRO(path)), bytes, "round \(round): Keel and qemu-img read the same")
            var expected = [UInt8](repeating: 0, count: bs)
            var bad = 0
            for b in 0..<blocks {
                let slice = Array(bytes[(b * bs)..<((b + 1) * bs)])
                let candidates = [owner[b]] + later[b]
                let ok = candidates.contains { id in
                    expected.withUnsafeMutableBytes { p in
                        if id == 0 { memset(p.baseAddress!, 0, bs) } else { CrashWriter.fill(p, id: id, block: b) }
                    }
                    return expected == slice
                }
                if !ok { bad += 1; if bad < 5 { XCTFail("round \(round): block \(b) holds neither op \(owner[b]) nor a later one") } }
            }
        }
    }
}
