import XCTest
@testable import Machine

/// Walks the blob the way a guest does (RSDP -> XSDT/RSDT -> FADT -> DSDT/FACS, MADT) and checks
/// every checksum, length, pointer and the fields Linux depends on.
final class ACPITableTests: XCTestCase {
    let base: UInt64 = 0xE0000
    let maxSize = 0x20000

    private func build(cpus: Int = 4, _ tweak: (inout ACPIConfiguration) -> Void = { _ in }) throws -> ACPITables {
        var c = ACPIConfiguration(cpuCount: cpus)
        tweak(&c)
        return try ACPITables.build(c, at: base, maxSize: maxSize)
    }

    /// The bytes of the table at guest address `address`, after checking it lies in the blob and
    /// its header's length and checksum are right.
    private func table(at address: UInt64, in t: ACPITables, signature: String,
                       file: StaticString = #filePath, line: UInt = #line) throws -> ArraySlice<UInt8> {
        XCTAssertGreaterThanOrEqual(address, t.baseAddress, "\(signature) below the blob", file: file, line: line)
        let offset = Int(address - t.baseAddress)
        XCTAssertLessThanOrEqual(offset + 36, t.bytes.count, "\(signature) header outside the blob", file: file, line: line)
        let length = Int(t.bytes.le(UInt32.self, at: offset + 4))
        XCTAssertLessThanOrEqual(offset + length, t.bytes.count, "\(signature) outside the blob", file: file, line: line)
        let bytes = t.bytes[offset..<offset + length]
        XCTAssertEqual(bytes.ascii(at: 0, count: 4), signature, file: file, line: line)
        XCTAssertEqual(bytes.byteSum, 0, "\(signature) checksum", file: file, line: line)
        XCTAssertEqual(bytes.ascii(at: 10, count: 6), "KEEL  ", file: file, line: line)
        XCTAssertEqual(bytes.ascii(at: 16, count: 8), "KEELPC  ", file: file, line: line)
        XCTAssertEqual(bytes.ascii(at: 28, count: 4), "KEEL", file: file, line: line)
        return bytes
    }

    func testRSDPIsFindableAndValid() throws {
        let t = try build()
        XCTAssertEqual(t.baseAddress, base)
        XCTAssertLessThanOrEqual(t.bytes.count, maxSize)
        XCTAssertEqual(t.rsdpAddress % 16, 0)
        XCTAssertTrue((0xE0000..<0x100000).contains(t.rsdpAddress))
        let o = Int(t.rsdpAddress - base)
        let rsdp = t.bytes[o..<o + 36]
        XCTAssertEqual(rsdp.ascii(at: 0, count: 8), "RSD PTR ")
        XCTAssertEqual(rsdp.prefix(20).byteSum, 0, "ACPI 1.0 checksum")
        XCTAssertEqual(rsdp.byteSum, 0, "extended checksum")
        XCTAssertEqual(rsdp[rsdp.startIndex + 15], 2, "revision")
        XCTAssertEqual(rsdp.le(UInt32.self, at: 20), 36)
        XCTAssertEqual(rsdp.ascii(at: 9, count: 6), "KEEL  ")
        // What Linux's legacy scan does: the first 16-byte slot in 0xE0000-0xFFFFF with the signature.
        let slot = stride(from: 0, to: t.bytes.count, by: 16).first {
            t.bytes.count >= $0 + 8 && t.bytes.ascii(at: $0, count: 8) == "RSD PTR "
        }
        XCTAssertEqual(slot, o)
    }

