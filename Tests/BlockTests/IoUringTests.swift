@testable import Block
import Foundation
import Glibc
import XCTest

/// The io_uring wrapper on a real file (in the build directory: tmpfs has no O_DIRECT), and
/// cache=none's O_DIRECT open.
final class IoUringTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        directory = root.appendingPathComponent(".build/keel-uring-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    func makeRing() throws -> IoUring {
        do { return try IoUring(entries: 8) } catch {
            throw XCTSkip("io_uring is unavailable here: \(error)")
        }
    }

    /// Waits for `count` completions (polling: no loop here).
    func completions(_ ring: IoUring, _ count: Int) -> [UInt64: Int32] {
        var got: [UInt64: Int32] = [:]
        let deadline = Date().addingTimeInterval(5)
        while got.count < count && Date() < deadline {
            ring.reap { got[$0] = $1 }
            if got.count < count { usleep(200) }
        }
        return got
    }

    func testVectoredWriteReadFdatasyncAndFallocate() throws {
        let ring = try makeRing()
        let path = directory.appendingPathComponent("f.raw").path
        FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20))
        let file = try RawFileDevice(path: path, readOnly: false, cache: .none)
        defer { file.close() }
        let a = UnsafeMutableRawBufferPointer(start: RawFileDevice.alignedBuffer(8192)!, count: 8192)
        let b = UnsafeMutableRawBufferPointer(start: RawFileDevice.alignedBuffer(4096)!, count: 4096)
        defer { free(a.baseAddress); free(b.baseAddress) }
        for i in 0..<a.count { a[i] = UInt8(truncatingIfNeeded: i &* 31) }
        for i in 0..<b.count { b[i] = 0xB7 }
        XCTAssertTrue(file.transfersDirectly([a, b], at: 65536))
        XCTAssertFalse(file.transfersDirectly([UnsafeMutableRawBufferPointer(rebasing: a[512..<1024])], at: 0), "O_DIRECT needs 4 KiB alignment")
        var iov = [iovec(iov_base: a.baseAddress, iov_len: a.count), iovec(iov_base: b.baseAddress, iov_len: b.count)]
        try iov.withUnsafeBufferPointer { v in
            XCTAssertTrue(ring.prepare(.writev(fd: file.fd, iovecs: v.baseAddress!, count: 2, offset: 65536), token: 1))
            XCTAssertEqual(ring.submit(), 1)
            XCTAssertEqual(completions(ring, 1), [1: 12288])
        }
        XCTAssertTrue(ring.prepare(.fdatasync(fd: file.fd), token: 2))
        XCTAssertTrue(ring.prepare(.fallocate(fd: file.fd, mode: 0x10 | 0x01 /* ZERO_RANGE | KEEP_SIZE */, offset: 65536, length: 4096), token: 3))
        ring.submit()
        XCTAssertEqual(completions(ring, 2), [2: 0, 3: 0])
        memset(a.baseAddress!, 0, a.count); memset(b.baseAddress!, 0, b.count)
        iov = [iovec(iov_base: b.baseAddress, iov_len: b.count), iovec(iov_base: a.baseAddress, iov_len: a.count)]
        try iov.withUnsafeBufferPointer { v in
            XCTAssertTrue(ring.prepare(.readv(fd: file.fd, iovecs: v.baseAddress!, count: 2, offset: 65536), token: 4))
            ring.submit()
            XCTAssertEqual(completions(ring, 1), [4: 12288])
        }
        XCTAssertEqual(Array(b), [UInt8](repeating: 0, count: 4096), "the zeroed range")
        XCTAssertEqual(Array(a[0..<4096]), (4096..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        XCTAssertEqual(Array(a[4096..<8192]), [UInt8](repeating: 0xB7, count: 4096))
        XCTAssertEqual(ring.readyCompletions, 0)
    }

    /// cache=none where O_DIRECT cannot open: the error names the file and cache=none. (tmpfs
    /// has O_DIRECT since Linux 6.6; procfs files still refuse it.)
    func testCacheNoneOnAFileSystemWithoutDirectIO() throws {
        let path = "/proc/version"
        XCTAssertThrowsError(try RawFileDevice(path: path, readOnly: true, cache: .none)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path) && text.contains("cache=none") && text.contains("O_DIRECT"), text)
        }
    }
}
