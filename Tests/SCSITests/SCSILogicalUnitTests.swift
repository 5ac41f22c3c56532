import Block
@testable import SCSI
import XCTest

final class SCSILogicalUnitTests: XCTestCase {
    let blocks = 2048   // 1 MiB
    func makeUnit(readOnly: Bool = false, serial: String = "SER123") -> (SCSILogicalUnit, MemoryDisk) {
        let disk = MemoryDisk(size: blocks * 512)
        var c = SCSILogicalUnit.Configuration()
        c.serial = serial
        c.readOnly = readOnly
        return (SCSILogicalUnit(backend: disk, configuration: c), disk)
    }

    func assertCheck(_ e: Exchange, key: UInt8, asc: UInt8, ascq: UInt8 = 0, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(e.result.status, .checkCondition, file: file, line: line)
        XCTAssertEqual(e.result.sense.count, 18, file: file, line: line)
        XCTAssertEqual(e.result.sense.first, 0x70, "fixed format, current", file: file, line: line)
        XCTAssertEqual(e.result.sense.count >= 8 ? e.result.sense[7] : 0, 10, file: file, line: line)
        XCTAssertEqual(e.senseKey, key, file: file, line: line)
        XCTAssertEqual(e.asc, asc, file: file, line: line)
        XCTAssertEqual(e.ascq, ascq, file: file, line: line)
        XCTAssertEqual(e.result.dataInLength, 0, file: file, line: line)
    }