    func testPointersChainThroughTheBlob() throws {
        let t = try build()
        let o = Int(t.rsdpAddress - base)
        let xsdtAddress = t.bytes.le(UInt64.self, at: o + 24)
        let rsdtAddress = UInt64(t.bytes.le(UInt32.self, at: o + 16))
        let xsdt = try table(at: xsdtAddress, in: t, signature: "XSDT")
        let rsdt = try table(at: rsdtAddress, in: t, signature: "RSDT")
        XCTAssertEqual(xsdt.count, 36 + 2 * 8)
        XCTAssertEqual(rsdt.count, 36 + 2 * 4)
        let xEntries = (0..<2).map { xsdt.le(UInt64.self, at: 36 + 8 * $0) }
        let rEntries = (0..<2).map { UInt64(rsdt.le(UInt32.self, at: 36 + 4 * $0)) }
        XCTAssertEqual(xEntries, rEntries)
        let fadt = try table(at: xEntries[0], in: t, signature: "FACP")
        _ = try table(at: xEntries[1], in: t, signature: "APIC")

        XCTAssertEqual(fadt.count, 276)
        XCTAssertEqual(fadt[fadt.startIndex + 8], 6, "FADT revision")
        let facs32 = UInt64(fadt.le(UInt32.self, at: 36)), dsdt32 = UInt64(fadt.le(UInt32.self, at: 40))
        let facs64 = fadt.le(UInt64.self, at: 132), dsdt64 = fadt.le(UInt64.self, at: 140)
        XCTAssertEqual(facs32, facs64)
        XCTAssertEqual(dsdt32, dsdt64)
        _ = try table(at: dsdt64, in: t, signature: "DSDT")
        XCTAssertEqual(facs64 % 64, 0, "FACS must be 64-byte aligned")
        let fo = Int(facs64 - base)
        XCTAssertLessThanOrEqual(fo + 64, t.bytes.count)
        XCTAssertEqual(t.bytes.ascii(at: fo, count: 4), "FACS")
        XCTAssertEqual(t.bytes.le(UInt32.self, at: fo + 4), 64)

        // No two structures overlap.
        let spans = t.tables.map { ($0.address, $0.address + UInt64($0.length)) }.sorted { $0.0 < $1.0 }
        for (a, b) in zip(spans, spans.dropFirst()) { XCTAssertLessThanOrEqual(a.1, b.0) }
        XCTAssertEqual(Set(t.tables.map(\.signature)), ["RSD PTR ", "FACS", "DSDT", "FACP", "APIC", "XSDT", "RSDT"])
    }

    func testFADTFields() throws {
        let t = try build()
        let f = try XCTUnwrap(t.table("FACP"))
        XCTAssertEqual(f.le(UInt16.self, at: 46), 9, "SCI_INT")
        XCTAssertEqual(f.le(UInt32.self, at: 48), 0, "SMI_CMD: ACPI permanently enabled")
        XCTAssertEqual(f.le(UInt32.self, at: 56), 0x600, "PM1a_EVT_BLK")
        XCTAssertEqual(f.le(UInt32.self, at: 64), 0x604, "PM1a_CNT_BLK")
        XCTAssertEqual(f.le(UInt32.self, at: 76), 0x608, "PM_TMR_BLK")
        XCTAssertEqual(Array(f[(f.startIndex + 88)...(f.startIndex + 91)]), [4, 2, 0, 4], "PM1_EVT/CNT, PM2_CNT, PM_TMR lengths")
        XCTAssertEqual(f.le(UInt16.self, at: 109), 0b0111, "IAPC_BOOT_ARCH: legacy devices, 8042, no VGA; MSI ok, RTC present")
        let flags = f.le(UInt32.self, at: 112)
        XCTAssertEqual(flags, 1 << 0 | 1 << 2 | 1 << 5 | 1 << 8 | 1 << 10, "WBINVD PROC_C1 SLP_BUTTON TMR_VAL_EXT RESET_REG_SUP")
        XCTAssertEqual(flags & (1 << 20), 0, "not hardware-reduced")
        // RESET_REG: SystemIO, 8 bits at 0xCF9; RESET_VALUE 6.
        XCTAssertEqual(Array(f[(f.startIndex + 116)..<(f.startIndex + 120)]), [1, 8, 0, 0])
        XCTAssertEqual(f.le(UInt64.self, at: 120), 0xCF9)
        XCTAssertEqual(f[f.startIndex + 128], 6)
        // X_ blocks agree with the 32-bit ones (Linux warns on a mismatch) and bit widths match lengths.
        for (offset, port, bits) in [(148, 0x600, 32), (172, 0x604, 16), (208, 0x608, 32)] {
            XCTAssertEqual(f[f.startIndex + offset], 1, "SystemIO at \(offset)")
            XCTAssertEqual(Int(f[f.startIndex + offset + 1]), bits, "bit width at \(offset)")
            XCTAssertEqual(f.le(UInt64.self, at: offset + 4), UInt64(port))
        }
        for offset in [160, 184, 196, 220, 232, 244, 256] {
            XCTAssertTrue(f[(f.startIndex + offset)..<(f.startIndex + offset + 12)].allSatisfy { $0 == 0 }, "unused GAS at \(offset)")
        }
    }

