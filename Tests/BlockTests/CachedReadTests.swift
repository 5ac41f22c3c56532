@testable import Block
import Foundation
import Glibc
import XCTest

/// `readVectoredIfCached`: a read a loop may do itself because it waits for no disk (the page
/// cache has every byte, or the file is in memory), and refused otherwise.
final class CachedReadTests: XCTestCase {
    var directories: [String] = []

    override func tearDown() {
        for d in directories { try? FileManager.default.removeItem(atPath: d) }
    }

    /// A directory on the disk the build lives on (not tmpfs: the page cache is what is tested).
    func diskDirectory() throws -> String {
        let d = PackagePaths.root.appendingPathComponent(".build/keel-cached-read-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        directories.append(d)
        return d
    }

    func memoryDirectory() throws -> String {
        let d = "/dev/shm/keel-cached-read-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        directories.append(d)
        return d
    }

    static func pattern(_ count: Int, seed: Int = 0) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 11 &+ seed) } }

    /// Reads [offset, offset + count) in two unequal segments; nil when refused.
    func cachedRead(_ dev: BlockDevice, at offset: UInt64, count: Int, alignment: Int = 4096) -> [UInt8]? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: alignment)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let split = count / 4 & ~4095
        let segments = [UnsafeMutableRawBufferPointer(rebasing: buffer[0..<split]),
                        UnsafeMutableRawBufferPointer(rebasing: buffer[split...])]
        return dev.readVectoredIfCached(into: segments, at: offset) ? [UInt8](buffer) : nil
    }

    func refused(_ dev: BlockDevice, at offset: UInt64, count: Int) -> Bool { cachedRead(dev, at: offset, count: count) == nil }

    func testADiskFileIsReadOnlyWhileItsPagesAreCached() throws {
        let path = try diskDirectory() + "/disk.raw"
        let data = Self.pattern(1 << 20)
        FileManager.default.createFile(atPath: path, contents: Data(data))
        let file = try RawFileDevice(path: path, readOnly: false)
        defer { file.close() }
        XCTAssertFalse(file.isInMemoryFileSystem, "\(path) is meant to be on a disk")
        // Just written: in the page cache.
        XCTAssertEqual(cachedRead(file, at: 4096, count: 256 << 10), Array(data[4096..<(4096 + (256 << 10))]))
        // Written back and dropped from the cache: the read must wait for the disk, so it is refused.
        XCTAssertEqual(fsync(file.fd), 0)
        XCTAssertEqual(posix_fadvise(file.fd, 0, 0, POSIX_FADV_DONTNEED), 0)
        XCTAssertTrue(refused(file, at: 0, count: 1 << 20), "pages not in the cache")
        // The blocking path still reads it (and brings it back into the cache).
        XCTAssertEqual(try readAll(file), data)
        XCTAssertEqual(cachedRead(file, at: 0, count: 1 << 20), data)
        // Outside the disk: refused, for the blocking path to report.
        XCTAssertTrue(refused(file, at: (1 << 20) - 4096, count: 8192))
        // O_DIRECT on a disk: every read is a disk operation.
        let direct = try RawFileDevice(path: path, readOnly: true, cache: .none)
        defer { direct.close() }
        XCTAssertTrue(refused(direct, at: 0, count: 65536))
    }

    func testAFileInTmpfsIsAlwaysReadInPlace() throws {
        let path = try memoryDirectory() + "/disk.raw"
        let data = Self.pattern(1 << 20, seed: 3)
        FileManager.default.createFile(atPath: path, contents: Data(data))
        let file = try RawFileDevice(path: path, readOnly: false)
        defer { file.close() }
        XCTAssertTrue(file.isInMemoryFileSystem)
        XCTAssertEqual(cachedRead(file, at: 8192, count: 512 << 10), Array(data[8192..<(8192 + (512 << 10))]))
        // cache=none on tmpfs is still memory: aligned reads go, unaligned ones take the bounce path.
        let direct: RawFileDevice
        do { direct = try RawFileDevice(path: path, readOnly: true, cache: .none) } catch {
            XCTFail("cache=none in tmpfs: \(error)"); return
        }
        defer { direct.close() }
        XCTAssertEqual(cachedRead(direct, at: 65536, count: 65536), Array(data[65536..<131072]))
        XCTAssertTrue(refused(direct, at: 512, count: 65536), "an offset O_DIRECT does not allow")
    }

    func testQcow2ReadsInPlaceOnlyWhatItsCachedTablesMapToItsOwnFile() throws {
        let dir = try memoryDirectory()
        let base = dir + "/base.raw", overlay = dir + "/overlay.qcow2"
        let backingData = Self.pattern(4 << 20, seed: 9)
        FileManager.default.createFile(atPath: base, contents: Data(backingData))
        var o = Qcow2CreateOptions(size: 4 << 20)
        o.backingFile = base
        o.backingFormat = "raw"
        try Qcow2Image.create(path: overlay, options: o)
        let written = Self.pattern(1 << 20, seed: 5)
        do {
            let img = try openImage(path: overlay)
            try written.withUnsafeBytes { try img.write($0, at: 1 << 20) }
            try img.writeZeroes(offset: 3 << 20, length: 65536, mayUnmap: false)
            try img.flush()
            img.close()
        }
        let img = try openImage(path: overlay)
        defer { img.close() }
        XCTAssertTrue(refused(img, at: 1 << 20, count: 65536), "its L2 table is not cached yet")
        _ = try readAll(img)
        XCTAssertEqual(cachedRead(img, at: 1 << 20, count: 1 << 20), written, "allocated clusters")
        XCTAssertEqual(cachedRead(img, at: 3 << 20, count: 65536), [UInt8](repeating: 0, count: 65536), "a zero cluster")
        XCTAssertTrue(refused(img, at: 0, count: 65536), "from the backing file")
        XCTAssertTrue(refused(img, at: (2 << 20) - 65536, count: 131072), "half from the backing file")
        XCTAssertTrue(refused(img, at: 4 << 20, count: 4096), "past the end")
    }
}
