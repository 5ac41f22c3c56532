import Foundation

/// Generates diff-runner cases: every memory operand lands in the data region (base register at
/// dataBase + 0x1000…0x17ff, displacement ±0x400, index ≤ 15 scaled), string operations run a few
/// elements from rsi/rdi inside it, and the stack (rsp) sits near its top; a few cases fault on
/// purpose (#DE, #PF above 4 GiB, #GP non-canonical or misaligned) so that the faults are compared.
struct DiffCaseGenerator {
    var rng: SplitMix64
    static let rsp = 4
    /// Set while a multi-instruction sequence is generated: no division (an earlier instruction
    /// may have changed the dividend), and bit offsets are loaded right before their use.
    var inSequence = false

    init(seed: UInt64) { rng = SplitMix64(state: seed) }

    /// An interesting 64-bit value.
    mutating func value() -> UInt64 {
        switch rng.below(10) {
        case 0: return 0
        case 1: return 1
        case 2: return ~0
        case 3: return UInt64(1) << UInt64(rng.below(64))
        case 4: return (UInt64(1) << UInt64(rng.below(64))) &- 1
        case 5: return rng.next() & 0xFF
        case 6: return 0x8000_0000_0000_0000 >> UInt64(rng.below(4) * 8) | (rng.next() & 0xF)
        case 7: return UInt64(bitPattern: -Int64(rng.below(300)))
        case 8: return rng.next() & 0xFFFF_FFFF
        default: return rng.next()
        }
    }

    /// The per-case context: registers, which ones address memory, and what a sequence may write.
    struct Context {
        var c: DiffCase
        var base: Int
        var index: Int?
        var scale: Int
        var reserved: Set<Int>
    }