    func testBootArchitectureFollowsDevices() throws {
        let t = try build { $0.hasI8042 = false; $0.hasRTC = false; $0.hasVGA = true }
        let f = try XCTUnwrap(t.table("FACP"))
        XCTAssertEqual(f.le(UInt16.self, at: 109), 1 | 1 << 5, "legacy devices, CMOS RTC not present")
    }

    private struct MADTEntry { let type: UInt8; let bytes: ArraySlice<UInt8> }

    private func madtEntries(_ t: ACPITables) throws -> (ArraySlice<UInt8>, [MADTEntry]) {
        let m = try XCTUnwrap(t.table("APIC"))
        var entries: [MADTEntry] = []
        var o = 44
        while o < m.count {
            let len = Int(m[m.startIndex + o + 1])
            XCTAssertGreaterThan(len, 1)
            XCTAssertLessThanOrEqual(o + len, m.count, "MADT entry overruns the table")
            if len < 2 { break }
            entries.append(MADTEntry(type: m[m.startIndex + o], bytes: m[(m.startIndex + o)..<(m.startIndex + o + len)]))
            o += len
        }
        XCTAssertEqual(o, m.count)
        return (m, entries)
    }

    func testMADTDescribesCPUsIOAPICAndOverrides() throws {
        for cpus in [1, 4, 255] {
            let t = try build(cpus: cpus)
            let (m, entries) = try madtEntries(t)
            XCTAssertEqual(m.le(UInt32.self, at: 36), 0xFEE0_0000)
            XCTAssertEqual(m.le(UInt32.self, at: 40), 1, "PCAT_COMPAT")
            let lapics = entries.filter { $0.type == 0 }
            XCTAssertEqual(lapics.count, cpus)
            for (i, e) in lapics.enumerated() {
                XCTAssertEqual(e.bytes.count, 8)
                XCTAssertEqual(Int(e.bytes[e.bytes.startIndex + 2]), i, "processor UID")
                XCTAssertEqual(Int(e.bytes[e.bytes.startIndex + 3]), i, "APIC ID")
                XCTAssertEqual(e.bytes.le(UInt32.self, at: 4), 1, "enabled")
            }
            let ioapics = entries.filter { $0.type == 1 }
            XCTAssertEqual(ioapics.count, 1)
            let io = try XCTUnwrap(ioapics.first).bytes
            XCTAssertEqual(Int(io[io.startIndex + 2]), cpus, "I/O APIC ID follows the local APIC IDs")
            XCTAssertEqual(io.le(UInt32.self, at: 4), 0xFEC0_0000)
            XCTAssertEqual(io.le(UInt32.self, at: 8), 0, "GSI base")

            let overrides = entries.filter { $0.type == 2 }.map {
                (bus: $0.bytes[$0.bytes.startIndex + 2], irq: $0.bytes[$0.bytes.startIndex + 3],
                 gsi: $0.bytes.le(UInt32.self, at: 4), flags: $0.bytes.le(UInt16.self, at: 8))
            }
            XCTAssertEqual(overrides.count, 2)
            XCTAssertTrue(overrides.contains { $0.bus == 0 && $0.irq == 0 && $0.gsi == 2 && $0.flags == 0 })
            XCTAssertTrue(overrides.contains { $0.bus == 0 && $0.irq == 9 && $0.gsi == 9 && $0.flags == 0x000D })

            let nmis = entries.filter { $0.type == 4 }
            XCTAssertEqual(nmis.count, 1)
            let nmi = try XCTUnwrap(nmis.first).bytes
            XCTAssertEqual(Array(nmi), [4, 6, 0xFF, 0, 0, 1], "all processors, conforming, LINT1")
            XCTAssertEqual(entries.count, cpus + 4)
        }
    }

    func testDSDTHasOneProcessorDevicePerCPU() throws {
        let t = try build(cpus: 3)
        let d = Array(try XCTUnwrap(t.table("DSDT")))
        func count(_ needle: [UInt8]) -> Int {
            guard d.count >= needle.count else { return 0 }
            return (0...(d.count - needle.count)).filter { Array(d[$0..<$0 + needle.count]) == needle }.count
        }
        XCTAssertEqual(count(Array("ACPI0007".utf8)), 3)
        XCTAssertEqual(count(Array("C002".utf8)), 1)
        XCTAssertEqual(count(Array("C003".utf8)), 0)
        // Name(_S5_, Package(4){5, 5, 0, 0}) with BytePrefix-encoded sleep types.
        XCTAssertEqual(count([0x08] + Array("_S5_".utf8) + [0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00]), 1)
    }

