/// The opcode maps (SDM Vol. 2 Appendix A): one-byte and 0F (with 0F38 MOVBE).
extension Decoder {
    mutating func oneByte(_ b: UInt8) throws(DecodeFailure) {
        switch b {
        case 0x00...0x3F where b & 7 < 6:
            i.sub = b >> 3
            switch b & 7 {
            case 0: i.size = 0; i.op = .aluRMReg; try modrm(byteOperands: true)
            case 1: i.op = .aluRMReg; try modrm()
            case 2: i.size = 0; i.op = .aluRegRM; try modrm(byteOperands: true)
            case 3: i.op = .aluRegRM; try modrm()
            case 4: i.size = 0; i.op = .aluRMImm; i.rm = Reg.rax; i.imm = try imm(1)
            default: i.op = .aluRMImm; i.rm = Reg.rax; i.imm = try immZ()
            }
        case 0x06, 0x0E, 0x16, 0x1E:
            try not64(); i.op = .pushSreg; i.reg = b >> 3
        case 0x07, 0x17, 0x1F:
            try not64(); i.op = .popSreg; i.reg = b >> 3
        case 0x40...0x4F:
            // inc/dec r (REX in 64-bit mode, handled before).
            i.op = b < 0x48 ? .incRM : .decRM; i.rm = b & 7
        case 0x50...0x57:
            stackSize(); i.op = .pushRM; i.rm = (b & 7) | rexB
        case 0x58...0x5F:
            stackSize(); i.op = .popRM; i.rm = (b & 7) | rexB
        case 0x63:
            guard is64 else { throw .undefined }
            i.op = .movsxd; try modrm()
        case 0x68:
            stackSize(); i.op = .pushImm; i.imm = i.size == 1 ? try imm(2) : try simm(4)
        case 0x6A:
            stackSize(); i.op = .pushImm; i.imm = try simm(1)
        case 0x69:
            i.op = .imulRegRMImm; try modrm(); i.imm = try immZ()
        case 0x6B:
            i.op = .imulRegRMImm; try modrm(); i.imm = try simm(1)
        case 0x6C, 0x6D:
            i.op = .string; i.sub = 5; if b == 0x6C { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0x6E, 0x6F:
            i.op = .string; i.sub = 6; if b == 0x6E { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0x70...0x7F:
            i.op = .jcc; i.sub = b & 0xF; i.imm = try simm(1); stackSize()
        case 0x80, 0x82:
            if b == 0x82 { try not64() }
            i.size = 0; try modrm(byteOperands: true); i.op = .aluRMImm; i.sub = rawReg; i.imm = try imm(1)
        case 0x81:
            try modrm(); i.op = .aluRMImm; i.sub = rawReg; i.imm = try immZ()
        case 0x83:
            try modrm(); i.op = .aluRMImm; i.sub = rawReg; i.imm = try simm(1)
        case 0x84: i.size = 0; i.op = .testRMReg; try modrm(byteOperands: true)
        case 0x85: i.op = .testRMReg; try modrm()
        case 0x86: i.size = 0; i.op = .xchgRMReg; try modrm(byteOperands: true)
        case 0x87: i.op = .xchgRMReg; try modrm()
        case 0x88: i.size = 0; i.op = .movRMReg; try modrm(byteOperands: true)
        case 0x89: i.op = .movRMReg; try modrm()
        case 0x8A: i.size = 0; i.op = .movRegRM; try modrm(byteOperands: true)
        case 0x8B: i.op = .movRegRM; try modrm()
        case 0x8C:
            try modrm(); i.op = .movRMSreg; i.reg &= 7
            if i.reg > 5 { throw .undefined }
            if i.isMem { i.size = 1 }
        case 0x8D: try modrm(); try requireMem(); i.op = .lea
        case 0x8E:
            try modrm(); i.op = .movSregRM; i.reg &= 7; i.size = 1
            if i.reg > 5 || i.reg == SegReg.cs.u8 { throw .undefined }
        case 0x8F:
            stackSize(); try modrm(); if rawReg != 0 { throw .undefined }; i.op = .popRM
        case 0x90:
            if rexB != 0 { i.op = .xchgRMReg; i.rm = 8; i.reg = Reg.rax }
            else { i.op = i.prefixes & Prefix.rep != 0 ? .pause : .nop }
        case 0x91...0x97:
            i.op = .xchgRMReg; i.rm = (b & 7) | rexB; i.reg = Reg.rax
        case 0x98: i.op = .cbw
        case 0x99: i.op = .cwd
        case 0x9B: i.op = .fwait
        case 0x9C: stackSize(); i.op = .pushf
        case 0x9D: stackSize(); i.op = .popf
        case 0x9E: i.op = .sahf
        case 0x9F: i.op = .lahf
        case 0xA0...0xA3:
            if b & 1 == 0 { i.size = 0 }
            i.op = b < 0xA2 ? .movMoffsLoad : .movMoffsStore
            i.isMem = true; i.base = Reg.none
            let a = try imm(1 << Int(i.addrSize))
            i.imm = a
        case 0xA4, 0xA5: i.op = .string; i.sub = 0; if b == 0xA4 { i.size = 0 }
        case 0xA6, 0xA7: i.op = .string; i.sub = 1; if b == 0xA6 { i.size = 0 }
        case 0xA8: i.size = 0; i.op = .testRMImm; i.rm = Reg.rax; i.imm = try imm(1)
        case 0xA9: i.op = .testRMImm; i.rm = Reg.rax; i.imm = try immZ()
        case 0xAA, 0xAB: i.op = .string; i.sub = 2; if b == 0xAA { i.size = 0 }
        case 0xAC, 0xAD: i.op = .string; i.sub = 3; if b == 0xAC { i.size = 0 }
        case 0xAE, 0xAF: i.op = .string; i.sub = 4; if b == 0xAE { i.size = 0 }
        case 0xB0...0xB7:
            i.size = 0; i.op = .movRMImm; i.rm = byteReg((b & 7) | rexB); i.imm = try imm(1)
        case 0xB8...0xBF:
            i.op = .movRMImm; i.rm = (b & 7) | rexB
            i.imm = try imm(1 << Int(i.size))
        case 0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3:
            if b & 1 == 0 { i.size = 0 }
            try modrm(byteOperands: b & 1 == 0)
            i.op = .shiftRM; i.sub = rawReg
            switch b {
            case 0xC0, 0xC1: i.imm = try imm(1)
            case 0xD0, 0xD1: i.imm = 1
            default: i.prefixes |= Prefix.countCL
            }
        case 0xC2: stackSize(); i.op = .ret; i.imm = try imm(2)
        case 0xC3: stackSize(); i.op = .ret
        case 0xC6, 0xC7:
            if b == 0xC6 { i.size = 0 }
            try modrm(byteOperands: b == 0xC6)
            guard rawReg == 0 else { throw .undefined }
            i.op = .movRMImm; i.imm = b == 0xC6 ? try imm(1) : try immZ()
        case 0xC8: stackSize(); i.op = .enter; i.imm = try imm(2); i.imm2 = UInt16(try byte())
        case 0xC9: stackSize(); i.op = .leave
        case 0xCA: i.op = .retf; i.imm = try imm(2)
        case 0xCB: i.op = .retf
        case 0xCC: i.op = .int3
        case 0xCD: i.op = .intN; i.imm = try imm(1)
        case 0xCE: try not64(); i.op = .into
        case 0xCF: i.op = .iret
        case 0xD7: i.op = .xlat; i.size = 0
        case 0xE0, 0xE1, 0xE2:
            i.op = .loop; i.sub = b & 3; i.imm = try simm(1); stackSize()
        case 0xE3: i.op = .jrcxz; i.imm = try simm(1); stackSize()
        case 0xE4, 0xE5:
            i.op = .inPort; i.imm = try imm(1); if b == 0xE4 { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0xE6, 0xE7:
            i.op = .outPort; i.imm = try imm(1); if b == 0xE6 { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0xEC, 0xED:
            i.op = .inPort; i.sub = 1; if b == 0xEC { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0xEE, 0xEF:
            i.op = .outPort; i.sub = 1; if b == 0xEE { i.size = 0 } else if i.size == 3 { i.size = 2 }
        case 0xE8:
            stackSize(); i.op = .callRel; i.imm = i.size == 1 ? try simm(2) : try simm(4)
        case 0xE9:
            stackSize(); i.op = .jmpRel; i.imm = i.size == 1 ? try simm(2) : try simm(4)
        case 0xEA:
            try not64(); i.op = .jmpFarImm
            i.imm = try imm(i.size == 1 ? 2 : 4); i.imm2 = UInt16(try imm(2))
        case 0xEB: stackSize(); i.op = .jmpRel; i.imm = try simm(1)
        case 0xF1: i.op = .int1
        case 0xF4: i.op = .hlt
        case 0xF5: i.op = .cmc
        case 0xF6, 0xF7:
            if b == 0xF6 { i.size = 0 }
            try modrm(byteOperands: b == 0xF6)
            switch rawReg {
            case 0, 1: i.op = .testRMImm; i.imm = b == 0xF6 ? try imm(1) : try immZ()
            case 2: i.op = .notRM
            case 3: i.op = .negRM
            case 4: i.op = .mulRM
            case 5: i.op = .imulRM
            case 6: i.op = .divRM
            default: i.op = .idivRM
            }
        case 0xF8: i.op = .clc
        case 0xF9: i.op = .stc
        case 0xFA: i.op = .cli
        case 0xFB: i.op = .sti
        case 0xFC: i.op = .cld
        case 0xFD: i.op = .std
        case 0xFE:
            i.size = 0; try modrm(byteOperands: true)
            switch rawReg {
            case 0: i.op = .incRM
            case 1: i.op = .decRM
            default: throw .undefined
            }
        case 0xFF:
            try modrm()
            switch rawReg {
            case 0: i.op = .incRM
            case 1: i.op = .decRM
            case 2: stackSize(); i.op = .callRM
            case 3: try requireMem(); i.op = .callFarM
            case 4: stackSize(); i.op = .jmpRM
            case 5: try requireMem(); i.op = .jmpFarM
            case 6: stackSize(); i.op = .pushRM
            default: throw .undefined
            }
        case 0xD8...0xDF:
            try x87(b)
        default:
            // BCD and the other legacy-only or VEX/EVEX encodings: not implemented.
            throw .undefined
        }
    }

    mutating func twoByte(_ b: UInt8) throws(DecodeFailure) {
        switch b {
        case 0x00:
            try modrm(); i.op = .group6; i.sub = rawReg; i.size = 1
            if i.sub > 5 { throw .undefined }
        case 0x01:
            let m = pos < count ? bytes[pos] : 0
            if m >> 6 == 3 {
                pos += 1
                switch m {
                case 0xF8: guard is64 else { throw .undefined }; i.op = .swapgs
                case 0xF9: i.op = .rdtscp
                default: throw .undefined
                }
                return
            }
            try modrm(); i.op = .group7Mem; i.sub = rawReg
            if i.sub == 5 { throw .undefined }
        case 0x05: guard is64 else { throw .undefined }; i.op = .syscall
        case 0x06: i.op = .clts
        case 0x07: guard is64 else { throw .undefined }; i.op = .sysret
        case 0x08, 0x09: i.op = .wbinvd
        case 0x0B: i.op = .ud2
        case 0x0D, 0x18...0x1F:
            try modrm(); i.op = .nop
        case 0x20, 0x21, 0x22, 0x23:
            // The mod field is ignored: always a register operand.
            let m = try byte()
            i.reg = ((m >> 3) & 7) | rexR; i.rm = (m & 7) | rexB; i.isMem = false
            i.size = is64 ? 3 : 2
            i.op = b == 0x20 ? .movFromCR : b == 0x22 ? .movToCR : b == 0x21 ? .movFromDR : .movToDR
        case 0x30: i.op = .wrmsr
        case 0x31: i.op = .rdtsc
        case 0x32: i.op = .rdmsr
        case 0x38:
            let b3 = try byte()
            guard b3 == 0xF0 || b3 == 0xF1, i.prefixes & (Prefix.rep | Prefix.repne) == 0 else { throw .undefined }
            try modrm(); try requireMem()
            i.op = b3 == 0xF0 ? .movbeLoad : .movbeStore
        case 0x40...0x4F: try modrm(); i.op = .cmov; i.sub = b & 0xF
        case 0x80...0x8F:
            stackSize(); i.op = .jcc; i.sub = b & 0xF; i.imm = i.size == 1 ? try simm(2) : try simm(4)
        case 0x90...0x9F:
            i.size = 0; try modrm(byteRMOnly: true); i.op = .setcc; i.sub = b & 0xF
        case 0xA0, 0xA8: stackSize(); i.op = .pushSreg; i.reg = b == 0xA0 ? 4 : 5
        case 0xA1, 0xA9: stackSize(); i.op = .popSreg; i.reg = b == 0xA1 ? 4 : 5
        case 0xA2: i.op = .cpuid
        case 0xA3, 0xAB, 0xB3, 0xBB:
            try modrm(); i.op = .btReg; i.sub = (b >> 3) & 3
        case 0xA4, 0xA5, 0xAC, 0xAD:
            try modrm(); i.op = b < 0xA8 ? .shld : .shrd
            if b & 1 == 0 { i.imm = try imm(1) } else { i.prefixes |= Prefix.countCL }
        case 0xAE:
            try modrm()
            if !i.isMem {
                switch rawReg {
                case 5, 6, 7: i.op = .fence; i.sub = rawReg  // lfence, mfence, sfence
                default: throw .undefined
                }
                return
            }
            switch rawReg {
            case 0: i.op = .fxsave
            case 1: i.op = .fxrstor
            case 2: i.op = .ldmxcsr
            case 3: i.op = .stmxcsr
            case 7: i.op = .clflush
            default: throw .undefined
            }
        case 0xAF: try modrm(); i.op = .imulRegRM
        case 0xB0: i.size = 0; try modrm(byteOperands: true); i.op = .cmpxchg
        case 0xB1: try modrm(); i.op = .cmpxchg
        case 0xB6, 0xB7, 0xBE, 0xBF:
            try modrm(byteRMOnly: b & 1 == 0)
            i.op = b < 0xB8 ? .movzx : .movsx; i.sub = b & 1
        case 0xB8:
            guard i.prefixes & Prefix.rep != 0 else { throw .undefined }
            try modrm(); i.op = .popcnt
        case 0xBA:
            try modrm(); guard rawReg >= 4 else { throw .undefined }
            i.op = .btImm; i.sub = i.reg & 3; i.imm = try imm(1)
        case 0xBC: try modrm(); i.op = i.prefixes & Prefix.rep != 0 ? .tzcnt : .bsf
        case 0xBD: try modrm(); i.op = i.prefixes & Prefix.rep != 0 ? .lzcnt : .bsr
        case 0xC0: i.size = 0; try modrm(byteOperands: true); i.op = .xadd
        case 0xC1: try modrm(); i.op = .xadd
        case 0xC7:
            try modrm()
            guard i.isMem, rawReg == 1 else { throw .undefined }
            i.op = .cmpxchg8b16b
        case 0xC8...0xCF: i.op = .bswap; i.rm = (b & 7) | rexB
        case 0xC3:
            // MOVNTI: a plain store (no cache model).
            guard i.prefixes & (Prefix.opsize | Prefix.rep | Prefix.repne) == 0 else { throw .undefined }
            try modrm(); try requireMem(); i.op = .movRMReg
            if i.size < 2 { i.size = 2 }
        default: try sse(b)
        }
    }
}

extension Int {
    var u8: UInt8 { UInt8(truncatingIfNeeded: self) }
}
