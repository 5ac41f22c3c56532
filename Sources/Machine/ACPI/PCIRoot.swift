/// What the ACPI tables say about PCI bus 0: the ECAM window (MCFG), the host bridge's
/// resource windows (_CRS) and where each slot's INTx pins are wired (_PRT).
public struct PCIRootConfiguration: Sendable, Equatable {
    public var ecamBase: UInt64
    public var busCount: Int
    public var ioWindow: ClosedRange<UInt64>
    public var memory32Window: ClosedRange<UInt64>
    public var memory64Window: ClosedRange<UInt64>?
    /// The GSI of slot `s`, pin INTA+p is `intxGSIBase + (s + p) % intxGSICount` (swizzled as a
    /// PC's PIRQ wiring is, so devices spread over the lines).
    public var intxGSIBase: UInt32 = 16
    public var intxGSICount: UInt32 = 8

    public init(ecamBase: UInt64, busCount: Int, ioWindow: ClosedRange<UInt64>, memory32Window: ClosedRange<UInt64>, memory64Window: ClosedRange<UInt64>?) {
        self.ecamBase = ecamBase; self.busCount = busCount; self.ioWindow = ioWindow
        self.memory32Window = memory32Window; self.memory64Window = memory64Window
    }

    public func intxGSI(slot: Int, pin: Int) -> UInt32 {
        intxGSIBase + UInt32((slot + pin) % Int(intxGSICount))
    }

    /// \_SB.PCI0 (PNP0A08, compatible with PNP0A03) and the motherboard device reserving ECAM.
    func devices() throws -> [AML] {
        var crs: [AMLResourceDescriptor] = [
            .addressSpace(.busNumber, width: .word, minimum: 0, maximum: UInt64(busCount - 1)),
            .io(minimum: 0xCF8, maximum: 0xCF8, alignment: 1, length: 8),
        ]
        // I/O below and above the configuration ports, then the MMIO windows.
        if ioWindow.lowerBound < 0xCF8 {
            crs.append(.addressSpace(.io, width: .word, minimum: ioWindow.lowerBound, maximum: min(ioWindow.upperBound, 0xCF7)))
        }
        if ioWindow.upperBound >= 0xD00 {
            crs.append(.addressSpace(.io, width: .word, minimum: max(ioWindow.lowerBound, 0xD00), maximum: ioWindow.upperBound))
        }
        crs.append(.addressSpace(.memory(cacheable: false), width: .dword, minimum: memory32Window.lowerBound, maximum: memory32Window.upperBound))
        if let w = memory64Window {
            crs.append(.addressSpace(.memory(cacheable: true), width: .qword, minimum: w.lowerBound, maximum: w.upperBound))
        }
        // _PRT entries: {Address (slot << 16 | 0xFFFF), Pin, Source (0: a GSI), Source Index (the GSI)}.
        var prt: [AML] = []
        for slot in 1..<32 {
            for pin in 0..<4 {
                prt.append(.package([.integer(UInt64(slot) << 16 | 0xFFFF), .integer(UInt64(pin)), .integer(0),
                                     .integer(UInt64(intxGSI(slot: slot, pin: pin)))]))
            }
        }
        let ecamEnd = ecamBase + UInt64(busCount) << 20 - 1
        return [
            .device("PCI0", [
                .name("_HID", try .eisaID("PNP0A08")),
                .name("_CID", try .eisaID("PNP0A03")),
                .name("_ADR", .integer(0)),
                .name("_UID", .integer(0)),
                .name("_SEG", .integer(0)),
                .name("_BBN", .integer(0)),
                .name("_CRS", try .resourceTemplate(crs)),
                .name("_PRT", .package(prt)),
            ]),
            // Linux uses MCFG's ECAM only if a motherboard resource reserves it.
            .device("MRES", [
                .name("_HID", try .eisaID("PNP0C02")),
                .name("_UID", .integer(1)),
                .name("_CRS", try .resourceTemplate([
                    .addressSpace(.memory(cacheable: false), width: .dword, minimum: ecamBase, maximum: ecamEnd, producer: false),
                ])),
            ]),
        ]
    }
}

/// PCI Express memory mapped configuration space base address description table (PCI
/// Firmware 3.0 §4.1.2): one allocation, segment 0, buses 0..busCount-1.
enum MCFG {
    static let signature = "MCFG"
    static let revision: UInt8 = 1

    static func build(_ root: PCIRootConfiguration) -> [UInt8] {
        var w = ACPIByteWriter()
        w.zeros(8)                         // reserved
        w.u64(root.ecamBase)
        w.u16(0)                           // PCI segment group
        w.u8(0)                            // start bus
        w.u8(UInt8(truncatingIfNeeded: root.busCount - 1))
        w.zeros(4)
        return SystemDescriptionTable.make(signature: signature, revision: revision, body: w.bytes)
    }
}