    func testS5SleepTypeIsConfigurable() throws {
        let d = Array(try XCTUnwrap(try build { $0.s5SleepType = 0 }.table("DSDT")))
        let needle = [0x08] + Array("_S5_".utf8) + [0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00]
        XCTAssertTrue((0...(d.count - needle.count)).contains { Array(d[$0..<$0 + needle.count]) == needle })
    }

    func testLargestConfigurationFits() throws {
        let t = try build(cpus: ACPIConfiguration.maxCPUCount)
        XCTAssertLessThanOrEqual(t.bytes.count, maxSize)
        for e in t.tables where e.signature != "RSD PTR " && e.signature != "FACS" {
            XCTAssertEqual(try XCTUnwrap(t.table(e.signature)).byteSum, 0, e.signature)
        }
    }

    func testRejectsBadConfigurations() {
        func error(_ tweak: (inout ACPIConfiguration) -> Void, cpus: Int = 2, base: UInt64 = 0xE0000,
                   maxSize: Int = 0x20000) -> ACPIError? {
            var c = ACPIConfiguration(cpuCount: cpus)
            tweak(&c)
            do {
                _ = try ACPITables.build(c, at: base, maxSize: maxSize)
                return nil
            } catch let e as ACPIError {
                XCTAssertFalse(e.description.isEmpty)
                return e
            } catch {
                XCTFail("unexpected error \(error)")
                return nil
            }
        }
        XCTAssertEqual(error({ _ in }, cpus: 0), .cpuCountOutOfRange(0))
        XCTAssertEqual(error({ _ in }, cpus: 256), .cpuCountOutOfRange(256))
        XCTAssertEqual(error({ _ in }, cpus: -1), .cpuCountOutOfRange(-1))
        XCTAssertEqual(error({ _ in }, base: 0xE0008), .misalignedBase(0xE0008))
        XCTAssertNotNil(error({ _ in }, maxSize: 200))
        if case .tooLarge = error({ _ in }, maxSize: 200) {} else { XCTFail("expected tooLarge") }
        XCTAssertNotNil(error({ _ in }, base: UInt64.max - 15))
        XCTAssertNotNil(error({ $0.sciInterrupt = 16 }))
        XCTAssertNotNil(error({ $0.sciInterrupt = 0 }))
        XCTAssertNotNil(error({ $0.s5SleepType = 8 }))
        XCTAssertEqual(error({ $0.serialPorts = [.init(name: "com1", base: 0x3F8, irq: 4)] }), .invalidName("com1"))
        XCTAssertNotNil(error({ $0.serialPorts = [.init(name: "COM1", base: 0x3F8, irq: 16)] }))
        XCTAssertNotNil(error({ $0.serialPorts = [.init(name: "COM1", base: 0xFFFC, irq: 4)] }))
        XCTAssertNotNil(error({ $0.serialPorts = [.init(name: "COM1", base: 0x3F8, irq: 4), .init(name: "COM1", base: 0x2F8, irq: 3)] }))
        XCTAssertNotNil(error({ $0.serialPorts = [.init(name: "RTC_", base: 0x3F8, irq: 4)] }))
        XCTAssertNotNil(error({ $0.serialPorts = [.init(name: "C001", base: 0x3F8, irq: 4)] }))
        XCTAssertNil(error({ $0.serialPorts = [] }))
    }

    func testRSDTOmittedAbove4GiB() throws {
        let t = try ACPITables.build(ACPIConfiguration(cpuCount: 2), at: 0x1_0000_0000, maxSize: 0x20000)
        XCTAssertNil(t.table("RSDT"))
        let rsdp = try XCTUnwrap(t.table("RSD PTR "))
        XCTAssertEqual(rsdp.le(UInt32.self, at: 16), 0)
        XCTAssertEqual(rsdp.byteSum, 0)
        let f = try XCTUnwrap(t.table("FACP"))
        XCTAssertEqual(f.le(UInt32.self, at: 36), 0, "FIRMWARE_CTRL cannot hold the address")
        XCTAssertEqual(f.le(UInt32.self, at: 40), 0, "DSDT cannot hold the address")
        XCTAssertEqual(f.le(UInt64.self, at: 140), try XCTUnwrap(t.tables.first { $0.signature == "DSDT" }).address)
    }

    func testBuildIsDeterministic() throws {
        XCTAssertEqual(try build(), try build())
    }
}
