/// Why decoding stopped without an instruction.
public enum DecodeFailure: Error, Equatable {
    /// Fewer bytes were available than the instruction needs (the caller fetches more).
    case truncated
    /// No such instruction, or one Keel does not implement (#UD).
    case undefined
    /// Longer than 15 bytes (#GP(0)).
    case tooLong
}

/// Decodes one instruction from `bytes` (SDM Vol. 2 ch. 2): legacy prefixes, REX, the one-byte,
/// 0F, 0F38 and 0F3A maps, ModRM/SIB, displacement and immediate.
public struct Decoder {
    let bytes: UnsafePointer<UInt8>
    let count: Int
    var pos = 0
    let mode: CodeMode
    var i = Instruction()
    var rexB: UInt8 = 0, rexX: UInt8 = 0, rexR: UInt8 = 0
    var segOverride: UInt8 = 0xFF
    /// The ModRM reg field as encoded (group opcode extension).
    var rawReg: UInt8 = 0

    public init(bytes: UnsafePointer<UInt8>, count: Int, mode: CodeMode) {
        self.bytes = bytes; self.count = min(count, 15); self.mode = mode
    }

    /// Decodes the instruction at the start of the buffer.
    public static func decode(_ bytes: UnsafePointer<UInt8>, count: Int, mode: CodeMode) -> Result<Instruction, DecodeFailure> {
        var d = Decoder(bytes: bytes, count: count, mode: mode)
        do { return .success(try d.run()) } catch { return .failure(error) }
    }

    @inline(__always) mutating func byte() throws(DecodeFailure) -> UInt8 {
        guard pos < count else { throw count >= 15 ? .tooLong : .truncated }
        let b = bytes[pos]; pos += 1; return b
    }

