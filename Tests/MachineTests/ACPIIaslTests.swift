import Foundation
import XCTest
@testable import Machine

/// Decompiles each table with ACPICA's iasl: the same parser family Linux uses must accept them.
final class ACPIIaslTests: XCTestCase {
    private func tables(cpus: Int = 4, _ tweak: (inout ACPIConfiguration) -> Void = { _ in }) throws -> ACPITables {
        var c = ACPIConfiguration(cpuCount: cpus)
        tweak(&c)
        return try ACPITables.build(c, at: 0xE0000, maxSize: 0x20000)
    }

    /// Disassembles one table and checks iasl found nothing to complain about.
    private func disassemble(_ signature: String, as fileName: String, from t: ACPITables,
                             file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let bytes = try XCTUnwrap(t.table(signature), file: file, line: line)
        guard let r = try IASL.run(["-d"], fileName: fileName, bytes: Array(bytes), file: file, line: line) else { return "" }
        XCTAssertEqual(r.status, 0, "iasl -d \(fileName): \(r.output)", file: file, line: line)
        for text in [r.output, r.dsl] {
            for l in text.split(separator: "\n") where l.contains("Error") || l.contains("Warning")
                || l.contains("Incorrect") || l.contains("Invalid") {
                // iasl's summary line "N Errors, M Warnings" is fine when both counts are zero.
                if l.contains("0 Errors") && l.contains("0 Warnings") { continue }
                XCTFail("iasl on \(fileName): \(l)", file: file, line: line)
            }
        }
        XCTAssertFalse(r.dsl.isEmpty, "iasl wrote no \(fileName).dsl: \(r.output)", file: file, line: line)
        return r.dsl
    }

    func testDSDTDisassembles() throws {
        let dsl = try disassemble("DSDT", as: "dsdt", from: tables())
        for expected in ["PNP0501", "Name (_S5, Package (0x04)", "Name (_S0, Package (0x04)", "ACPI0007", "PNP0B00", "PNP0303", "Device (COM1)",
                         "Device (C000)", "Device (C003)", "IRQNoFlags ()", "{4}", "{8}", "{1}",
                         "0x03F8,             // Range Minimum", "0x0070,", "0x0060,", "0x0064,"] {
            XCTAssertTrue(dsl.contains(expected), "DSDT disassembly lacks \(expected):\n\(dsl)")
        }
        XCTAssertFalse(dsl.contains("Device (C004)"))
        XCTAssertFalse(dsl.contains("PNP0F13"), "no mouse unless asked for")
    }

    func testDSDTWithMouseAndWithoutRTC() throws {
        let dsl = try disassemble("DSDT", as: "dsdt", from: tables { $0.hasPS2Mouse = true; $0.hasRTC = false })
        XCTAssertTrue(dsl.contains("PNP0F13"))
        XCTAssertTrue(dsl.contains("{12}"))
        XCTAssertFalse(dsl.contains("PNP0B00"))
    }

    func testMADTDisassembles() throws {
        let dsl = try disassemble("APIC", as: "apic", from: tables())
        XCTAssertEqual(dsl.components(separatedBy: "Processor Local APIC").count - 1, 4)
        XCTAssertEqual(dsl.components(separatedBy: "Interrupt Source Override").count - 1, 2)
        XCTAssertTrue(dsl.contains("I/O APIC"))
        XCTAssertTrue(dsl.contains("FEC00000"))
        XCTAssertTrue(dsl.contains("FEE00000"))
        XCTAssertTrue(dsl.contains("Local APIC NMI"))
    }

    func testFADTDisassembles() throws {
        let dsl = try disassemble("FACP", as: "facp", from: tables())
        for expected in ["SCI Interrupt : 0009", "PM1A Event Block Address : 00000600",
                         "PM1A Control Block Address : 00000604", "PM Timer Block Address : 00000608",
                         "Value to cause reset : 06", "0000000000000CF9", "Revision : 06"] {
            XCTAssertTrue(dsl.contains(expected), "FADT disassembly lacks \(expected):\n\(dsl)")
        }
    }

    func testRootTablesAndFACSDisassemble() throws {
        let t = try tables()
        _ = try disassemble("XSDT", as: "xsdt", from: t)
        _ = try disassemble("RSDT", as: "rsdt", from: t)
        _ = try disassemble("FACS", as: "facs", from: t)
        // iasl 20200925 cannot read a bare RSDP binary (no standard header); ACPITableTests checks it.
    }

    /// Recompiling the disassembly runs the ASL compiler's semantic checks (predefined names,
    /// resource descriptors) over what Keel emitted.
    func testDSDTRecompilesCleanly() throws {
        let dsl = try disassemble("DSDT", as: "dsdt", from: tables())
        guard let iasl = IASL.path() else { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-acpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try dsl.write(to: dir.appendingPathComponent("dsdt.dsl"), atomically: true, encoding: .utf8)
        let r = try IASL.runTool(iasl, ["dsdt.dsl"], in: dir)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("0 Errors, 0 Warnings"), r.output)
    }

    /// ACPICA's interpreter (as in Linux) loads the DSDT and evaluates what the kernel will.
    func testDSDTEvaluatesInACPICA() throws {
        let t = try tables()
        let dsdt = try XCTUnwrap(t.table("DSDT"))
        guard let acpiexec = IASL.path(tool: "acpiexec") else {
            return XCTFail("acpiexec not found: install the acpica-tools package")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-acpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(dsdt).write(to: dir.appendingPathComponent("dsdt.dat"))
        let r = try IASL.runTool(acpiexec, ["-b", "evaluate \\_S5_; evaluate \\_SB.COM1._STA; evaluate \\_SB.COM1._CRS; evaluate \\_SB.C003._UID", "dsdt.dat"], in: dir)
        XCTAssertEqual(r.status, 0, r.output)
        for bad in ["Error", "Exception", "AE_", "Warning"] {
            XCTAssertFalse(r.output.contains(bad), "acpiexec reported \(bad):\n\(r.output)")
        }
        // \_S5_ = {5, 5, 0, 0}; _STA = 0xF; _CRS = IO(0x3F8, len 8) + IRQ 4 + End Tag with checksum.
        XCTAssertTrue(r.output.contains("[Package] Contains 4 Elements:"), r.output)
        XCTAssertTrue(r.output.contains("[Integer] = 0000000000000005"), r.output)
        XCTAssertTrue(r.output.contains("[Integer] = 000000000000000F"), r.output)
        XCTAssertTrue(r.output.contains("47 01 F8 03 F8 03 00 08 22 10 00 79"), r.output)
        XCTAssertTrue(r.output.contains("[Integer] = 0000000000000003"), r.output)
    }

    /// The largest configuration (255 processor devices, multi-byte PkgLengths) must still parse.
    func testLargestDSDTDisassembles() throws {
        let dsl = try disassemble("DSDT", as: "dsdt", from: tables(cpus: 255))
        XCTAssertTrue(dsl.contains("Device (C0FE)"))
        let madt = try disassemble("APIC", as: "apic", from: tables(cpus: 255))
        XCTAssertEqual(madt.components(separatedBy: "Processor Local APIC").count - 1, 255)
    }
}
