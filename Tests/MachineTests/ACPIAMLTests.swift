import XCTest
@testable import Machine

/// The AML encoder against encodings worked out by hand from ACPI 6.x §20.
final class ACPIAMLTests: XCTestCase {
    func testPackageLength() throws {
        XCTAssertEqual(try AMLEncoding.packageLength(0), [0x01])
        XCTAssertEqual(try AMLEncoding.packageLength(0x3E), [0x3F])
        // 0x3F body bytes + 2 length bytes = 0x41: low nibble in byte 0, the rest in byte 1.
        XCTAssertEqual(try AMLEncoding.packageLength(0x3F), [0x41, 0x04])
        XCTAssertEqual(try AMLEncoding.packageLength(0xFFD), [0x4F, 0xFF])
        XCTAssertEqual(try AMLEncoding.packageLength(0xFFE), [0x81, 0x00, 0x01])  // 0x1001
        XCTAssertEqual(try AMLEncoding.packageLength(0xFFFFC), [0x8F, 0xFF, 0xFF])
        XCTAssertEqual(try AMLEncoding.packageLength(0xFFFFD), [0xC1, 0x00, 0x00, 0x01])
        XCTAssertThrowsError(try AMLEncoding.packageLength(1 << 28))
    }

    func testNameStrings() throws {
        XCTAssertEqual(try AMLEncoding.nameString("_HID"), Array("_HID".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("_S5"), Array("_S5_".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("\\_SB"), [0x5C] + Array("_SB_".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("\\_SB.PCI0"), [0x5C, 0x2E] + Array("_SB_PCI0".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("\\_SB.PCI0.ISA"), [0x5C, 0x2F, 3] + Array("_SB_PCI0ISA_".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("^^FOO"), [0x5E, 0x5E] + Array("FOO_".utf8))
        XCTAssertEqual(try AMLEncoding.nameString("\\"), [0x5C, 0x00])
        for bad in ["1ABC", "ABCDE", "a", "\\_SB..X", "A-B", ""] where bad != "" {
            XCTAssertThrowsError(try AMLEncoding.nameString(bad), bad)
        }
    }

    func testIntegers() throws {
        XCTAssertEqual(try AML.integer(0).encoded(), [0x00])
        XCTAssertEqual(try AML.integer(1).encoded(), [0x01])
        XCTAssertEqual(try AML.integer(0xFF).encoded(), [0x0A, 0xFF])
        XCTAssertEqual(try AML.integer(0x100).encoded(), [0x0B, 0x00, 0x01])
        XCTAssertEqual(try AML.integer(0x1_0000).encoded(), [0x0C, 0x00, 0x00, 0x01, 0x00])
        XCTAssertEqual(try AML.integer(0x1_0000_0000).encoded(), [0x0E, 0, 0, 0, 0, 1, 0, 0, 0])
    }

    func testEisaID() throws {
        XCTAssertEqual(try AMLEncoding.eisaID("PNP0501"), 0x0105_D041)
        XCTAssertEqual(try AMLEncoding.eisaID("PNP0B00"), 0x000B_D041)
        XCTAssertEqual(try AMLEncoding.eisaID("PNP0303"), 0x0303_D041)
        XCTAssertThrowsError(try AMLEncoding.eisaID("PNP050"))
        XCTAssertThrowsError(try AMLEncoding.eisaID("pnp0501"))
        XCTAssertThrowsError(try AMLEncoding.eisaID("PNP050G"))
    }

    func testStringsNamesAndPackages() throws {
        XCTAssertEqual(try AML.name("_HID", .string("ACPI0007")).encoded(),
                       [0x08] + Array("_HID".utf8) + [0x0D] + Array("ACPI0007".utf8) + [0x00])
        XCTAssertThrowsError(try AML.string("é").encoded())
        XCTAssertEqual(try AML.package([.integer(5), .integer(0)]).encoded(), [0x12, 0x05, 0x02, 0x0A, 0x05, 0x00])
        XCTAssertThrowsError(try AML.package(Array(repeating: .integer(0), count: 256)).encoded())
    }

    func testScopeDeviceMethod() throws {
        let m = try AML.method("_STA", argumentCount: 0, serialized: false, [.return(.integer(0x0F))]).encoded()
        XCTAssertEqual(m, [0x14, 0x09] + Array("_STA".utf8) + [0x00, 0xA4, 0x0A, 0x0F])
        XCTAssertEqual(try AML.method("FOO", argumentCount: 2, serialized: true, []).encoded()[6], 0x0A)
        XCTAssertThrowsError(try AML.method("FOO", argumentCount: 8, serialized: false, []).encoded())
        let d = try AML.device("COM1", [.name("_UID", .integer(1))]).encoded()
        XCTAssertEqual(d, [0x5B, 0x82, 0x0B] + Array("COM1".utf8) + [0x08] + Array("_UID".utf8) + [0x01])
        let s = try AML.scope("\\_SB", []).encoded()
        XCTAssertEqual(s, [0x10, 0x06, 0x5C] + Array("_SB_".utf8))
    }

    func testResourceTemplate() throws {
        let b = try AML.resourceTemplate([
            .io(minimum: 0x3F8, maximum: 0x3F8, alignment: 0, length: 8),
            .irqNoFlags([4]),
        ]).encoded()
        let descriptors: [UInt8] = [0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79]
        let checksum = 0 &- descriptors.reduce(UInt8(0), &+)
        XCTAssertEqual(b, [0x11, 0x10, 0x0A, 0x0D] + descriptors + [checksum])
        XCTAssertEqual(b.dropFirst(4).reduce(UInt8(0), &+), 0)
        XCTAssertThrowsError(try AML.resourceTemplate([.irqNoFlags([16])]))
        XCTAssertThrowsError(try AML.resourceTemplate([.io(minimum: 2, maximum: 1, alignment: 1, length: 1)]))
    }
}
