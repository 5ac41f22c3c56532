/// Small resource data descriptors for _CRS (ACPI 6.x §6.4.2).
public enum AMLResourceDescriptor: Sendable, Equatable {
    /// IO(Decode16/Decode10, minimum, maximum, alignment, length) — §6.4.2.5, 7 data bytes.
    case io(decode16: Bool = true, minimum: UInt16, maximum: UInt16, alignment: UInt8, length: UInt8)
    /// IRQNoFlags(){...}: edge-triggered, active-high, exclusive ISA IRQs 0-15 — §6.4.2.1, 2 data bytes.
    case irqNoFlags([UInt8])

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
