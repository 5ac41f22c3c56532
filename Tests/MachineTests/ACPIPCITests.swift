import Foundation
@testable import Machine
import XCTest

/// The PCI root bridge in the DSDT and the MCFG table, checked by decoding and by ACPICA's iasl.
final class ACPIPCITests: XCTestCase {
    let root = PCIRootConfiguration(ecamBase: 0xE000_0000, busCount: 256, ioWindow: 0x0...0xFFFF,
                                    memory32Window: 0xC000_0000...0xDFFF_FFFF, memory64Window: 0x1_4000_0000...0x9_3FFF_FFFF)

    func tables() throws -> ACPITables {
        var c = ACPIConfiguration(cpuCount: 1)
        c.pciRoot = root
        return try ACPITables.build(c, at: 0xE0000, maxSize: 0x20000)
    }

    func testMCFGEntryAndTableList() throws {
        let t = try tables()
        let mcfg = Array(try XCTUnwrap(t.table("MCFG")))
        XCTAssertEqual(mcfg.count, 36 + 8 + 16)
        XCTAssertEqual(mcfg.reduce(UInt8(0), &+), 0, "checksum")
        let base = (0..<8).reduce(UInt64(0)) { $0 | UInt64(mcfg[44 + $1]) << (8 * UInt64($1)) }
        XCTAssertEqual(base, 0xE000_0000)
        XCTAssertEqual(mcfg[54], 0); XCTAssertEqual(mcfg[55], 255)
        let xsdt = Array(try XCTUnwrap(t.table("XSDT")))
        XCTAssertEqual(xsdt.count, 36 + 3 * 8)
        let mcfgAddress = try XCTUnwrap(t.tables.first { $0.signature == "MCFG" }).address
        let third = (0..<8).reduce(UInt64(0)) { $0 | UInt64(xsdt[36 + 16 + $1]) << (8 * UInt64($1)) }
        XCTAssertEqual(third, mcfgAddress)
        XCTAssertEqual(t.tables.map(\.address), t.tables.map(\.address).sorted())
        // Without a PCI root there is no MCFG.
        XCTAssertNil(try ACPITables.build(ACPIConfiguration(cpuCount: 1), at: 0xE0000, maxSize: 0x20000).table("MCFG"))
    }

    func testIntxSwizzle() {
        XCTAssertEqual(root.intxGSI(slot: 1, pin: 0), 17)
        XCTAssertEqual(root.intxGSI(slot: 7, pin: 1), 16)
        XCTAssertEqual(root.intxGSI(slot: 31, pin: 3), 18)
    }

    func testDSDTAndMCFGDisassemble() throws {
        let t = try tables()
        guard let d = try IASL.run(["-d"], fileName: "dsdt", bytes: Array(try XCTUnwrap(t.table("DSDT")))) else { return }
        XCTAssertEqual(d.status, 0, d.output)
        for expected in ["Device (PCI0)", "PNP0A08", "PNP0A03", "WordBusNumber", "0x00FF,", "WordIO", "0x0CF7,", "0x0D00,",
                         "DWordMemory", "0xDFFFFFFF,", "QWordMemory", "0x000000093FFFFFFF,", "Name (_PRT, Package",
                         "0x0001FFFF,", "0x001FFFFF,", "Device (MRES)", "PNP0C02", "0xEFFFFFFF,"] {
            XCTAssertTrue(d.dsl.contains(expected), "DSDT lacks \(expected):\n\(d.dsl)")
        }
        for l in d.output.split(separator: "\n") where (l.contains("Error") || l.contains("Warning")) && !(l.contains("0 Errors") && l.contains("0 Warnings")) {
            XCTFail("iasl: \(l)")
        }
        guard let m = try IASL.run(["-d"], fileName: "mcfg", bytes: Array(try XCTUnwrap(t.table("MCFG")))) else { return }
        XCTAssertEqual(m.status, 0, m.output)
        XCTAssertTrue(m.dsl.contains("Base Address : 00000000E0000000"), m.dsl)
        XCTAssertTrue(m.dsl.contains("End Bus Number : FF"), m.dsl)
    }
}
