/// Differentiated System Description Table: the AML namespace. Keel's has the sleep-state
/// packages, one ACPI0007 processor device per vCPU and the legacy ISA devices Linux binds via PNP.
enum DSDT {
    static let signature = "DSDT"
    /// Revision 2 and up: AML integers are 64 bits wide.
    static let revision: UInt8 = 2
    static let reservedDeviceNames: Set<String> = ["RTC_", "KBD_", "MOU_", "PCI0", "MRES"]

    /// C000, C001, ... C0FE: the processor device for UID/APIC ID `index` (hex keeps names 4 chars).
    static func processorName(_ index: Int) -> String {
        let hex = String(index, radix: 16, uppercase: true)
        return "C" + String(repeating: "0", count: max(0, 3 - hex.count)) + hex
    }

    static func build(_ config: ACPIConfiguration) throws -> [UInt8] {
        let aml = try definitionBlock(config).map { try $0.encoded() }.joined()
        return SystemDescriptionTable.make(signature: signature, revision: revision, body: Array(aml))
    }

    static func definitionBlock(_ config: ACPIConfiguration) throws -> [AML] {
        var devices: [AML] = []
        for cpu in 0..<config.cpuCount {
            devices.append(.device(processorName(cpu), [
                .name("_HID", .string("ACPI0007")),
                .name("_UID", .integer(UInt64(cpu))),
            ]))
        }
        for (i, port) in config.serialPorts.enumerated() {
            devices.append(.device(port.name, [
                .name("_HID", try .eisaID("PNP0501")),
                .name("_UID", .integer(UInt64(i + 1))),
                .method("_STA", argumentCount: 0, serialized: false, [.return(.integer(0x0F))]),
                .name("_CRS", try .resourceTemplate([
                    .io(minimum: port.base, maximum: port.base, alignment: 0, length: 8),
                    .irqNoFlags([port.irq]),
                ])),
            ]))
        }
        if config.hasRTC {
            devices.append(.device("RTC_", [
                .name("_HID", try .eisaID("PNP0B00")),
                .name("_CRS", try .resourceTemplate([
                    .io(minimum: 0x70, maximum: 0x70, alignment: 1, length: 2),
                    .irqNoFlags([8]),
                ])),
            ]))
        }
        if config.hasI8042 {
            devices.append(.device("KBD_", [
                .name("_HID", try .eisaID("PNP0303")),
                .name("_CRS", try .resourceTemplate([
                    .io(minimum: 0x60, maximum: 0x60, alignment: 1, length: 1),
                    .io(minimum: 0x64, maximum: 0x64, alignment: 1, length: 1),
                    .irqNoFlags([1]),
                ])),
            ]))
            if config.hasPS2Mouse {
                devices.append(.device("MOU_", [
                    .name("_HID", try .eisaID("PNP0F13")),
                    .name("_CRS", try .resourceTemplate([.irqNoFlags([12])])),
                ]))
            }
        }
        if let pci = config.pciRoot { devices += try pci.devices() }
        let s5 = UInt64(config.s5SleepType)
        return [
            // \_Sx packages: {SLP_TYPa, SLP_TYPb, reserved, reserved} (ACPI 6.x §7.4.2).
            .name("_S0_", .package([.integer(0), .integer(0), .integer(0), .integer(0)])),
            .name("_S5_", .package([.integer(s5), .integer(s5), .integer(0), .integer(0)])),
            .scope("\\_SB", devices),
        ]
    }
}