    func testTestUnitReadyAndUnknownOpcode() {
        let (u, _) = makeUnit()
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x00]), buffers: $0) }.result, .good())
        for op: UInt8 in [0x15, 0x55, 0x04, 0xA3, 0x2F, 0x37, 0xC0, 0xFF, 0x7F] {
            assertCheck(exchange { u.execute(cdb: cdb([op]), buffers: $0) }, key: 5, asc: 0x20)
        }
        assertCheck(exchange { u.execute(cdb: [], buffers: $0) }, key: 5, asc: 0x20)
        assertCheck(exchange { u.execute(cdb: [0x28, 0, 0], buffers: $0) }, key: 5, asc: 0x20)   // shorter than its group
        // SERVICE ACTION IN(16) with an action other than READ CAPACITY(16).
        assertCheck(exchange { u.execute(cdb: cdb([0x9E, 0x12]), buffers: $0) }, key: 5, asc: 0x24)
        // NACA in the CONTROL byte.
        assertCheck(exchange { u.execute(cdb: cdb([0x00, 0, 0, 0, 0, 0x04]), buffers: $0) }, key: 5, asc: 0x24)
    }

    func testStandardInquiry() {
        let (u, _) = makeUnit()
        let e = exchange { u.execute(cdb: cdb([0x12, 0, 0, 0, 96, 0]), buffers: $0) }
        XCTAssertEqual(e.result.status, .good)
        XCTAssertEqual(e.result.dataInLength, 36)
        let d = e.data
        XCTAssertEqual(d[0], 0x00)               // connected, direct access block device
        XCTAssertEqual(d[1] & 0x80, 0)           // not removable
        XCTAssertEqual(d[2], 0x06)               // SPC-4
        XCTAssertEqual(d[3] & 0x0F, 2)           // response data format
        XCTAssertEqual(Int(d[4]) + 5, 36)
        XCTAssertEqual(d[7] & 0x02, 0x02)        // CMDQUE
        XCTAssertEqual(String(decoding: d[8..<16], as: UTF8.self), "KEEL    ")
        XCTAssertEqual(String(decoding: d[16..<32], as: UTF8.self), "KEEL HARDDISK   ")
        XCTAssertEqual(String(decoding: d[32..<36], as: UTF8.self), "1.0 ")
        // Allocation length truncates; the buffer beyond is untouched.
        let short = exchange { u.execute(cdb: cdb([0x12, 0, 0, 0, 5, 0]), buffers: $0) }
        XCTAssertEqual(short.result.dataInLength, 5)
        XCTAssertEqual(short.dataIn[5], 0xEE)
        // A data-in buffer smaller than the allocation length gets what fits.
        let small = exchange({ u.execute(cdb: cdb([0x12, 0, 0, 0, 255, 0]), buffers: $0) }, dataInCapacity: 10)
        XCTAssertEqual(small.result.dataInLength, 10)
        // Page code without EVPD, CMDDT, unknown VPD page.
        assertCheck(exchange { u.execute(cdb: cdb([0x12, 0, 0x80, 0, 96, 0]), buffers: $0) }, key: 5, asc: 0x24)
        assertCheck(exchange { u.execute(cdb: cdb([0x12, 2, 0, 0, 96, 0]), buffers: $0) }, key: 5, asc: 0x24)
        let bad = exchange { u.execute(cdb: cdb([0x12, 1, 0x89, 0, 96, 0]), buffers: $0) }
        assertCheck(bad, key: 5, asc: 0x24)
        XCTAssertEqual(Array(bad.result.sense[15...17]), [0xC0, 0, 2], "sense-key specific: CDB byte 2")
    }

    func vpd(_ u: SCSILogicalUnit, _ page: UInt8) -> [UInt8] {
        let e = exchange { u.execute(cdb: cdb([0x12, 1, page, 1, 0, 0]), buffers: $0) }
        XCTAssertEqual(e.result.status, .good, "page \(page)")
        let d = e.data
        XCTAssertEqual(d.count >= 4 ? d[1] : 0xFF, page)
        XCTAssertEqual(d.count, d.count >= 4 ? 4 + Int(d[2]) << 8 + Int(d[3]) : -1, "page length")
        return d
    }

    func testVPDPages() {
        let (u, _) = makeUnit()
        XCTAssertEqual(Array(vpd(u, 0x00)[4...]), [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])
        XCTAssertEqual(String(decoding: vpd(u, 0x80)[4...], as: UTF8.self), "SER123")
        let id = vpd(u, 0x83)
        XCTAssertEqual(id[4] & 0x0F, 2)        // ASCII
        XCTAssertEqual(id[5] & 0x3F, 1)        // association LU, T10 vendor ID
        XCTAssertEqual(Int(id[7]) + 8, id.count)
        XCTAssertEqual(String(decoding: id[8...], as: UTF8.self), "KEEL    SER123")
        let limits = vpd(u, 0xB0)
        XCTAssertEqual(limits.count, 64)
        let l = BigEndianBytes(limits)
        XCTAssertEqual(l.u32(8), SCSILogicalUnit.maxTransferBlocks)
        XCTAssertEqual(l.u32(20), SCSILogicalUnit.maxUnmapBlocks)
        XCTAssertEqual(l.u32(24), SCSILogicalUnit.maxUnmapDescriptors)
        XCTAssertEqual(l.u64(36), SCSILogicalUnit.maxWriteSameBlocks)
        XCTAssertEqual(BigEndianBytes(vpd(u, 0xB1)).u16(4), 1, "non-rotating")
        let lbp = vpd(u, 0xB2)
        XCTAssertEqual(lbp[5] & 0xE0, 0xE0)    // LBPU, LBPWS, LBPWS10
        XCTAssertEqual(lbp[6] & 0x07, 2)       // thin provisioned
        // Without a serial there is no page 80h.
        let (plain, _) = makeUnit(serial: "")
        XCTAssertEqual(Array(vpd(plain, 0x00)[4...]), [0x00, 0x83, 0xB0, 0xB1, 0xB2])
        assertCheck(exchange { plain.execute(cdb: cdb([0x12, 1, 0x80, 0, 255, 0]), buffers: $0) }, key: 5, asc: 0x24)
    }

    func testReadCapacity() {
        let (u, _) = makeUnit()
        let e10 = exchange { u.execute(cdb: cdb([0x25]), buffers: $0) }
        XCTAssertEqual(e10.data, be(UInt64(blocks - 1), 4) + be(512, 4))
        assertCheck(exchange { u.execute(cdb: cdb([0x25, 0, 0, 0, 0, 1]), buffers: $0) }, key: 5, asc: 0x24)   // LBA without PMI
        let e16 = exchange { u.execute(cdb: cdb([0x9E, 0x10] + [UInt8](repeating: 0, count: 8) + be(32, 4)), buffers: $0) }
        XCTAssertEqual(e16.result.dataInLength, 32)
        XCTAssertEqual(Array(e16.data[0..<12]), be(UInt64(blocks - 1), 8) + be(512, 4))
        XCTAssertEqual(e16.data[14] & 0x80, 0x80, "LBPME")
        let trunc = exchange { u.execute(cdb: cdb([0x9E, 0x10] + [UInt8](repeating: 0, count: 8) + be(12, 4)), buffers: $0) }
        XCTAssertEqual(trunc.result.dataInLength, 12)
    }

    func testReadWriteRoundTripAllSizes() {
        let (u, disk) = makeUnit()
        let payload = (0..<(3 * 512)).map { UInt8(truncatingIfNeeded: $0 * 13 + 5) }
        // WRITE(10) at LBA 10, 3 blocks, split across two data-out windows.
        var e = exchange({ u.execute(cdb: cdb([0x2A, 0] + be(10, 4) + [0] + be(3, 2) + [0]), buffers: $0) }, dataOut: payload, split: 700)
        XCTAssertEqual(e.result, .good())
        XCTAssertEqual(Array(disk.bytes[5120..<5120 + 1536]), payload)
        // READ(16) of the same blocks, into split windows.
        e = exchange({ u.execute(cdb: cdb([0x88, 0] + be(10, 8) + be(3, 4) + [0, 0]), buffers: $0) }, dataInCapacity: 1536, split: 100)
        XCTAssertEqual(e.result, .good(1536))
        XCTAssertEqual(e.data, payload)
        // READ(6) / WRITE(6) with a 21-bit LBA; the top 3 bits of byte 1 are not part of it.
        e = exchange({ u.execute(cdb: cdb([0x0A, 0xE0, 0, 20, 1, 0]), buffers: $0) }, dataOut: Array(payload[0..<512]))
        XCTAssertEqual(e.result, .good())
        XCTAssertEqual(Array(disk.bytes[20 * 512..<21 * 512]), Array(payload[0..<512]))
        e = exchange { u.execute(cdb: cdb([0x08, 0, 0, 20, 1, 0]), buffers: $0) }
        XCTAssertEqual(e.data, Array(payload[0..<512]))
        // READ(6) length 0 is 256 blocks.
        e = exchange({ u.execute(cdb: cdb([0x08, 0, 0, 0, 0, 0]), buffers: $0) }, dataInCapacity: 256 * 512)
        XCTAssertEqual(e.result.dataInLength, 256 * 512)
        // WRITE(16) with FUA flushes.
        let before = disk.flushes
        e = exchange({ u.execute(cdb: cdb([0x8A, 0x08] + be(0, 8) + be(1, 4) + [0, 0]), buffers: $0) }, dataOut: Array(payload[0..<512]))
        XCTAssertEqual(e.result, .good())
        XCTAssertEqual(disk.flushes, before + 1)
        // READ(10) of zero blocks transfers nothing.
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x28, 0] + be(0, 4) + [0, 0, 0, 0]), buffers: $0) }.result, .good())
    }

    func testHostileTransfers() {
        let (u, disk) = makeUnit()
        let original = disk.bytes
        // Last block is fine, one past is LBA OUT OF RANGE; 64-bit overflow likewise.
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x28, 0] + be(UInt64(blocks - 1), 4) + [0] + be(1, 2) + [0]), buffers: $0) }.result.status, .good)
        assertCheck(exchange { u.execute(cdb: cdb([0x28, 0] + be(UInt64(blocks - 1), 4) + [0] + be(2, 2) + [0]), buffers: $0) }, key: 5, asc: 0x21)
        assertCheck(exchange { u.execute(cdb: cdb([0x88, 0] + be(UInt64.max, 8) + be(2, 4) + [0, 0]), buffers: $0) }, key: 5, asc: 0x21)
        assertCheck(exchange { u.execute(cdb: cdb([0x8A, 0] + be(UInt64.max - 1, 8) + be(0xFFFF_FFFF, 4) + [0, 0]), buffers: $0) }, key: 5, asc: 0x21)
        assertCheck(exchange { u.execute(cdb: cdb([0x0A, 0x1F, 0xFF, 0xFF, 1, 0]), buffers: $0) }, key: 5, asc: 0x21)
        // A transfer longer than the buffers given is an overrun: nothing is read or written.
        let o = exchange({ u.execute(cdb: cdb([0x2A, 0] + be(0, 4) + [0] + be(4, 2) + [0]), buffers: $0) }, dataOut: [UInt8](repeating: 1, count: 1000))
        XCTAssertTrue(o.result.overrun)
        let r = exchange({ u.execute(cdb: cdb([0x28, 0] + be(0, 4) + [0] + be(4, 2) + [0]), buffers: $0) }, dataInCapacity: 2047)
        XCTAssertTrue(r.result.overrun)
        XCTAssertEqual(r.dataIn[0], 0xEE)
        // RDPROTECT / WRPROTECT.
        assertCheck(exchange { u.execute(cdb: cdb([0x28, 0x20] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, key: 5, asc: 0x24)
        assertCheck(exchange { u.execute(cdb: cdb([0x8A, 0x40] + be(0, 8) + be(1, 4) + [0, 0]), buffers: $0) }, key: 5, asc: 0x24)
        XCTAssertEqual(disk.bytes, original)
    }

    func testReadOnlyUnit() {
        let (u, disk) = makeUnit(readOnly: true)
        let original = disk.bytes
        for c in [cdb([0x2A, 0] + be(0, 4) + [0] + be(1, 2) + [0]), cdb([0x0A, 0, 0, 0, 1, 0]),
                  cdb([0x8A, 0] + be(0, 8) + be(1, 4) + [0, 0]), cdb([0x41, 0x08] + be(0, 4) + [0] + be(1, 2) + [0]),
                  cdb([0x42, 0, 0, 0, 0, 0, 0] + be(24, 2) + [0])] {
            assertCheck(exchange({ u.execute(cdb: c, buffers: $0) }, dataOut: [UInt8](repeating: 0, count: 512)), key: 7, asc: 0x27)
        }
        XCTAssertEqual(disk.bytes, original)
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x28, 0] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }.result.status, .good)
        // MODE SENSE reports WP.
        let m6 = exchange { u.execute(cdb: cdb([0x1A, 0, 0x3F, 0, 255, 0]), buffers: $0) }
        XCTAssertEqual(m6.data[2] & 0x80, 0x80)
        let m10 = exchange { u.execute(cdb: cdb([0x5A, 0, 0x3F, 0, 0, 0, 0, 1, 0, 0]), buffers: $0) }
        XCTAssertEqual(m10.data[3] & 0x80, 0x80)
    }

    func testSynchronizeCacheFlushes() {
        let (u, disk) = makeUnit()
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x35]), buffers: $0) }.result, .good())
        XCTAssertEqual(disk.flushes, 1)
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x91]), buffers: $0) }.result, .good())
        XCTAssertEqual(disk.flushes, 2)
        assertCheck(exchange { u.execute(cdb: cdb([0x35, 0] + be(UInt64(blocks), 4) + [0, 0, 1, 0]), buffers: $0) }, key: 5, asc: 0x21)
        XCTAssertEqual(disk.flushes, 2)
        disk.failNext = nil
    }

    func testModeSense() {
        let (u, _) = makeUnit()
        // MODE SENSE(6), all pages, block descriptor.
        let m = exchange { u.execute(cdb: cdb([0x1A, 0, 0x3F, 0, 255, 0]), buffers: $0) }
        XCTAssertEqual(m.result.status, .good)
        let d = m.data
        XCTAssertEqual(Int(d[0]) + 1, d.count, "mode data length")
        XCTAssertEqual(d[2] & 0x80, 0, "not write-protected")
        XCTAssertEqual(d[2] & 0x10, 0x10, "DPOFUA")
        XCTAssertEqual(d[3], 8, "block descriptor length")
        XCTAssertEqual(Array(d[4..<12]), be(UInt64(blocks), 4) + [0] + be(512, 3))
        XCTAssertEqual(d[12], 0x08); XCTAssertEqual(d[13], 0x12); XCTAssertEqual(d[14] & 0x04, 0x04, "WCE")
        XCTAssertEqual(d[32], 0x0A); XCTAssertEqual(d[33], 0x0A)
        XCTAssertEqual(d.count, 4 + 8 + 20 + 12)
        // Caching page alone with DBD; Linux's sd asks exactly this.
        let c = exchange { u.execute(cdb: cdb([0x1A, 0x08, 0x08, 0, 255, 0]), buffers: $0) }.data
        XCTAssertEqual(c.count, 4 + 20); XCTAssertEqual(c[3], 0); XCTAssertEqual(c[4], 0x08)
        // MODE SENSE(10) with LLBAA: long descriptor.
        let t = exchange { u.execute(cdb: cdb([0x5A, 0x10, 0x0A, 0, 0, 0, 0, 1, 0, 0]), buffers: $0) }.data
        XCTAssertEqual(Int(BigEndianBytes(t).u16(0)) + 2, t.count)
        XCTAssertEqual(t[4] & 1, 1, "LONGLBA")
        XCTAssertEqual(BigEndianBytes(t).u16(6), 16)
        XCTAssertEqual(BigEndianBytes(t).u64(8), UInt64(blocks))
        XCTAssertEqual(t[24], 0x0A)
        // Changeable values: nothing changes.
        let ch = exchange { u.execute(cdb: cdb([0x1A, 0x08, 0x48, 0, 255, 0]), buffers: $0) }.data
        XCTAssertEqual(ch[6], 0)
        // Saved values, unknown page, unknown subpage, reserved bits.
        assertCheck(exchange { u.execute(cdb: cdb([0x1A, 0, 0xFF, 0, 255, 0]), buffers: $0) }, key: 5, asc: 0x39)
        assertCheck(exchange { u.execute(cdb: cdb([0x1A, 0, 0x19, 0, 255, 0]), buffers: $0) }, key: 5, asc: 0x24)
        assertCheck(exchange { u.execute(cdb: cdb([0x1A, 0, 0x08, 1, 255, 0]), buffers: $0) }, key: 5, asc: 0x24)
        assertCheck(exchange { u.execute(cdb: cdb([0x1A, 0x10, 0x08, 0, 255, 0]), buffers: $0) }, key: 5, asc: 0x24)
        // Allocation length truncates.
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x1A, 0, 0x3F, 0, 4, 0]), buffers: $0) }.result.dataInLength, 4)
    }

    func testRequestSense() {
        let (u, _) = makeUnit()
        let e = exchange { u.execute(cdb: cdb([0x03, 0, 0, 0, 252, 0]), buffers: $0) }
        XCTAssertEqual(e.data.count, 18)
        XCTAssertEqual(e.data[0], 0x70); XCTAssertEqual(e.data[2], 0); XCTAssertEqual(e.data[12], 0)
        assertCheck(exchange { u.execute(cdb: cdb([0x03, 1, 0, 0, 252, 0]), buffers: $0) }, key: 5, asc: 0x24)
    }

    func testUnmap() {
        let (u, disk) = makeUnit()
        // Two descriptors: 8 blocks at 16, 1 block at the last LBA; a zero-length one is skipped.
        var list = be(46, 2) + be(48, 2) + [0, 0, 0, 0]
        list += be(16, 8) + be(8, 4) + [0, 0, 0, 0]
        list += be(UInt64(blocks - 1), 8) + be(1, 4) + [0, 0, 0, 0]
        list += be(3, 8) + be(0, 4) + [0, 0, 0, 0]
        XCTAssertEqual(exchange({ u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(UInt64(list.count), 2) + [0]), buffers: $0) }, dataOut: list).result, .good())
        XCTAssertEqual(disk.discards.map { $0.0 }, [16 * 512, UInt64(blocks - 1) * 512])
        XCTAssertEqual(disk.discards.map { $0.1 }, [8 * 512, 512])
        // Past the end.
        var bad = be(22, 2) + be(16, 2) + [0, 0, 0, 0] + be(UInt64(blocks - 1), 8) + be(2, 4) + [0, 0, 0, 0]
        assertCheck(exchange({ u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(24, 2) + [0]), buffers: $0) }, dataOut: bad), key: 5, asc: 0x21)
        // Descriptor length not a multiple of 16, or larger than the list.
        bad = be(22, 2) + be(15, 2) + [UInt8](repeating: 0, count: 20)
        assertCheck(exchange({ u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(24, 2) + [0]), buffers: $0) }, dataOut: bad), key: 5, asc: 0x26)
        bad = be(22, 2) + be(32, 2) + [UInt8](repeating: 0, count: 20)
        assertCheck(exchange({ u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(24, 2) + [0]), buffers: $0) }, dataOut: bad), key: 5, asc: 0x26)
        // List length shorter than the header; list longer than data-out; ANCHOR.
        assertCheck(exchange { u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(4, 2) + [0]), buffers: $0) }, key: 5, asc: 0x1A)
        XCTAssertTrue(exchange({ u.execute(cdb: cdb([0x42, 0, 0, 0, 0, 0, 0] + be(24, 2) + [0]), buffers: $0) }, dataOut: [0, 0]).result.overrun)
        assertCheck(exchange { u.execute(cdb: cdb([0x42, 1, 0, 0, 0, 0, 0] + be(24, 2) + [0]), buffers: $0) }, key: 5, asc: 0x24)
        XCTAssertEqual(disk.discards.count, 2)
    }

    func testWriteSame() {
        let (u, disk) = makeUnit()
        // WRITE SAME(16) with UNMAP and a zero block: the range reads as zeroes.
        var e = exchange({ u.execute(cdb: cdb([0x93, 0x08] + be(100, 8) + be(20, 4) + [0, 0]), buffers: $0) }, dataOut: [UInt8](repeating: 0, count: 512))
        XCTAssertEqual(e.result, .good())
        XCTAssertTrue(disk.bytes[100 * 512..<120 * 512].allSatisfy { $0 == 0 })
        XCTAssertNotEqual(disk.bytes[120 * 512], 0)
        // WRITE SAME(10) with a pattern block.
        let pattern = (0..<512).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }
        e = exchange({ u.execute(cdb: cdb([0x41, 0] + be(200, 4) + [0] + be(300, 2) + [0]), buffers: $0) }, dataOut: pattern)
        XCTAssertEqual(e.result, .good())
        for blk in [200, 333, 499] { XCTAssertEqual(Array(disk.bytes[blk * 512..<(blk + 1) * 512]), pattern) }
        // NDOB (16 only): zeroes without a data-out buffer.
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x93, 0x09] + be(200, 8) + be(1, 4) + [0, 0]), buffers: $0) }.result, .good())
        XCTAssertTrue(disk.bytes[200 * 512..<201 * 512].allSatisfy { $0 == 0 })
        assertCheck(exchange { u.execute(cdb: cdb([0x41, 0x01] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, key: 5, asc: 0x24)
        // Zero count (WSNZ), past the end, missing block.
        assertCheck(exchange({ u.execute(cdb: cdb([0x41, 0] + be(0, 4) + [0] + be(0, 2) + [0]), buffers: $0) }, dataOut: pattern), key: 5, asc: 0x24)
        assertCheck(exchange({ u.execute(cdb: cdb([0x93, 0] + be(UInt64(blocks - 1), 8) + be(2, 4) + [0, 0]), buffers: $0) }, dataOut: pattern), key: 5, asc: 0x21)
        XCTAssertTrue(exchange({ u.execute(cdb: cdb([0x41, 0] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, dataOut: [1, 2]).result.overrun)
    }

    func testBackendErrorsBecomeSense() {
        let (u, disk) = makeUnit()
        disk.failNext = .io
        assertCheck(exchange { u.execute(cdb: cdb([0x28, 0] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, key: 3, asc: 0x11)
        disk.failNext = .io
        assertCheck(exchange({ u.execute(cdb: cdb([0x2A, 0] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, dataOut: [UInt8](repeating: 0, count: 512)), key: 3, asc: 0x0C)
        disk.failNext = .noSpace
        assertCheck(exchange({ u.execute(cdb: cdb([0x2A, 0] + be(0, 4) + [0] + be(1, 2) + [0]), buffers: $0) }, dataOut: [UInt8](repeating: 0, count: 512)), key: 7, asc: 0x27, ascq: 7)
    }

    func testRawFileBackend() throws {
        let path = "/tmp/keel-scsi-test-\(getpid()).img"
        defer { unlink(path) }
        let fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o644); XCTAssertGreaterThanOrEqual(fd, 0); ftruncate(fd, 1 << 20); close(fd)
        let dev = try openImage(path: path, options: ImageOpenOptions(format: .raw))
        defer { dev.close() }
        let u = SCSILogicalUnit(backend: dev)
        let payload = [UInt8](repeating: 0xA5, count: 1024)
        XCTAssertEqual(exchange({ u.execute(cdb: cdb([0x2A, 0] + be(7, 4) + [0] + be(2, 2) + [0]), buffers: $0) }, dataOut: payload).result, .good())
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x35]), buffers: $0) }.result, .good())
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(Array(onDisk[7 * 512..<9 * 512]), payload)
    }

    /// A qcow2 LUN: unallocated blocks read as zeroes, a write then read returns it, and
    /// WRITE SAME with UNMAP zeroes a range, after a reopen too.
    func testQcow2Backend() throws {
        let path = "/tmp/keel-scsi-test-\(getpid()).qcow2"
        defer { unlink(path) }
        try Qcow2Image.create(path: path, options: Qcow2CreateOptions(size: 4 << 20))
        var dev = try openImage(path: path, options: ImageOpenOptions(format: .qcow2))
        var u = SCSILogicalUnit(backend: dev)
        let cap = exchange { u.execute(cdb: cdb([0x25]), buffers: $0) }
        XCTAssertEqual(cap.data, be(8191, 4) + be(512, 4))
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x28, 0] + be(100, 4) + [0] + be(2, 2) + [0]), buffers: $0) }.data, [UInt8](repeating: 0, count: 1024))
        let payload = (0..<2048).map { UInt8(truncatingIfNeeded: $0 * 3 + 1) }
        XCTAssertEqual(exchange({ u.execute(cdb: cdb([0x2A, 0] + be(100, 4) + [0] + be(4, 2) + [0]), buffers: $0) }, dataOut: payload).result, .good())
        XCTAssertTrue(exchange { u.execute(cdb: cdb([0x93, 0x08] + be(102, 8) + be(1, 4) + [0, 0]), buffers: $0) }.result.overrun,
                      "a WRITE SAME without its data-out block is an overrun, not a write")
        XCTAssertEqual(exchange({ u.execute(cdb: cdb([0x93, 0x08] + be(102, 8) + be(1, 4) + [0, 0]), buffers: $0) }, dataOut: [UInt8](repeating: 0, count: 512)).result, .good())
        XCTAssertEqual(exchange { u.execute(cdb: cdb([0x35]), buffers: $0) }.result, .good())
        dev.close()
        dev = try openImage(path: path, options: ImageOpenOptions(format: .qcow2))
        defer { dev.close() }
        u = SCSILogicalUnit(backend: dev)
        let back = exchange { u.execute(cdb: cdb([0x28, 0] + be(100, 4) + [0] + be(4, 2) + [0]), buffers: $0) }
        XCTAssertEqual(back.data, Array(payload[0..<1024]) + [UInt8](repeating: 0, count: 512) + Array(payload[1536..<2048]))
    }
}
