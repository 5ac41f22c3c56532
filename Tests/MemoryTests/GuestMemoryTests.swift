import Glibc
import Memory
import XCTest

final class GuestMemoryTests: XCTestCase {
    /// Two regions with a hole between them, like low RAM and RAM above 4 GiB.
    func makeMemory() throws -> GuestMemory {
        try GuestMemory(layout: [(0, 0x10000), (0x1_0000_0000, 0x2000)])
    }

    func testReadWriteAndLoadStoreAreLittleEndian() throws {
        let m = try makeMemory()
        try m.store(UInt32(0x1122_3344), at: 0x100)
        XCTAssertEqual(try m.readBytes(at: 0x100, count: 4), [0x44, 0x33, 0x22, 0x11])
        try m.write([1, 2, 3], at: 0x1_0000_1FFD)
        XCTAssertEqual(try m.load(UInt16.self, at: 0x1_0000_1FFE), 0x0302)
    }

    func testAccessesOutsideRAMAreRefused() throws {
        let m = try makeMemory()
        // Past the end of a region, straddling two regions, in the hole, and wrapping around 2^64.
        XCTAssertThrowsError(try m.store(UInt32(1), at: 0xFFFE))
        XCTAssertThrowsError(try m.readBytes(at: 0x2_0000, count: 1))
        XCTAssertThrowsError(try m.load(UInt64.self, at: 0x1_0000_1FF9))
        XCTAssertThrowsError(try m.load(UInt64.self, at: UInt64.max - 3))
        XCTAssertThrowsError(try m.slice(at: 0, length: 0x10001))
        XCTAssertThrowsError(try m.slice(at: 0, length: -1))
        XCTAssertNil(m.hostPointer(UInt64.max, length: 2))
        XCTAssertNoThrow(try m.slice(at: 0xFFFF, length: 1))
        XCTAssertNoThrow(try m.slice(at: 0x10000, length: 0), "an empty slice at the very end is in bounds")
    }

    func testRegionsShareOneMemfd() throws {
        let m = try makeMemory()
        XCTAssertEqual(m.regions.map(\.fileOffset), [0, 0x10000])
        try m.store(UInt8(0xAB), at: 0x1_0000_0005)
        // The second region is the memfd at offset 0x10000: another mapping of it sees the byte.
        let p = mmap(nil, 0x12000, PROT_READ, MAP_SHARED, m.fd, 0)!
        defer { munmap(p, 0x12000) }
        XCTAssertEqual(p.load(fromByteOffset: 0x10005, as: UInt8.self), 0xAB)
    }

    func testDiscardAllZeroes() throws {
        let m = try makeMemory()
        try m.store(UInt64.max, at: 0x800)
        m.discardAll()
        XCTAssertEqual(try m.load(UInt64.self, at: 0x800), 0)
    }

    /// The default RAM of a machine without a memory backend object: private, each region on a
    /// 2 MiB boundary (so transparent huge pages can back it), same checks, discard zeroes.
    func testAnonymousRAMIsHugePageAlignedAndPrivate() throws {
        let m = try GuestMemory(layout: [(0, 4 << 20), (0x1_0000_0000, 0x2000)], backing: .anonymous)
        XCTAssertEqual(m.fd, -1)
        for r in m.regions { XCTAssertEqual(Int(bitPattern: r.host) % (2 << 20), 0, "region at 0x\(String(r.guestAddress, radix: 16))") }
        try m.store(UInt64(0x0102_0304_0506_0708), at: (4 << 20) - 8)
        try m.store(UInt16(0xBEEF), at: 0x1_0000_1FFE)
        XCTAssertEqual(try m.load(UInt64.self, at: (4 << 20) - 8), 0x0102_0304_0506_0708)
        XCTAssertEqual(try m.load(UInt16.self, at: 0x1_0000_1FFE), 0xBEEF)
        XCTAssertThrowsError(try m.load(UInt32.self, at: (4 << 20) - 2))
        XCTAssertThrowsError(try m.load(UInt16.self, at: 0x1_0000_2000))
        m.discardAll()
        XCTAssertEqual(try m.load(UInt64.self, at: (4 << 20) - 8), 0)
        XCTAssertEqual(try m.load(UInt16.self, at: 0x1_0000_1FFE), 0)
    }

    func testBadLayoutIsAnError() {
        XCTAssertThrowsError(try GuestMemory(layout: [(0, 100)]))
    }
}
