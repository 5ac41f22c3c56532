import Block
@testable import SCSI
import XCTest

final class SCSITargetTests: XCTestCase {
    func testReportLunsAndMissingUnits() {
        let t = SCSITarget()
        XCTAssertTrue(t.attach(SCSILogicalUnit(backend: MemoryDisk(size: 4096)), lun: 0))
        XCTAssertTrue(t.attach(SCSILogicalUnit(backend: MemoryDisk(size: 4096)), lun: 300))
        XCTAssertFalse(t.attach(SCSILogicalUnit(backend: MemoryDisk(size: 4096)), lun: 0))
        XCTAssertFalse(t.attach(SCSILogicalUnit(backend: MemoryDisk(size: 4096)), lun: 16384))
        let r = exchange { t.execute(lun: 0, cdb: cdb([0xA0, 0, 0, 0, 0, 0] + be(256, 4) + [0, 0]), buffers: $0) }
        XCTAssertEqual(r.result.status, .good)
        XCTAssertEqual(r.data, be(16, 4) + [0, 0, 0, 0] + [0, 0, 0, 0, 0, 0, 0, 0] + [0x41, 0x2C, 0, 0, 0, 0, 0, 0])
        // Works through a LUN that does not exist, too (SPC-4: any LUN answers REPORT LUNS).
        XCTAssertEqual(exchange { t.execute(lun: 5, cdb: cdb([0xA0, 0, 0, 0, 0, 0] + be(16, 4) + [0, 0]), buffers: $0) }.result.dataInLength, 16)
        // Allocation length under 16, unknown SELECT REPORT.
        let small = exchange { t.execute(lun: 0, cdb: cdb([0xA0, 0, 0, 0, 0, 0] + be(8, 4) + [0, 0]), buffers: $0) }
        XCTAssertEqual(small.result.status, .checkCondition); XCTAssertEqual(small.asc, 0x24)
        XCTAssertEqual(exchange { t.execute(lun: 0, cdb: cdb([0xA0, 0, 7, 0, 0, 0] + be(64, 4) + [0, 0]), buffers: $0) }.asc, 0x24)

        // INQUIRY to a missing LUN: qualifier 3, type 1Fh; other commands: LOGICAL UNIT NOT SUPPORTED.
        let inq = exchange { t.execute(lun: 7, cdb: cdb([0x12, 0, 0, 0, 36, 0]), buffers: $0) }
        XCTAssertEqual(inq.result.status, .good); XCTAssertEqual(inq.data.first, 0x7F)
        let tur = exchange { t.execute(lun: 7, cdb: cdb([0x00]), buffers: $0) }
        XCTAssertEqual(tur.result.status, .checkCondition); XCTAssertEqual(tur.senseKey, 5); XCTAssertEqual(tur.asc, 0x25)
        XCTAssertEqual(exchange { t.execute(lun: nil, cdb: cdb([0x28]), buffers: $0) }.asc, 0x25)
        let rs = exchange { t.execute(lun: 7, cdb: cdb([0x03, 0, 0, 0, 18, 0]), buffers: $0) }
        XCTAssertEqual(rs.result.status, .good); XCTAssertEqual(rs.data[12], 0x25)
        // A real LUN answers through the target.
        XCTAssertEqual(exchange { t.execute(lun: 300, cdb: cdb([0x12, 0, 0, 0, 36, 0]), buffers: $0) }.data.first, 0x00)
    }
}