    mutating func imm(_ size: Int) throws(DecodeFailure) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<size { v |= UInt64(try byte()) << UInt64(8 * k) }
        return v
    }

    /// Sign-extended immediate of `size` bytes.
    mutating func simm(_ size: Int) throws(DecodeFailure) -> UInt64 {
        let v = try imm(size)
        switch size {
        case 1: return UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: v)))
        case 2: return UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: v)))
        case 4: return UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: v)))
        default: return v
        }
    }

    /// Iz: 16 or 32 bits, sign-extended to 64 for 64-bit operands.
    mutating func immZ() throws(DecodeFailure) -> UInt64 {
        i.size == 1 ? try imm(2) : try simm(4)
    }

    var is64: Bool { mode == .long64 }

    mutating func run() throws(DecodeFailure) -> Instruction {
        var opsize = mode.defaultOperand32 ? 2 : 1
        var addr: UInt8 = mode == .long64 ? 3 : (mode == .prot32 ? 2 : 1)
        var b: UInt8
        // Legacy prefixes, then REX (a REX not immediately before the opcode is ignored).
        while true {
            b = try byte()
            switch b {
            case 0xF0: i.prefixes |= Prefix.lock; continue
            case 0xF2: i.prefixes = (i.prefixes & ~Prefix.rep) | Prefix.repne; continue
            case 0xF3: i.prefixes = (i.prefixes & ~Prefix.repne) | Prefix.rep; continue
            case 0x26, 0x2E, 0x36, 0x3E:
                // 64-bit mode ignores these overrides for the address (the bases are 0), but an SS
                // prefix still makes a non-canonical address #SS rather than #GP (measured).
                if !is64 { segOverride = (b >> 3) & 3 } else if b == 0x36 { segOverride = 2 } else if segOverride == 2 { segOverride = 0xFF }
                rexB = 0; continue
            case 0x64: segOverride = 4; continue
            case 0x65: segOverride = 5; continue
            case 0x66: i.prefixes |= Prefix.opsize; opsize = mode.defaultOperand32 ? 1 : 2; continue
            case 0x67:
                addr = mode == .long64 ? 2 : (mode == .prot32 ? 1 : 2); continue
            default: break
            }
            break
        }
        i.addrSize = addr
        if is64 && b & 0xF0 == 0x40 {
            i.prefixes |= Prefix.rex
            if b & 8 != 0 { i.prefixes |= Prefix.rexW }
            rexR = (b & 4) << 1; rexX = (b & 2) << 2; rexB = (b & 1) << 3
            b = try byte()
        }
        if i.prefixes & Prefix.rexW != 0 { opsize = 3 }
        i.size = UInt8(opsize)
        if b == 0x0F {
            try twoByte(try byte())
        } else {
            try oneByte(b)
        }
        if i.isMem && i.op != .lea {
            i.seg = segOverride != 0xFF ? segOverride : ((i.base == Reg.rsp || i.base == Reg.rbp) ? 2 : 3)
        } else if segOverride != 0xFF {
            i.seg = segOverride
        } else {
            i.seg = 3
        }
        if i.prefixes & Prefix.lock != 0 && !lockAllowed { throw .undefined }
        i.length = UInt8(pos)
        return i
    }

    /// LOCK is legal only on read-modify-write instructions with a memory destination (SDM Vol. 2 "LOCK").
    var lockAllowed: Bool {
        guard i.isMem else { return false }
        switch i.op {
        case .aluRMReg, .aluRMImm: return i.sub != 7
        case .incRM, .decRM, .notRM, .negRM, .xchgRMReg, .cmpxchg, .xadd, .cmpxchg8b16b: return true
        case .btReg, .btImm: return i.sub != 0
        default: return false
        }
    }

    /// 64-bit mode operand size for near branches and stack operations: 64 unless 66 gives 16.
    mutating func stackSize() {
        if is64 { i.size = i.prefixes & Prefix.opsize != 0 ? 1 : 3 }
    }

    /// Maps a byte-register number: without REX, 4-7 are AH, CH, DH, BH.
    @inline(__always) func byteReg(_ r: UInt8) -> UInt8 {
        (i.prefixes & Prefix.rex == 0 && r >= 4 && r < 8) ? r + 12 : r
    }

    /// Reads ModRM (and SIB, displacement); fills reg, rm or the memory operand.
    mutating func modrm(byteOperands: Bool = false, byteRMOnly: Bool = false) throws(DecodeFailure) {
        let m = try byte()
        let mod = m >> 6, regField = (m >> 3) & 7, rmField = m & 7
        rawReg = regField
        i.reg = regField | rexR
        if byteOperands { i.reg = byteReg(i.reg) }
        if mod == 3 {
            i.isMem = false
            i.rm = rmField | rexB
            if byteOperands || byteRMOnly { i.rm = byteReg(i.rm) }
            return
        }
        i.isMem = true
        if i.addrSize == 1 {
            // 16-bit forms (SDM Vol. 2 Table 2-1).
            let bases: (UInt8, UInt8) = {
                switch rmField {
                case 0: return (Reg.rbx, Reg.rsi)
                case 1: return (Reg.rbx, Reg.rdi)
                case 2: return (Reg.rbp, Reg.rsi)
                case 3: return (Reg.rbp, Reg.rdi)
                case 4: return (Reg.rsi, Reg.none)
                case 5: return (Reg.rdi, Reg.none)
                case 6: return (Reg.rbp, Reg.none)
                default: return (Reg.rbx, Reg.none)
                }
            }()
            i.base = bases.0; i.index = bases.1
            if mod == 0 && rmField == 6 { i.base = Reg.none; i.disp = Int32(Int16(truncatingIfNeeded: try imm(2))) }
            else if mod == 1 { i.disp = Int32(Int8(truncatingIfNeeded: try byte())) }
            else if mod == 2 { i.disp = Int32(Int16(truncatingIfNeeded: try imm(2))) }
            return
        }
        if rmField == 4 {
            let sib = try byte()
            i.scale = sib >> 6
            let idx = ((sib >> 3) & 7) | rexX
            i.index = idx == 4 ? Reg.none : idx
            let baseField = sib & 7
            if baseField == 5 && mod == 0 {
                i.base = Reg.none
                i.disp = Int32(truncatingIfNeeded: try imm(4))
                return
            }
            i.base = baseField | rexB
        } else if rmField == 5 && mod == 0 {
            i.base = is64 ? Reg.rip : Reg.none
            i.disp = Int32(truncatingIfNeeded: try imm(4))
            return
        } else {
            i.base = rmField | rexB
        }
        if mod == 1 { i.disp = Int32(Int8(truncatingIfNeeded: try byte())) }
        else if mod == 2 { i.disp = Int32(truncatingIfNeeded: try imm(4)) }
    }

    mutating func requireMem() throws(DecodeFailure) { if !i.isMem { throw .undefined } }
    mutating func requireReg() throws(DecodeFailure) { if i.isMem { throw .undefined } }
    mutating func not64() throws(DecodeFailure) { if is64 { throw .undefined } }
}
