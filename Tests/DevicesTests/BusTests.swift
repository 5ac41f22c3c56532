import Devices
import XCTest

/// Records every access, answering reads with a fixed pattern.
final class RecordingDevice: BusDevice {
    var log: [(write: Bool, offset: UInt64, width: Int, value: UInt64)] = []
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(0x8877_6655_4433_2211)
        log.append((false, offset, data.count, 0))
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        log.append((true, offset, data.count, data.littleEndianValue))
    }
}

final class BusTests: XCTestCase {
    func testDispatchUsesOffsetWidthAndValue() throws {
        let bus = Bus(name: "pio")
        let a = RecordingDevice(), b = RecordingDevice()
        try bus.insert(a, base: 0x3F8, size: 8, name: "uart")
        try bus.insert(b, base: 0x70, size: 2, name: "rtc")
        var v: UInt16 = 0xBEEF
        withUnsafeBytes(of: &v) { XCTAssertTrue(bus.write(0x3FB, data: $0)) }
        var r: UInt32 = 0
        withUnsafeMutableBytes(of: &r) { XCTAssertTrue(bus.read(0x71, data: $0)) }
        XCTAssertEqual(a.log.count, 1)
        XCTAssertEqual(a.log[0].offset, 3); XCTAssertEqual(a.log[0].width, 2); XCTAssertEqual(a.log[0].value, 0xBEEF)
        XCTAssertEqual(b.log[0].offset, 1); XCTAssertEqual(b.log[0].width, 4)
        XCTAssertEqual(r, 0x4433_2211)
    }

    func testUnclaimedReadsAreAllOnesAndWritesDropped() {
        let bus = Bus(name: "mmio")
        var r: UInt64 = 0
        withUnsafeMutableBytes(of: &r) { XCTAssertFalse(bus.read(0xFEB0_0000, data: $0)) }
        XCTAssertEqual(r, .max)
        var w: UInt8 = 1
        withUnsafeBytes(of: &w) { XCTAssertFalse(bus.write(0, data: $0)) }
    }

    func testOverlapsAreRefused() throws {
        let bus = Bus(name: "pio")
        try bus.insert(RecordingDevice(), base: 0x60, size: 1, name: "kbd-data")
        try bus.insert(RecordingDevice(), base: 0x64, size: 1, name: "kbd-cmd")
        XCTAssertThrowsError(try bus.insert(RecordingDevice(), base: 0x5F, size: 2, name: "x")) { e in
            XCTAssertEqual("\(e)", "bus range [0x5f, +0x2) overlaps kbd-data at 0x60")
        }
        XCTAssertThrowsError(try bus.insert(RecordingDevice(), base: 0x64, size: 1, name: "y"))
        XCTAssertThrowsError(try bus.insert(RecordingDevice(), base: 0x10, size: 0, name: "z"))
        XCTAssertNoThrow(try bus.insert(RecordingDevice(), base: 0x61, size: 3, name: "between"))
        XCTAssertNoThrow(try bus.insert(RecordingDevice(), base: UInt64.max, size: 1, name: "top"))
        XCTAssertEqual(bus.ranges.map(\.base), [0x60, 0x61, 0x64, UInt64.max])
    }

    func testLookupAtRangeEdges() throws {
        let bus = Bus(name: "mmio")
        let d = RecordingDevice()
        try bus.insert(d, base: 0x1000, size: 0x100, name: "d")
        var x: UInt8 = 0
        withUnsafeMutableBytes(of: &x) { buf in
            XCTAssertFalse(bus.read(0xFFF, data: buf))
            XCTAssertTrue(bus.read(0x1000, data: buf))
            XCTAssertTrue(bus.read(0x10FF, data: buf))
            XCTAssertFalse(bus.read(0x1100, data: buf))
        }
        XCTAssertEqual(d.log.map(\.offset), [0, 0xFF])
    }
}
