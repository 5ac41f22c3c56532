@testable import Block
import Foundation
import XCTest

/// Many qcow2 requests at once (the data transfers run outside the image's lock): writes that
/// allocate the same cluster from several threads, reads of clusters being allocated, vectored
/// requests over several host ranges. Every result is compared byte for byte with a model.
final class Qcow2ConcurrencyTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 { s &+= 0x9e37_79b9_7f4a_7c15; var z = s; z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9; z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb; return z ^ (z >> 31) }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// Writes `data` through `segments` buffers of uneven sizes (a virtio-blk chain's shape).
    func writeSplit(_ dev: BlockDevice, _ data: [UInt8], at offset: UInt64, pieces: Int) throws {
        var copy = data
        try copy.withUnsafeMutableBytes { (p: UnsafeMutableRawBufferPointer) throws in
            try dev.writeVectored(split(p, pieces), at: offset)
        }
    }

    func split(_ p: UnsafeMutableRawBufferPointer, _ pieces: Int) -> [UnsafeMutableRawBufferPointer] {
        var out: [UnsafeMutableRawBufferPointer] = []
        var at = 0
        for k in 0..<pieces {
            let n = k == pieces - 1 ? p.count - at : min(p.count - at, (p.count / pieces) + (k % 2 == 0 ? 7 : -7))
            guard n > 0 else { continue }
            out.append(UnsafeMutableRawBufferPointer(rebasing: p[at..<(at + n)]))
            at += n
        }
        return out
    }

    func readSplit(_ dev: BlockDevice, _ count: Int, at offset: UInt64, pieces: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: count)
        try out.withUnsafeMutableBytes { (p: UnsafeMutableRawBufferPointer) throws in
            try dev.readVectored(into: split(p, pieces), at: offset)
        }
        return out
    }

    /// Each of 8 threads owns one eighth of every cluster and writes random runs inside it, so
    /// every cluster is allocated by several requests at once; each thread reads its runs back
    /// right away (while others allocate the same clusters) and the whole disk matches at the end.
    func testWritersSharingClustersMatchTheModel() throws {
        for (cluster, file) in [(4096, "c4k"), (65536, "c64k")] {
            let path = dir + "/\(file).qcow2"
            var o = Qcow2CreateOptions(size: 4 << 20)
            o.clusterSize = cluster
            try Qcow2Image.create(path: path, options: o)
            let dev = try openRW(path) as! Qcow2Image
            let size = Int(dev.size), threads = 8, share = cluster / threads
            let model = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: size)
            model.initialize(repeating: 0)
            defer { model.deallocate() }
            let failures = Locked<[String]>([])
            DispatchQueue.concurrentPerform(iterations: threads) { t in
                var rng = Rng(s: UInt64(t + 1) * 77)
                for i in 0..<400 {
                    // First every thread walks the clusters in the same order (so they allocate
                    // the same cluster at the same time), then random ones.
                    let c = i < min(128, size / cluster) ? i : rng.below(size / cluster)
                    let start = rng.below(share), length = rng.below(share - start) + 1
                    let offset = c * cluster + t * share + start
                    let byte = UInt8(truncatingIfNeeded: t * 31 + i + 1)
                    let data = (0..<length).map { byte &+ UInt8(truncatingIfNeeded: $0 / 512) }
                    do {
                        try writeSplit(dev, data, at: UInt64(offset), pieces: 1 + rng.below(3))
                        for k in 0..<length { model[offset + k] = data[k] }
                        let own = c * cluster + t * share
                        let back = try readSplit(dev, share, at: UInt64(own), pieces: 1 + rng.below(3))
                        if !back.elementsEqual(model[own..<(own + share)]) {
                            failures.withLock { $0.append("\(file) thread \(t) op \(i): its share of cluster \(c) reads back wrong") }
                            return
                        }
                    } catch {
                        failures.withLock { $0.append("\(file) thread \(t) op \(i): \(error)") }
                        return
                    }
                }
            }
            XCTAssertEqual(failures.withLock { $0 }, [])
            XCTAssertNil(firstDifference(try readAll(dev), Array(model)), "\(file): the disk matches the model")
            dev.close()
            try assertQemuCheckClean(path)
            XCTAssertNil(firstDifference(try qemuRaw(path, in: dir), Array(model)), "\(file): qemu-img reads the model")
        }
    }

    /// Multi-cluster vectored writes (aligned and not), zeroing and reads of disjoint areas from
    /// 16 threads at once: each area reads back as its last write, whole.
    func testManyRequestsInFlightOverDisjointAreas() throws {
        let path = dir + "/areas.qcow2"
        try Qcow2Image.create(path: path, options: Qcow2CreateOptions(size: 16 << 20))
        let dev = try openRW(path) as! Qcow2Image
        let area = 192 << 10, areas = Int(dev.size) / area   // 3 clusters, so 1.5 clusters unaligned
        let versions = Locked<[Int: UInt8]>([:])   // what each area last had written, by its byte
        let failures = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 16) { t in
            var rng = Rng(s: UInt64(t) &* 1_000_003 &+ 5)
            for i in 0..<60 {
                // Threads own areas t, t+16, ...: writes within an area are not concurrent.
                let mine = (0..<(areas / 16)).map { $0 * 16 + t }
                let a = mine[rng.below(mine.count)]
                // Odd areas start mid-cluster.
                let offset = a * area + (a % 2) * (32 << 10)
                let length = area - (32 << 10)
                let byte = UInt8(truncatingIfNeeded: (t << 4) + i % 16 + 1)
                do {
                    switch rng.below(5) {
                    case 0:
                        try dev.writeZeroes(offset: UInt64(offset), length: UInt64(length), mayUnmap: rng.below(2) == 0)
                        versions.withLock { $0[offset] = 0 }
                    case 1:
                        let back = try readSplit(dev, length, at: UInt64(offset), pieces: 4)
                        let expect = versions.withLock { $0[offset] } ?? 0
                        if back.contains(where: { $0 != expect }) {
                            failures.withLock { $0.append("thread \(t) op \(i): area at \(offset) does not read back as its last write") }
                        }
                    default:
                        try writeSplit(dev, [UInt8](repeating: byte, count: length), at: UInt64(offset), pieces: 1 + rng.below(16))
                        versions.withLock { $0[offset] = byte }
                    }
                } catch {
                    failures.withLock { $0.append("thread \(t) op \(i): \(error)") }
                }
            }
        }
        XCTAssertEqual(failures.withLock { $0 }, [])
        try dev.flush()
        dev.close()
        try assertQemuCheckClean(path)
        XCTAssertEqual(try keel(["check", path]).status, 0)
    }

    /// A discard while a transfer mapped before it still runs must not let the freed cluster go
    /// to other data before the transfer ends: frees wait for the transfers in flight.
    func testFreesWaitForTransfersInFlight() throws {
        let path = dir + "/frees.qcow2"
        try Qcow2Image.create(path: path, options: Qcow2CreateOptions(size: 1 << 20))
        let dev = try openRW(path) as! Qcow2Image
        try writeBytes(dev, [UInt8](repeating: 1, count: 65536), at: 0)
        var extents: [BlockHostExtent] = []
        XCTAssertTrue(dev.beginDirectIO(offset: 0, length: 65536, isWrite: true, into: &extents))
        XCTAssertEqual(extents.count, 1)
        let host = try XCTUnwrap(extents.first?.hostOffset)
        try dev.discard(offset: 0, length: 65536)
        try dev.flush()
        XCTAssertEqual(try dev.refcount(host >> 16), 1, "the discarded cluster stays counted while a transfer may still write it")
        dev.endDirectIO()
        try dev.flush()
        XCTAssertEqual(try dev.refcount(host >> 16), 0, "and is freed at the next write-back after it ended")
        // A direct mapping refuses what needs format work.
        XCTAssertFalse(dev.beginDirectIO(offset: 65536, length: 4096, isWrite: true, into: &extents), "unallocated: allocation needed")
        XCTAssertTrue(dev.beginDirectIO(offset: 65536, length: 4096, isWrite: false, into: &extents))
        XCTAssertEqual(extents, [BlockHostExtent(requestOffset: 0, length: 4096, hostOffset: nil)])
        dev.endDirectIO()
        dev.close()
        try assertQemuCheckClean(path)
    }
}

/// A lock around a value, for the test threads.
final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func withLock<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&value) }
}
