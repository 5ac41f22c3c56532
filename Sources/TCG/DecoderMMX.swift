/// Decoder entries for MMX (the 0F map without a mandatory prefix, SDM Vol. 2 Appendix A Table
/// A-3) and for the SSE/SSE2 instructions with an MMX register operand (PSHUFW, PINSRW/PEXTRW,
/// PMOVMSKB, MASKMOVQ, MOVNTQ, MOVQ2DQ/MOVDQ2Q, CVTPI2PS/PD, CVT(T)PS2PI, CVT(T)PD2PI).
extension Decoder {
    /// Decodes `b` with mandatory prefix `p` as `.mmx` and returns true, or returns false when
    /// the pair is not an MMX-register instruction. `imm2` holds the prefix and, for the shift
    /// groups 12-14, the ModRM reg field in its high byte.
    mutating func mmx(_ b: UInt8, _ p: UInt8) throws(DecodeFailure) -> Bool {
        var hasImm = false, memOnly = false, regOnly = false
        switch (b, p) {
        case (0x77, 0):
            // EMMS: no ModRM.
            i.op = .mmx; i.sub = b; i.imm2 = 0
            return true
        case (0x60...0x6B, 0), (0x6E, 0), (0x6F, 0), (0x74...0x76, 0), (0x7E, 0), (0x7F, 0),
             (0xD1...0xD5, 0), (0xD8...0xE5, 0), (0xE8...0xEF, 0), (0xF1...0xF6, 0), (0xF8...0xFE, 0),
             (0x2A, 0), (0x2A, 1), (0x2C, 0), (0x2C, 1), (0x2D, 0), (0x2D, 1):
            break
        case (0x70, 0), (0xC4, 0): hasImm = true
        case (0xC5, 0), (0x71...0x73, 0): hasImm = true; regOnly = true
        case (0xD7, 0), (0xF7, 0), (0xD6, 2), (0xD6, 3): regOnly = true
        case (0xE7, 0): memOnly = true
        default: return false
        }
        try modrm()
        if memOnly { try requireMem() }
        if regOnly { try requireReg() }
        var ext: UInt8 = 0
        if b >= 0x71 && b <= 0x73 {
            // Groups 12-14: /2 /4 /6 (no /4 for qwords); PSRLDQ/PSLLDQ have no MMX form.
            switch rawReg {
            case 2, 6: break
            case 4 where b != 0x73: break
            default: throw .undefined
            }
            ext = rawReg
        }
        i.imm2 = UInt16(ext) << 8 | UInt16(p)
        if hasImm { i.imm = try imm(1) }
        i.op = .mmx
        i.sub = b
        return true
    }
}
