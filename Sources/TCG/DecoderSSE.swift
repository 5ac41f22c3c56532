/// Decoder entries for x87 (D8-DF) and the SSE/SSE2 part of the 0F map (SDM Vol. 2 Appendix A,
/// tables ..A-10). Only what the executors implement decodes; the rest is #UD.
extension Decoder {
    mutating func x87(_ b: UInt8) throws(DecodeFailure) {
        guard pos < count else { throw count >= 15 ? .tooLong : .truncated }
        let m = bytes[pos]
        try modrm()
        i.op = .x87
        i.sub = b & 7
        i.imm = UInt64(m)
    }

    /// The mandatory prefix of an SSE instruction: 0 none, 1 66, 2 F3, 3 F2 (F2/F3 win over 66).
    var ssePrefix: UInt8 {
        if i.prefixes & Prefix.rep != 0 { return 2 }
        if i.prefixes & Prefix.repne != 0 { return 3 }
        return i.prefixes & Prefix.opsize != 0 ? 1 : 0
    }

    mutating func sse(_ b: UInt8) throws(DecodeFailure) {
        let p = ssePrefix
        if try mmx(b, p) { return }
        var ok: Bool
        var hasImm = false, memOnly = false, regOnly = false
        switch b {
        case 0x10, 0x11, 0x51, 0x58, 0x59, 0x5A, 0x5C, 0x5D, 0x5E, 0x5F, 0xC2: ok = true
        case 0x12, 0x16: ok = p < 2; memOnly = p == 1
        case 0x13, 0x17, 0x2B: ok = p < 2; memOnly = true
        case 0x14, 0x15, 0x28, 0x29, 0x2E, 0x2F, 0x54, 0x55, 0x56, 0x57, 0xC6: ok = p < 2
        case 0x2A, 0x2C, 0x2D: ok = p >= 2
        case 0x50: ok = p < 2; regOnly = true
        case 0x5B: ok = p < 3
        case 0x60...0x6D, 0x74, 0x75, 0x76, 0xD1...0xD5, 0xD7...0xE5, 0xE8...0xEF, 0xF1...0xF6, 0xF8...0xFE:
            ok = p == 1
        case 0x6E: ok = p == 1
        case 0x6F, 0x7F: ok = p == 1 || p == 2
        case 0x7E: ok = p == 1 || p == 2
        case 0x70: ok = p != 0; hasImm = true
        case 0x71, 0x72, 0x73: ok = p == 1; regOnly = true; hasImm = true
        case 0xC4: ok = p == 1; hasImm = true
        case 0xC5: ok = p == 1; regOnly = true; hasImm = true
        case 0xD6: ok = p == 1
        case 0xE6: ok = p != 0
        case 0xE7: ok = p == 1; memOnly = true
        case 0xF7: ok = p == 1; regOnly = true
        default: ok = false
        }
        guard ok else { throw .undefined }
        try modrm()
        if memOnly { try requireMem() }
        if regOnly { try requireReg() }
        if b >= 0x71 && b <= 0x73 {
            let valid: Bool
            switch rawReg {
            case 2, 6: valid = true
            case 4: valid = b != 0x73
            case 3, 7: valid = b == 0x73
            default: valid = false
            }
            guard valid else { throw .undefined }
            i.imm2 = UInt16(rawReg) << 8 | UInt16(p)
        } else {
            i.imm2 = UInt16(p)
        }
        if b == 0xC2 || b == 0xC6 { hasImm = true }
        if hasImm { i.imm = try imm(1) }
        i.op = .sse
        i.sub = b
    }
}
