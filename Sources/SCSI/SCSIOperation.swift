/// Operation codes the target knows (SPC-4 §D.3.1, SBC-3 §5).
enum SCSIOperation {
    static let testUnitReady: UInt8 = 0x00
    static let requestSense: UInt8 = 0x03
    static let read6: UInt8 = 0x08
    static let write6: UInt8 = 0x0A
    static let inquiry: UInt8 = 0x12
    static let modeSense6: UInt8 = 0x1A
    static let startStopUnit: UInt8 = 0x1B
    static let readCapacity10: UInt8 = 0x25
    static let read10: UInt8 = 0x28
    static let write10: UInt8 = 0x2A
    static let synchronizeCache10: UInt8 = 0x35
    static let writeSame10: UInt8 = 0x41
    static let unmap: UInt8 = 0x42
    static let modeSense10: UInt8 = 0x5A
    static let read16: UInt8 = 0x88
    static let write16: UInt8 = 0x8A
    static let synchronizeCache16: UInt8 = 0x91
    static let writeSame16: UInt8 = 0x93
    static let serviceActionIn16: UInt8 = 0x9E
    static let reportLuns: UInt8 = 0xA0

    /// SERVICE ACTION IN(16) service action READ CAPACITY(16).
    static let readCapacity16Action: UInt8 = 0x10

    /// The CDB length the operation code's group implies (SAM-5 §5.2, SPC-4 §4.2.5.1); nil for
    /// the reserved and vendor-specific groups, whose commands Keel does not implement.
    static func cdbLength(_ opcode: UInt8) -> Int? {
        switch opcode >> 5 {
        case 0: return 6
        case 1, 2: return 10
        case 4: return 16
        case 5: return 12
        default: return nil
        }
    }
}