    mutating func newContext(label: String) -> Context {
        var c = DiffCase(label: label, code: [])
        for i in 0..<16 { c.regs[i] = value() }
        c.regs[Self.rsp] = DiffCase.dataBase + 0x2C00 + UInt64(rng.below(0x40) * 8) + (rng.chance(8) ? 4 : 0)
        c.rflags = 0x3002 | (rng.next() & 0x8D5)
        let base = rng.pick([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
        c.regs[base] = DiffCase.dataBase + 0x1000 + UInt64(rng.below(0x800))
        if rng.chance(2) { c.regs[base] &= ~7 }
        var index: Int? = nil
        if rng.chance(3) {
            let i = rng.pick([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].filter { $0 != base })
            c.regs[i] = UInt64(rng.below(16))
            index = i
        }
        var reserved: Set<Int> = [Self.rsp, base]
        if let index { reserved.insert(index) }
        return Context(c: c, base: base, index: index, scale: rng.pick([1, 2, 4, 8]), reserved: reserved)
    }

    mutating func mem(_ x: Context, aligned: Int = 1) -> X86Operand {
        var disp = Int32(rng.below(0x800)) - 0x400
        if aligned > 1 {
            let target = (x.c.regs[x.base] &+ UInt64(bitPattern: Int64(disp))) & ~UInt64(aligned - 1)
            disp = Int32(truncatingIfNeeded: Int64(bitPattern: target &- x.c.regs[x.base]))
            return .mem(base: x.base, index: nil, scale: 1, disp: disp, ripRelative: false)
        }
        switch rng.below(6) {
        case 0: return .mem(base: x.base, index: nil, scale: 1, disp: 0, ripRelative: false)
        case 1: return .mem(base: x.base, index: nil, scale: 1, disp: Int32(rng.below(256)) - 128, ripRelative: false)
        default: return .mem(base: x.base, index: x.index, scale: x.scale, disp: disp, ripRelative: false)
        }
    }

    /// A register the case may overwrite (never rsp or an address register).
    mutating func dst(_ x: Context) -> Int { rng.pick((0..<16).filter { !x.reserved.contains($0) }) }
    mutating func anyReg() -> Int { rng.pick([0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]) }
    mutating func size() -> OpSize { rng.pick(OpSize.allCases) }
    mutating func imm(_ s: OpSize) -> [UInt8] { le(value(), s == .q64 ? 4 : s.rawValue) }

    /// Byte registers 4-7 mean ah..bh without REX and spl..dil with it; both are fair game.
    mutating func forceREX(_ s: OpSize) -> Bool { s == .b8 && rng.chance(2) }

    mutating func rmOperand(_ x: Context, memory: Bool? = nil) -> (X86Operand, Bool) {
        let useMemory = memory ?? rng.chance(2)
        return useMemory ? (mem(x), true) : (.reg(dst(x)), false)
    }

    // MARK: - Instruction families (each returns one instruction's bytes)

    mutating func alu(_ x: Context) -> [UInt8] {
        let s = size(), op = rng.below(8)
        let wide: UInt8 = s == .b8 ? 0 : 1
        let (rm, isMem) = rmOperand(x)
        let lock: [UInt8] = isMem && op != 7 && rng.chance(4) ? [0xF0] : []
        switch rng.below(4) {
        case 0:
            return X86Encoder.encode(prefixes: lock, size: s, opcode: [UInt8(op * 8) | wide], reg: anyReg(), rm: rm, forceREX: forceREX(s))
        case 1:
            return X86Encoder.encode(size: s, opcode: [UInt8(op * 8) | 2 | wide], reg: dst(x), rm: isMem ? rm : .reg(anyReg()), forceREX: forceREX(s))
        case 2:
            if s != .b8 && rng.chance(2) {
                return X86Encoder.encode(prefixes: lock, size: s, opcode: [0x83], reg: op, rm: rm, imm: rng.bytes(1))
            }
            return X86Encoder.encode(prefixes: lock, size: s, opcode: [s == .b8 ? 0x80 : 0x81], reg: op, rm: rm, imm: imm(s), forceREX: forceREX(s))
        default:
            if x.reserved.contains(0) { return alu(x) }
            var b: [UInt8] = s == .w16 ? [0x66] : []
            if s == .q64 { b.append(0x48) }
            return b + [UInt8(op * 8) | 4 | wide] + imm(s)
        }
    }

    mutating func unary(_ x: Context) -> [UInt8] {
        let s = size()
        let wide: UInt8 = s == .b8 ? 0 : 1
        let (rm, isMem) = rmOperand(x)
        let lock: [UInt8] = isMem && rng.chance(3) ? [0xF0] : []
        switch rng.below(4) {
        case 0: return X86Encoder.encode(size: s, opcode: [0x84 | wide], reg: anyReg(), rm: rm, forceREX: forceREX(s))  // test
        case 1: return X86Encoder.encode(size: s, opcode: [0xF6 | wide], reg: 0, rm: rm, imm: imm(s), forceREX: forceREX(s))
        case 2: return X86Encoder.encode(prefixes: lock, size: s, opcode: [0xF6 | wide], reg: 2 + rng.below(2), rm: rm, forceREX: forceREX(s))  // not, neg
        default: return X86Encoder.encode(prefixes: lock, size: s, opcode: [0xFE | wide], reg: rng.below(2), rm: rm, forceREX: forceREX(s))  // inc, dec
        }
    }

    /// Shifts and rotates by 1, imm8 (0…65 and random) and CL; shld/shrd.
    mutating func shift(_ x: inout Context) -> [UInt8] {
        let s = size(), op = rng.below(8)
        let wide: UInt8 = s == .b8 ? 0 : 1
        let (rm, _) = rmOperand(x)
        let count: UInt8 = rng.chance(4) ? UInt8(truncatingIfNeeded: rng.next()) : UInt8(rng.below(66))
        if !x.reserved.contains(1) { x.c.regs[1] = (rng.next() & ~0xFF) | UInt64(count) }
        let useCL = !x.reserved.contains(1)
        switch rng.below(5) {
        case 0: return X86Encoder.encode(size: s, opcode: [0xD0 | wide], reg: op, rm: rm, forceREX: forceREX(s))
        case 1, 2: return X86Encoder.encode(size: s, opcode: [0xC0 | wide], reg: op, rm: rm, imm: [count], forceREX: forceREX(s))
        case 3 where useCL: return X86Encoder.encode(size: s, opcode: [0xD2 | wide], reg: op, rm: rm, forceREX: forceREX(s))
        default:
            let ws: OpSize = rng.pick([.w16, .d32, .q64])
            let right = rng.chance(2)
            if useCL && rng.chance(2) {
                return X86Encoder.encode(size: ws, opcode: [0x0F, right ? 0xAD : 0xA5], reg: anyReg(), rm: rm)
            }
            return X86Encoder.encode(size: ws, opcode: [0x0F, right ? 0xAC : 0xA4], reg: anyReg(), rm: rm, imm: [count])
        }
    }

    /// mul/imul/div/idiv; the dividend is made representable unless `fault` asks for #DE.
    mutating func mulDiv(_ x: inout Context, fault: Bool = false) -> [UInt8] {
        let s = size()
        let wide: UInt8 = s == .b8 ? 0 : 1
        guard !x.reserved.contains(0), !x.reserved.contains(2) else { return alu(x) }
        x.reserved.formUnion([0, 2])
        let (rm, isMem) = rmOperand(x)
        let op = 4 + rng.below(inSequence ? 2 : 4)
        if op < 6 {
            if s != .b8 && rng.chance(2) {  // imul r, r/m (, imm)
                switch rng.below(3) {
                case 0: return X86Encoder.encode(size: s, opcode: [0x0F, 0xAF], reg: dst(x), rm: rm)
                case 1: return X86Encoder.encode(size: s, opcode: [0x6B], reg: dst(x), rm: rm, imm: rng.bytes(1))
                default: return X86Encoder.encode(size: s, opcode: [0x69], reg: dst(x), rm: rm, imm: imm(s))
                }
            }
            return X86Encoder.encode(size: s, opcode: [0xF6 | wide], reg: op, rm: rm, forceREX: forceREX(s))
        }
        // Division: pick the divisor, then a dividend whose quotient fits.
        let bits = UInt64(s.rawValue * 8)
        let mask: UInt64 = bits == 64 ? ~0 : (UInt64(1) << bits) - 1
        var divisor = value() & mask
        if fault { divisor = rng.chance(2) ? 0 : divisor }
        if divisor == 0 && !fault { divisor = 3 }
        let signed = op == 7
        let lowValue = rng.next() & mask
        let signBit = UInt64(1) << (bits - 1)
        var high: UInt64
        if fault {
            high = divisor == 0 ? rng.next() & mask : (divisor | 1) & mask
        } else if signed {
            if divisor == mask { divisor = 5 }  // -1 could overflow with the minimum dividend
            high = lowValue & signBit != 0 ? mask : 0  // the sign extension of the low half
        } else {
            high = divisor > 1 ? (rng.next() & mask) % divisor : 0
        }
        // Dividend: AX for bytes; DX:AX, EDX:EAX, RDX:RAX otherwise. The divisor goes into r/m.
        if s == .b8 {
            x.c.regs[0] = (x.c.regs[0] & ~0xFFFF) | ((high & 0xFF) << 8) | (lowValue & 0xFF)
        } else {
            x.c.regs[0] = (x.c.regs[0] & ~mask) | lowValue
            x.c.regs[2] = (x.c.regs[2] & ~mask) | high
        }
        if isMem {
            guard case .mem(let b, let i, let sc, let d, _) = rm else { return [] }
            let address = x.c.regs[b ?? 0] &+ (i.map { x.c.regs[$0] &* UInt64(sc) } ?? 0) &+ UInt64(bitPattern: Int64(d))
            let offset = Int(address &- DiffCase.dataBase)
            x.c.patches.append((offset, le(divisor, s.rawValue)))
            return X86Encoder.encode(size: s, opcode: [0xF6 | wide], reg: op, rm: rm, forceREX: forceREX(s))
        }
        guard case .reg(let r) = rm, r != 0, r != 2 else { return alu(x) }
        x.c.regs[r] = (x.c.regs[r] & ~mask) | divisor
        // A byte register 4-7 without REX is ah..bh: force REX so that the divisor is where we put it.
        return X86Encoder.encode(size: s, opcode: [0xF6 | wide], reg: op, rm: rm, forceREX: s == .b8)
    }

    /// bt/bts/btr/btc (register and large memory bit offsets, immediate), bsf/bsr, tzcnt/lzcnt,
    /// popcnt, bswap, movbe.
    mutating func bitOps(_ x: inout Context) -> [UInt8] {
        let s: OpSize = rng.pick([.w16, .d32, .q64])
        let (rm, isMem) = rmOperand(x)
        let lock: [UInt8] = isMem && rng.chance(3) ? [0xF0] : []
        switch rng.below(7) {
        case 0, 1:
            let op = rng.below(4)
            let r = dst(x)
            // A memory operand's bit offset reaches ±0x4000 bits (±2 KiB) from the operand.
            x.c.regs[r] = isMem ? UInt64(bitPattern: Int64(rng.below(0x8000)) - 0x4000) : value()
            // mov r, imm32 (sign-extended) first: an earlier instruction of a sequence may have changed r.
            let load: [UInt8] = isMem ? [0x48 | (r >= 8 ? 1 : 0), 0xC7, 0xC0 | UInt8(r & 7)] + le(x.c.regs[r], 4) : []
            return load + X86Encoder.encode(prefixes: op == 0 ? [] : lock, size: s, opcode: [0x0F, 0xA3 + UInt8(op * 8)], reg: r, rm: rm)
        case 2:
            let op = 4 + rng.below(4)
            return X86Encoder.encode(prefixes: op == 4 ? [] : lock, size: s, opcode: [0x0F, 0xBA], reg: op, rm: rm, imm: [UInt8(truncatingIfNeeded: rng.next())])
        case 3:
            return X86Encoder.encode(size: s, opcode: [0x0F, rng.chance(2) ? 0xBC : 0xBD], reg: dst(x), rm: rm)
        case 4:
            return X86Encoder.encode(size: s, opcode: [0x0F, rng.pick([0xBC, 0xBD, 0xB8])], reg: dst(x), rm: rm, legacyAfter: [0xF3])
        case 5:
            let r = dst(x)
            let bswap16: [UInt8] = s == .w16 ? [0x66] : []  // undefined in the SDM: whatever the host does
            return bswap16 + (s == .q64 ? [0x48 | (r >= 8 ? 1 : 0)] : (r >= 8 ? [0x41] : [])) + [0x0F, 0xC8 + UInt8(r & 7)]
        default:
            return X86Encoder.encode(size: s, opcode: [0x0F, 0x38, rng.chance(2) ? 0xF0 : 0xF1], reg: dst(x), rm: mem(x))
        }
    }

    /// cmpxchg, xadd, xchg (with and without LOCK), cmpxchg8b/16b.
    mutating func atomics(_ x: inout Context) -> [UInt8] {
        let s = size()
        let wide: UInt8 = s == .b8 ? 0 : 1
        let (rm, isMem) = rmOperand(x)
        let lock: [UInt8] = isMem && rng.chance(2) ? [0xF0] : []
        switch rng.below(4) {
        case 0:
            if x.reserved.contains(0) { return alu(x) }  // cmpxchg may load rax
            if isMem, rng.chance(2), case .mem(let b, let i, let sc, let d, _) = rm {
                // Make the comparison succeed: memory holds rax's value.
                let address = x.c.regs[b ?? 0] &+ (i.map { x.c.regs[$0] &* UInt64(sc) } ?? 0) &+ UInt64(bitPattern: Int64(d))
                x.c.patches.append((Int(address &- DiffCase.dataBase), le(x.c.regs[0], s.rawValue)))
            }
            return X86Encoder.encode(prefixes: lock, size: s, opcode: [0x0F, 0xB0 | wide], reg: anyReg(), rm: rm, forceREX: forceREX(s))
        case 1:
            return X86Encoder.encode(prefixes: lock, size: s, opcode: [0x0F, 0xC0 | wide], reg: dst(x), rm: rm, forceREX: forceREX(s))
        case 2:
            return X86Encoder.encode(prefixes: lock, size: s, opcode: [0x86 | wide], reg: dst(x), rm: rm, forceREX: forceREX(s))
        default:
            if x.reserved.contains(0) || x.reserved.contains(2) { return alu(x) }  // may load rdx:rax
            let wide16 = rng.chance(2)
            let m = mem(x, aligned: wide16 && !rng.chance(6) ? 16 : 8)
            if rng.chance(2), case .mem(let b, _, _, let d, _) = m {
                let address = x.c.regs[b ?? 0] &+ UInt64(bitPattern: Int64(d))
                x.c.patches.append((Int(address &- DiffCase.dataBase), le(x.c.regs[0], wide16 ? 8 : 4) + le(x.c.regs[2], wide16 ? 8 : 4)))
            }
            return X86Encoder.encode(prefixes: rng.chance(2) ? [0xF0] : [], rexW: wide16, opcode: [0x0F, 0xC7], reg: 1, rm: m)
        }
    }

    /// movs/cmps/stos/lods/scas with rep/repe/repne, 0-8 elements, either direction.
    mutating func stringOp(_ x: inout Context) -> [UInt8] {
        for r in [1, 6, 7] where x.reserved.contains(r) { return alu(x) }
        let df = rng.chance(3)
        x.c.rflags = (x.c.rflags & ~0x400) | (df ? 0x400 : 0)
        x.c.regs[6] = DiffCase.dataBase + 0x800 + UInt64(rng.below(0x400))
        x.c.regs[7] = DiffCase.dataBase + 0x2000 + UInt64(rng.below(0x400))
        x.c.regs[1] = UInt64(rng.chance(4) ? rng.below(64) : rng.below(9))
        if rng.chance(4) { x.c.regs[7] = x.c.regs[6] &+ UInt64(rng.below(24)) &- 12 }  // overlapping movs
        if rng.chance(4) {  // make scas/cmps stop early sometimes: equal data
            x.c.patches.append((Int(x.c.regs[6] - DiffCase.dataBase), le(x.c.regs[0], 8)))
        }
        let s = size()
        let op = rng.pick([0xA4, 0xA6, 0xAA, 0xAC, 0xAE] as [UInt8]) | (s == .b8 ? 0 : 1)
        let rep: [UInt8] = rng.pick([[], [0xF3], [0xF2]])
        var b = rep
        if s == .w16 { b.insert(0x66, at: 0) }
        if s == .q64 { b.append(0x48) }
        return b + [op]
    }

    /// pushes, pops, call/ret, pushf/popf, leave.
    mutating func stackOps(_ x: inout Context) -> [UInt8] {
        switch rng.below(8) {
        case 0: let r = anyReg(); return (r >= 8 ? [0x41] : []) + [0x50 + UInt8(r & 7)]
        case 1: let r = dst(x); return (r >= 8 ? [0x41] : []) + [0x58 + UInt8(r & 7)]
        case 2: return rng.chance(2) ? [0x6A] + rng.bytes(1) : [0x68] + rng.bytes(4)
        case 3: return X86Encoder.encode(opcode: [0xFF], reg: 6, rm: mem(x))  // push m64
        case 4: return X86Encoder.encode(opcode: [0x8F], reg: 0, rm: mem(x))  // pop m64
        case 5:
            // pushf; pop r; and r, mask; push imm32; popf. Only the arithmetic flags, DF and ID:
            // PVM runs guest ring 3 with IF = 1 and IOPL = 0 whatever the guest asked for (and
            // with the host's CR0.AM = 1, so AC would raise #AC, which the tcg CPU does not
            // implement), and TF would end the case with #DB (not implemented either).
            let r = dst(x)
            let mask: UInt64 = 0x20_0CD5
            let f = UInt32(truncatingIfNeeded: rng.next() & (rng.chance(3) ? mask : 0xCD5))
            let and = X86Encoder.encode(size: .q64, opcode: [0x81], reg: 4, rm: .reg(r), imm: le(mask, 4))
            return [0x9C] + (r >= 8 ? [0x41] : []) + [0x58 + UInt8(r & 7)] + and + [0x68] + le(UInt64(f), 4) + [0x9D]
        case 6 where rng.chance(4):  // TF through popf: the next instruction, then a single-step #DB
            let f = UInt32(truncatingIfNeeded: rng.next() & 0xCD5) | 0x100
            return [0x68] + le(UInt64(f), 4) + [0x9D] + alu(x) + alu(x)
        case 6:  // call a local function (a few ALU instructions), ret (sometimes ret imm16)
            var body: [UInt8] = []
            for _ in 0..<(1 + rng.below(3)) { body += alu(x) }
            let ret: [UInt8] = rng.chance(4) ? [0xC2, 8, 0] : [0xC3]
            let fn = body + ret
            return [0xE8, 2, 0, 0, 0, 0xEB, UInt8(fn.count)] + fn
        default:  // leave or enter (nesting 0-3) with rbp on the stack region
            guard !x.reserved.contains(5) else { return [0x50] }
            x.reserved.insert(5)
            x.c.regs[5] = x.c.regs[Self.rsp] + UInt64(rng.below(16) * 8)
            // mov rbp, imm32 first: an earlier instruction of a sequence may have changed rbp, and
            // an address between the end of RAM and 4 GiB would be MMIO (on PVM an emulation
            // failure for ENTER).
            let load: [UInt8] = [0x48, 0xC7, 0xC5] + le(x.c.regs[5], 4)
            if rng.chance(2) { return load + [0xC8, UInt8(rng.below(64)), 0, UInt8(rng.below(4))] + (rng.chance(2) ? [0xC9] : []) }
            return load + [0xC9]
        }
    }

    /// cmovcc, setcc, jcc over an instruction, movzx/movsx/movsxd, mov, lea, conversions, flag ops.
    mutating func moves(_ x: inout Context) -> [UInt8] {
        let cc = UInt8(rng.below(16))
        switch rng.below(10) {
        case 0:
            let s: OpSize = rng.pick([.w16, .d32, .q64])
            return X86Encoder.encode(size: s, opcode: [0x0F, 0x40 + cc], reg: dst(x), rm: rmOperand(x).0)
        case 1: return X86Encoder.encode(opcode: [0x0F, 0x90 + cc], reg: 0, rm: rmOperand(x).0, forceREX: rng.chance(2))
        case 2:
            let skipped = alu(x)
            if !x.reserved.contains(1) && rng.chance(3) {  // loop / loope / loopne / jrcxz over it
                x.c.regs[1] = rng.chance(2) ? UInt64(rng.below(3)) : value()
                return [0xE0 + UInt8(rng.below(4)), UInt8(skipped.count)] + skipped
            }
            return [0x70 + cc, UInt8(skipped.count)] + skipped
        case 3:
            let s: OpSize = rng.pick([.w16, .d32, .q64])
            return X86Encoder.encode(size: s, opcode: [0x0F, rng.pick([0xB6, 0xB7, 0xBE, 0xBF])], reg: dst(x), rm: rmOperand(x).0, forceREX: rng.chance(2))
        case 4: return X86Encoder.encode(size: .q64, opcode: [0x63], reg: dst(x), rm: rmOperand(x).0)
        case 5:
            let s = size()
            let wide: UInt8 = s == .b8 ? 0 : 1
            let (rm, _) = rmOperand(x)
            switch rng.below(3) {
            case 0: return X86Encoder.encode(size: s, opcode: [0x88 | wide], reg: anyReg(), rm: rm, forceREX: forceREX(s))
            case 1: return X86Encoder.encode(size: s, opcode: [0x8A | wide], reg: dst(x), rm: rm, forceREX: forceREX(s))
            default: return X86Encoder.encode(size: s, opcode: [0xC6 | wide], reg: 0, rm: rm, imm: imm(s), forceREX: forceREX(s))
            }
        case 6:
            let r = dst(x)
            return [0x48 | (r >= 8 ? 1 : 0), 0xB8 + UInt8(r & 7)] + le(value(), 8)
        case 7:
            let s: OpSize = rng.pick([.w16, .d32, .q64])
            var m = mem(x)
            if rng.chance(4) { m = .mem(base: nil, index: nil, scale: 1, disp: Int32(bitPattern: UInt32(truncatingIfNeeded: rng.next())), ripRelative: true) }
            if rng.chance(6), case .mem(let b, let i, let sc, _, _) = m { m = .mem(base: b, index: i, scale: sc, disp: Int32(bitPattern: UInt32(truncatingIfNeeded: rng.next())), ripRelative: false) }
            return X86Encoder.encode(prefixes: rng.chance(5) ? [0x67] : [], size: s, opcode: [0x8D], reg: dst(x), rm: m)
        case 8:
            guard !x.reserved.contains(0), !x.reserved.contains(2) else { return [0xF5] }
            let s: OpSize = rng.pick([.w16, .d32, .q64])
            return (s == .w16 ? [0x66] : s == .q64 ? [0x48] : []) + [rng.pick([0x98, 0x99])]
        default:
            if !x.reserved.contains(0) && rng.chance(2) { return [rng.pick([0x9E, 0x9F])] }  // sahf, lahf
            return [rng.pick([0xF5, 0xF8, 0xF9, 0xFC, 0xFD])]
        }
    }

    /// SSE2 integer instructions on xmm0-15, register and (aligned or not) memory sources.
    mutating func sse(_ x: inout Context) -> [UInt8] {
        if x.c.xmm == nil {
            x.c.xmm = (0..<16).flatMap { _ in le(value(), 8) + le(value(), 8) }
        }
        let d = rng.below(16), src = rng.below(16)
        let rm: X86Operand = rng.chance(3) ? mem(x, aligned: 16) : .reg(src)
        let ops: [UInt8] = [0xFC, 0xFD, 0xFE, 0xD4, 0xF8, 0xF9, 0xFA, 0xFB, 0xDB, 0xDF, 0xEB, 0xEF, 0x74, 0x75, 0x76,
                            0x64, 0x65, 0x66, 0x60, 0x61, 0x62, 0x68, 0x69, 0x6A, 0x6C, 0x6D, 0x63, 0x67, 0x6B, 0xD5,
                            0xE5, 0xE4, 0xF4, 0xF5, 0xF6, 0xDA, 0xDE, 0xEA, 0xEE, 0xE0, 0xE3, 0xDC, 0xDD, 0xD8, 0xD9,
                            0xEC, 0xED, 0xE8, 0xE9, 0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3]
        switch rng.below(8) {
        case 0, 1, 2:
            return X86Encoder.encode(opcode: [0x0F, rng.pick(ops)], reg: d, rm: rm, legacyAfter: [0x66])
        case 3:  // shifts by immediate
            let (op, sub) = rng.pick([(0x71, 2), (0x71, 4), (0x71, 6), (0x72, 2), (0x72, 4), (0x72, 6), (0x73, 2), (0x73, 6), (0x73, 3), (0x73, 7)] as [(UInt8, Int)])
            return X86Encoder.encode(opcode: [0x0F, op], reg: sub, rm: .reg(d), imm: [UInt8(rng.below(rng.chance(3) ? 256 : 20))], legacyAfter: [0x66])
        case 4:  // pshufd / pshuflw / pshufhw
            return X86Encoder.encode(opcode: [0x0F, 0x70], reg: d, rm: rm, imm: rng.bytes(1), legacyAfter: [rng.pick([0x66, 0xF2, 0xF3])])
        case 5:  // movd/movq to and from general registers and memory
            let r = dst(x)
            switch rng.below(5) {
            case 0: return X86Encoder.encode(rexW: rng.chance(2), opcode: [0x0F, 0x6E], reg: d, rm: rng.chance(2) ? .reg(anyReg()) : mem(x), legacyAfter: [0x66])
            case 1: return X86Encoder.encode(rexW: rng.chance(2), opcode: [0x0F, 0x7E], reg: d, rm: rng.chance(2) ? .reg(r) : mem(x), legacyAfter: [0x66])
            case 2: return X86Encoder.encode(opcode: [0x0F, 0x7E], reg: d, rm: rm, legacyAfter: [0xF3])
            case 3: return X86Encoder.encode(opcode: [0x0F, 0xD6], reg: d, rm: rng.chance(2) ? .reg(src) : mem(x), legacyAfter: [0x66])
            default: return X86Encoder.encode(opcode: [0x0F, 0xD7], reg: r, rm: .reg(src), legacyAfter: [0x66])  // pmovmskb
            }
        case 6:  // movdqa (alignment checked: sometimes misaligned on purpose), movdqu
            let aligned = rng.chance(8) ? mem(x) : mem(x, aligned: 16)
            let prefix: UInt8 = rng.chance(2) ? 0x66 : 0xF3
            let store = rng.chance(2)
            return X86Encoder.encode(opcode: [0x0F, store ? 0x7F : 0x6F], reg: d, rm: rng.chance(3) ? .reg(src) : aligned, legacyAfter: [prefix])
        default:  // pextrw / pinsrw
            if rng.chance(2) { return X86Encoder.encode(opcode: [0x0F, 0xC5], reg: dst(x), rm: .reg(src), imm: rng.bytes(1), legacyAfter: [0x66]) }
            return X86Encoder.encode(opcode: [0x0F, 0xC4], reg: d, rm: rng.chance(2) ? .reg(anyReg()) : mem(x), imm: rng.bytes(1), legacyAfter: [0x66])
        }
    }

    /// SSE moves, shuffles and logic on packed singles/doubles (glibc's string and memory
    /// functions use them), non-temporal stores, fences, clflush, prefetch, multi-byte nops.
    mutating func sseMoves(_ x: inout Context) -> [UInt8] {
        if x.c.xmm == nil {
            x.c.xmm = (0..<16).flatMap { _ in le(value(), 8) + le(value(), 8) }
        }
        let d = rng.below(16), src = rng.below(16)
        let rm: X86Operand = rng.chance(3) ? mem(x, aligned: 16) : .reg(src)
        switch rng.below(9) {
        case 0:  // movaps/movups/movapd/movupd/movss/movsd loads and stores
            let (prefix, op) = rng.pick([([], 0x28), ([], 0x10), ([0x66], 0x28), ([0x66], 0x10), ([0xF3], 0x10), ([0xF2], 0x10)] as [([UInt8], UInt8)])
            let store = rng.chance(2)
            return X86Encoder.encode(opcode: [0x0F, op | (store ? 1 : 0)], reg: d, rm: rm, legacyAfter: prefix)
        case 1:  // movlps/movhps/movlpd/movhpd (memory forms), movhlps/movlhps (register forms)
            let op = rng.pick([0x12, 0x13, 0x16, 0x17] as [UInt8])
            let prefix: [UInt8] = rng.chance(2) ? [0x66] : []
            let useReg = prefix.isEmpty && (op == 0x12 || op == 0x16) && rng.chance(3)
            return X86Encoder.encode(opcode: [0x0F, op], reg: d, rm: useReg ? .reg(src) : mem(x), legacyAfter: prefix)
        case 2:  // unpcklps/unpckhps/andps/andnps/orps/xorps and the pd forms
            let op = rng.pick([0x14, 0x15, 0x54, 0x55, 0x56, 0x57] as [UInt8])
            return X86Encoder.encode(opcode: [0x0F, op], reg: d, rm: rm, legacyAfter: rng.chance(2) ? [0x66] : [])
        case 3:  // shufps / shufpd
            return X86Encoder.encode(opcode: [0x0F, 0xC6], reg: d, rm: rm, imm: rng.bytes(1), legacyAfter: rng.chance(2) ? [0x66] : [])
        case 4:  // movmskps / movmskpd
            return X86Encoder.encode(opcode: [0x0F, 0x50], reg: dst(x), rm: .reg(src), legacyAfter: rng.chance(2) ? [0x66] : [])
        case 5:  // movntdq / movntps / movnti
            switch rng.below(3) {
            case 0: return X86Encoder.encode(opcode: [0x0F, 0xE7], reg: d, rm: mem(x, aligned: 16), legacyAfter: [0x66])
            case 1: return X86Encoder.encode(opcode: [0x0F, 0x2B], reg: d, rm: mem(x, aligned: 16))
            default: return X86Encoder.encode(rexW: rng.chance(2), opcode: [0x0F, 0xC3], reg: anyReg(), rm: mem(x))
            }
        case 6:  // lfence / mfence / sfence, clflush, prefetch
            switch rng.below(3) {
            case 0: return [0x0F, 0xAE, rng.pick([0xE8, 0xF0, 0xF8] as [UInt8])]
            case 1: return X86Encoder.encode(opcode: [0x0F, 0xAE], reg: 7, rm: mem(x))
            default: return X86Encoder.encode(opcode: [0x0F, 0x18], reg: rng.below(4), rm: mem(x))
            }
        case 7:  // nop r/m, xchg with rax, pause
            if rng.chance(3) { return [0xF3, 0x90] }
            if rng.chance(2), !x.reserved.contains(0) {
                let r = dst(x)
                return (rng.chance(2) ? [0x48 | (r >= 8 ? 1 : 0)] : (r >= 8 ? [0x41] : [])) + [0x90 + UInt8(r & 7)]
            }
            return X86Encoder.encode(size: rng.pick([.w16, .d32]), opcode: [0x0F, 0x1F], reg: 0, rm: rmOperand(x).0)
        default:  // movq xmm, xmm/m64 and movd round trips through general registers
            return X86Encoder.encode(opcode: [0x0F, 0x7E], reg: d, rm: rng.chance(2) ? .reg(src) : mem(x), legacyAfter: [0xF3])
        }
    }

    /// x87 as glibc uses it: loads (constants, m32/m64 floats, m16/m32/m64 integers), arithmetic
    /// with memory and stack operands, stores and integer conversions, compares into EFLAGS,
    /// fnstsw/fnstcw, fchs/fabs/fxch/fsqrt/frndint. The data region supplies arbitrary bit
    /// patterns (NaNs, denormals, infinities included).
    mutating func x87(_ x: inout Context) -> [UInt8] {
        var code: [UInt8] = []
        // A few pushes first so that stack operands exist.
        for _ in 0..<(1 + rng.below(3)) {
            switch rng.below(4) {
            case 0: code += [0xD9, rng.pick([0xE8, 0xEE, 0xEB, 0xEA, 0xE9, 0xEC, 0xED] as [UInt8])]  // fld1, fldz, fldpi, …
            case 1: code += X86Encoder.encode(opcode: [rng.chance(2) ? 0xD9 : 0xDD], reg: 0, rm: mem(x))  // fld m32/m64
            case 2: code += X86Encoder.encode(opcode: [rng.pick([0xDF, 0xDB, 0xDF] as [UInt8])], reg: rng.pick([0, 0, 5]), rm: mem(x))  // fild
            default:
                let m = mem(x)
                if case .mem(let b, let i, let sc, let d, _) = m {  // a "nice" double there
                    let address = x.c.regs[b ?? 0] &+ (i.map { x.c.regs[$0] &* UInt64(sc) } ?? 0) &+ UInt64(bitPattern: Int64(d))
                    let v = Double(Int64(bitPattern: value()) >> Int64(rng.below(60))) / Double(1 + rng.below(1000))
                    x.c.patches.append((Int(address &- DiffCase.dataBase), le(v.bitPattern, 8)))
                }
                code += X86Encoder.encode(opcode: [0xDD], reg: 0, rm: m)
            }
        }
        for _ in 0..<(1 + rng.below(3)) {
            switch rng.below(9) {
            case 0, 1: code += X86Encoder.encode(opcode: [rng.chance(2) ? 0xD8 : 0xDC], reg: rng.below(8), rm: mem(x))  // fadd…fdivr m32/m64
            case 2: code += [rng.pick([0xD8, 0xDC, 0xDE] as [UInt8]), 0xC0 | UInt8(rng.pick([0, 1, 4, 5, 6, 7]) << 3) | 1]  // st, st(1)
            case 3: code += [0xD9, rng.pick([0xE0, 0xE1, 0xC9, 0xFA, 0xFC, 0xE5, 0xE4] as [UInt8])]  // fchs fabs fxch fsqrt frndint fxam ftst
            case 4: code += [rng.chance(2) ? 0xDB : 0xDF, rng.pick([0xE9, 0xF1] as [UInt8])]  // fucomi / fcomi (+p)
            case 5: if !x.reserved.contains(0) { code += [0xDF, 0xE0] }  // fnstsw ax
            case 6: code += X86Encoder.encode(opcode: [0xD9], reg: 7, rm: mem(x))  // fnstcw m16
            case 7: code += X86Encoder.encode(opcode: [rng.pick([0xD9, 0xDD, 0xDB, 0xDF] as [UInt8])], reg: 3, rm: mem(x))  // fstp m32/m64, fistp m32/m16
            default: code += X86Encoder.encode(opcode: [0xDD], reg: rng.chance(2) ? 2 : 3, rm: mem(x))  // fst/fstp m64
            }
        }
        return code
    }

    /// Faults on purpose: #DE, #PF above 4 GiB (not mapped), #GP for a non-canonical address.
    mutating func faulting(_ x: inout Context) -> [UInt8] {
        let nonCanonical = 0x8000_0000_0000_0000 | (rng.next() >> 8) & ~(UInt64(1) << 62)
        switch rng.below(7) {
        case 0: return mulDiv(&x, fault: true)
        case 1:  // a stack access through a non-canonical RSP: #SS(0)
            x.c.regs[Self.rsp] = nonCanonical
            return rng.pick([[0x50], [0x5B], [0xE8, 0, 0, 0, 0], [0xC3], [0x6A, 1], [0x9C]])
        case 2:  // an SS, DS or FS prefix on a non-canonical reference
            x.c.regs[x.base] = nonCanonical
            return [rng.pick([0x36, 0x3E, 0x26, 0x64] as [UInt8])] + alu(x)
        case 3:  // LOCK on a register destination or on an instruction that cannot take it: #UD
            return [0xF0] + rng.pick([[0x48, 0x01, 0xC3], [0x89, 0x03], [0x0F, 0xA3, 0x03], [0x90]])
        case 4:  // cmpxchg16b and movdqa on a misaligned operand: #GP(0)
            x.c.regs[x.base] |= 8
            x.c.regs[x.base] &= ~UInt64(7) | 8
            return rng.chance(2) ? X86Encoder.encode(rexW: true, opcode: [0x0F, 0xC7], reg: 1, rm: .mem(base: x.base, index: nil, scale: 1, disp: 0, ripRelative: false))
                : X86Encoder.encode(opcode: [0x0F, 0x6F], reg: rng.below(16), rm: .mem(base: x.base, index: nil, scale: 1, disp: 1, ripRelative: false), legacyAfter: [0x66])
        default:
            x.c.regs[x.base] = rng.chance(2) ? 0x1_0000_0400 + UInt64(rng.below(0x10000)) : nonCanonical
            return alu(x)
        }
    }

    enum Family: CaseIterable { case alu, unary, shift, mulDiv, bits, atomics, string, stack, moves, sse, sseMoves, x87, mmx, alignment, singleStep, fault, sequence }

    mutating func instruction(_ f: Family, _ x: inout Context) -> [UInt8] {
        switch f {
        case .alu: return alu(x)
        case .unary: return unary(x)
        case .shift: return shift(&x)
        case .mulDiv: return mulDiv(&x)
        case .bits: return bitOps(&x)
        case .atomics: return atomics(&x)
        case .string: return stringOp(&x)
        case .stack: return stackOps(&x)
        case .moves: return moves(&x)
        case .sse: return sse(&x)
        case .sseMoves: return sseMoves(&x)
        case .x87: return x87(&x)
        case .mmx: return mmx(&x)
        case .alignment: return alignmentCheck(&x)
        case .singleStep: return singleStep(&x)
        case .fault: return faulting(&x)
        case .sequence: return []
        }
    }

    /// One case of family `f`; `.sequence` strings 3-8 instructions of the other families.
    mutating func makeCase(_ f: Family, number: Int) -> DiffCase {
        var x = newContext(label: "\(f) #\(number)")
        if f == .sequence {
            let families: [Family] = [.alu, .unary, .shift, .mulDiv, .bits, .atomics, .stack, .moves, .sse, .sseMoves]
            inSequence = true
            defer { inSequence = false }
            for _ in 0..<(3 + rng.below(6)) { x.c.code += instruction(rng.pick(families), &x) }
        } else {
            x.c.code = instruction(f, &x)
        }
        return x.c
    }

    /// The suite's batch: families in turn, `count` cases.
    mutating func batch(count: Int) -> [DiffCase] {
        let weights: [(Family, Int)] = [(.alu, 6), (.unary, 3), (.shift, 6), (.mulDiv, 4), (.bits, 4), (.atomics, 3),
                                        (.string, 3), (.stack, 3), (.moves, 5), (.sse, 5), (.sseMoves, 3), (.x87, 3), (.mmx, 4), (.alignment, 2), (.singleStep, 1), (.fault, 1), (.sequence, 8)]
        let wheel = weights.flatMap { Array(repeating: $0.0, count: $0.1) }
        return (0..<count).map { makeCase(wheel[$0 % wheel.count], number: $0) }
    }

    static func pristine(seed: UInt64) -> [UInt8] {
        var r = SplitMix64(state: seed ^ 0x5EED)
        return r.bytes(DiffCase.dataSize)
    }
}
