/// Small resource data descriptors for _CRS (ACPI 6.x §6.4.2).
public enum AMLResourceDescriptor: Sendable, Equatable {
    /// IO(Decode16/Decode10, minimum, maximum, alignment, length) — §6.4.2.5, 7 data bytes.
    case io(decode16: Bool = true, minimum: UInt16, maximum: UInt16, alignment: UInt8, length: UInt8)
    /// IRQNoFlags(){...}: edge-triggered, active-high, exclusive ISA IRQs 0-15 — §6.4.2.1, 2 data bytes.
    case irqNoFlags([UInt8])
    /// Word/DWord/QWord Address Space Descriptors (§6.4.3.5.1-3): a fixed [minimum, maximum]
    /// window of bus numbers, I/O ports or memory. `producer` for a bridge's windows.
    case addressSpace(AMLAddressSpace, width: AMLAddressWidth, minimum: UInt64, maximum: UInt64, producer: Bool = true)

    func encode(into out: inout [UInt8]) throws {
        switch self {
        case .io(let decode16, let minimum, let maximum, let alignment, let length):
            guard minimum <= maximum else { throw ACPIError.invalidAML("IO descriptor minimum above maximum") }
            out.append(0x47) // small item, name 0x08 (I/O port), length 7
            out.append(decode16 ? 1 : 0)
            out.append(contentsOf: [UInt8(truncatingIfNeeded: minimum), UInt8(truncatingIfNeeded: minimum >> 8)])
            out.append(contentsOf: [UInt8(truncatingIfNeeded: maximum), UInt8(truncatingIfNeeded: maximum >> 8)])
            out.append(alignment)
            out.append(length)
        case .irqNoFlags(let irqs):
            var mask: UInt16 = 0
            for irq in irqs {
                guard irq < 16 else { throw ACPIError.invalidAML("IRQ descriptor names IRQ \(irq) (ISA IRQs are 0-15)") }
                mask |= 1 << UInt16(irq)
            }
            out.append(0x22) // small item, name 0x04 (IRQ), length 2: no information byte
            out.append(contentsOf: [UInt8(truncatingIfNeeded: mask), UInt8(truncatingIfNeeded: mask >> 8)])
        case .addressSpace(let space, let width, let minimum, let maximum, let producer):
            let bytes = width.rawValue
            let limit: UInt64 = bytes == 8 ? .max : (1 << UInt64(8 * bytes)) - 1
            guard minimum <= maximum, maximum <= limit else {
                throw ACPIError.invalidAML("address space window [0x\(String(minimum, radix: 16)), 0x\(String(maximum, radix: 16))] does not fit \(bytes * 8) bits")
            }
            let tag: UInt8 = bytes == 2 ? 0x88 : bytes == 4 ? 0x87 : 0x8A
            let length = 3 + 5 * bytes
            out.append(tag)
            out.append(contentsOf: [UInt8(length & 0xFF), UInt8(length >> 8)])
            out.append(space.resourceType)
            // General flags: MaxFixed, MinFixed, positive decode, producer/consumer.
            out.append(0x0C | (producer ? 0 : 1))
            out.append(space.typeSpecificFlags)
            for v in [0, minimum, maximum, 0, maximum - minimum + 1] {   // granularity, min, max, translation, length
                for i in 0..<bytes { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
            }
        }
    }

    /// The bytes of ResourceTemplate(){descriptors}: descriptors, then the End Tag (§6.4.2.9) whose
    /// checksum byte makes the whole template sum to zero.
    static func template(_ descriptors: [AMLResourceDescriptor]) throws -> [UInt8] {
        var out: [UInt8] = []
        for d in descriptors { try d.encode(into: &out) }
        out.append(0x79) // small item, name 0x0F (End Tag), length 1
        out.append(acpiChecksum(out))
        return out
    }
}

public enum AMLAddressSpace: Sendable, Equatable {
    case memory(cacheable: Bool)
    case io
    case busNumber

    var resourceType: UInt8 {
        switch self { case .memory: return 0; case .io: return 1; case .busNumber: return 2 }
    }
    /// Memory: read-write, cacheable or not; I/O: ISA and non-ISA ranges.
    var typeSpecificFlags: UInt8 {
        switch self { case .memory(let c): return c ? 0x03 : 0x01; case .io: return 0x03; case .busNumber: return 0 }
    }
}

public enum AMLAddressWidth: Int, Sendable, Equatable { case word = 2, dword = 4, qword = 8 }
