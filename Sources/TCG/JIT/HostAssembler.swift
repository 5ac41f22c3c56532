/// The few x86-64 host instruction encodings the block translator emits (SDM Vol. 2 ch. 2:
/// legacy prefix, REX, opcode, ModRM, SIB, displacement, immediate). Writes into the code
/// buffer at `pos`; running past `limit` only sets `full` (the translator then flushes and
/// retries), so an oversized block can never write outside the buffer.
struct HostAssembler {
    let base: UnsafeMutablePointer<UInt8>
    let limit: Int
    var pos: Int
    var full = false

    init(base: UnsafeMutablePointer<UInt8>, start: Int, limit: Int) {
        self.base = base; self.limit = limit; pos = start
    }

    /// Host registers by encoding number.
    static let rax: UInt8 = 0, rcx: UInt8 = 1, rdx: UInt8 = 2, rbx: UInt8 = 3, rsp: UInt8 = 4, rbp: UInt8 = 5
    static let rsi: UInt8 = 6, rdi: UInt8 = 7, r8: UInt8 = 8, r9: UInt8 = 9, r10: UInt8 = 10, r11: UInt8 = 11, r12: UInt8 = 12, r13: UInt8 = 13
    static let r14: UInt8 = 14, r15: UInt8 = 15

    /// A memory operand [base + index << scale + disp] (index 0xFF: none).
    struct Mem {
        var base: UInt8
        var index: UInt8 = 0xFF
        var scale: UInt8 = 0
        var disp: Int32 = 0
        init(_ base: UInt8, _ disp: Int = 0) { self.base = base; self.disp = Int32(truncatingIfNeeded: disp) }
        init(_ base: UInt8, index: UInt8, scale: UInt8, disp: Int32) {
            self.base = base; self.index = index; self.scale = scale; self.disp = disp
        }
    }

    @inline(__always) mutating func byte(_ b: UInt8) {
        if pos < limit { base[pos] = b } else { full = true }
        pos += 1
    }

    mutating func u16(_ v: UInt16) { byte(UInt8(v & 0xFF)); byte(UInt8(v >> 8)) }
    mutating func u32(_ v: UInt32) { for k in 0..<4 { byte(UInt8(truncatingIfNeeded: v >> UInt32(8 * k))) } }
    mutating func u64(_ v: UInt64) { for k in 0..<8 { byte(UInt8(truncatingIfNeeded: v >> UInt64(8 * k))) } }

    /// Operand-size prefix and REX for `size` (0 byte .. 3 qword). `byteRegs`: a byte operand
    /// names register 4-7 as SPL..DIL, which needs a REX.
    mutating func prefix(size: UInt8, reg: UInt8, index: UInt8 = 0, rm: UInt8, byteRegs: Bool = false) {
        if size == 1 { byte(0x66) }
        var rex: UInt8 = 0
        if size == 3 { rex |= 8 }
        if reg & 8 != 0 { rex |= 4 }
        if index != 0xFF && index & 8 != 0 { rex |= 2 }
        if rm & 8 != 0 { rex |= 1 }
        if rex != 0 || byteRegs { byte(0x40 | rex) }
    }

    mutating func opcode(_ op: UInt32) {
        if op > 0xFFFF { byte(UInt8(op >> 16)) }
        if op > 0xFF { byte(UInt8((op >> 8) & 0xFF)) }
        byte(UInt8(op & 0xFF))
    }

    mutating func modrmMem(_ reg: UInt8, _ m: Mem) {
        let r = (reg & 7) << 3
        let b = m.base & 7
        let mod: UInt8
        if m.disp == 0 && b != 5 { mod = 0 } else if Int8(exactly: m.disp) != nil { mod = 1 } else { mod = 2 }
        if m.index != 0xFF || b == 4 {
            byte(mod << 6 | r | 4)
            let x: UInt8 = m.index == 0xFF ? 4 : m.index & 7
            byte(m.scale << 6 | x << 3 | b)
        } else {
            byte(mod << 6 | r | b)
        }
        if mod == 1 { byte(UInt8(bitPattern: Int8(m.disp))) } else if mod == 2 { u32(UInt32(bitPattern: m.disp)) }
    }

    /// `op reg, r/m` or `op r/m, reg` with a memory r/m (the opcode decides the direction).
    mutating func mem(_ op: UInt32, size: UInt8, reg: UInt8, _ m: Mem, byteReg: Bool = false, lock: Bool = false) {
        if lock { byte(0xF0) }
        prefix(size: size, reg: reg, index: m.index, rm: m.base, byteRegs: byteReg && size == 0 && reg >= 4 && reg < 8)
        opcode(op)
        modrmMem(reg, m)
    }

    /// `op reg, rm` with two registers (mod 11).
    mutating func rr(_ op: UInt32, size: UInt8, reg: UInt8, rm: UInt8) {
        prefix(size: size, reg: reg, rm: rm, byteRegs: size == 0 && ((reg >= 4 && reg < 8) || (rm >= 4 && rm < 8)))
        opcode(op)
        byte(0xC0 | (reg & 7) << 3 | (rm & 7))
    }

    // MARK: - Moves

    /// mov r64, [m] / mov r32, [m] (zero-extends) / movzx r32, word|byte [m].
    mutating func load(_ h: UInt8, _ m: Mem, size: UInt8) {
        switch size {
        case 3: mem(0x8B, size: 3, reg: h, m)
        case 2: mem(0x8B, size: 2, reg: h, m)
        case 1: mem(0x0FB7, size: 2, reg: h, m)
        default: mem(0x0FB6, size: 2, reg: h, m)
        }
    }

    /// movsx r64, byte|word [m] / movsxd r64, dword [m] / mov r64, [m].
    mutating func loadSigned(_ h: UInt8, _ m: Mem, size: UInt8) {
        switch size {
        case 0: mem(0x0FBE, size: 3, reg: h, m)
        case 1: mem(0x0FBF, size: 3, reg: h, m)
        case 2: mem(0x63, size: 3, reg: h, m)
        default: mem(0x8B, size: 3, reg: h, m)
        }
    }

    /// mov [m], r (of `size`).
    mutating func store(_ m: Mem, _ h: UInt8, size: UInt8) {
        mem(size == 0 ? 0x88 : 0x89, size: size, reg: h, m, byteReg: true)
    }

    /// mov [m], imm (imm32 sign-extended for qword).
    mutating func storeImm(_ m: Mem, _ v: UInt64, size: UInt8) {
        mem(size == 0 ? 0xC6 : 0xC7, size: size, reg: 0, m)
        switch size {
        case 0: byte(UInt8(truncatingIfNeeded: v))
        case 1: u16(UInt16(truncatingIfNeeded: v))
        default: u32(UInt32(truncatingIfNeeded: v))
        }
    }

    mutating func movRR(_ dst: UInt8, _ src: UInt8, size: UInt8 = 3) { rr(0x89, size: size, reg: src, rm: dst) }

    mutating func movImm64(_ h: UInt8, _ v: UInt64) {
        if v <= 0xFFFF_FFFF {
            if h & 8 != 0 { byte(0x41) }
            byte(0xB8 | (h & 7)); u32(UInt32(v))
        } else {
            byte(0x48 | (h & 8 != 0 ? 1 : 0)); byte(0xB8 | (h & 7)); u64(v)
        }
    }

    mutating func lea(_ h: UInt8, _ m: Mem) { mem(0x8D, size: 3, reg: h, m) }

    // MARK: - Arithmetic

    /// One of the eight ALU operations (`alu` 0 add .. 7 cmp), r/m = rm op reg.
    mutating func aluRR(_ alu: UInt8, size: UInt8, dst: UInt8, src: UInt8) {
        rr(UInt32(alu & 7) << 3 | (size == 0 ? 0 : 1), size: size, reg: src, rm: dst)
    }

    /// ALU op of a register with an immediate (80 / 81 / 83 group 1).
    mutating func aluImm(_ alu: UInt8, size: UInt8, dst: UInt8, _ v: UInt64) {
        // Guest immediates of dword and qword operations are sign-extended imm32 (or imm8).
        let s32 = Int32(truncatingIfNeeded: v)
        if size == 0 {
            rr(0x80, size: 0, reg: alu & 7, rm: dst); byte(UInt8(truncatingIfNeeded: v))
        } else if size == 1 {
            rr(0x81, size: 1, reg: alu & 7, rm: dst); u16(UInt16(truncatingIfNeeded: v))
        } else if let s8 = Int8(exactly: s32) {
            rr(0x83, size: size, reg: alu & 7, rm: dst); byte(UInt8(bitPattern: s8))
        } else {
            rr(0x81, size: size, reg: alu & 7, rm: dst); u32(UInt32(bitPattern: s32))
        }
    }

    /// ALU op of memory with an immediate (80 / 81 / 83 group 1), optionally LOCKed.
    mutating func aluMemImm(_ alu: UInt8, size: UInt8, _ m: Mem, _ v: UInt64, lock: Bool) {
        let s32 = Int32(truncatingIfNeeded: v)
        if size == 0 {
            mem(0x80, size: 0, reg: alu & 7, m, lock: lock); byte(UInt8(truncatingIfNeeded: v))
        } else if size == 1 {
            mem(0x81, size: 1, reg: alu & 7, m, lock: lock); u16(UInt16(truncatingIfNeeded: v))
        } else if let s8 = Int8(exactly: s32) {
            mem(0x83, size: size, reg: alu & 7, m, lock: lock); byte(UInt8(bitPattern: s8))
        } else {
            mem(0x81, size: size, reg: alu & 7, m, lock: lock); u32(UInt32(bitPattern: s32))
        }
    }

    mutating func testRR(size: UInt8, _ a: UInt8, _ b: UInt8) { rr(size == 0 ? 0x84 : 0x85, size: size, reg: b, rm: a) }

    mutating func testImm(size: UInt8, _ a: UInt8, _ v: UInt64) {
        rr(size == 0 ? 0xF6 : 0xF7, size: size, reg: 0, rm: a)
        switch size {
        case 0: byte(UInt8(truncatingIfNeeded: v))
        case 1: u16(UInt16(truncatingIfNeeded: v))
        default: u32(UInt32(truncatingIfNeeded: v))
        }
    }

    /// Group 3 / group 4-5 unary ops on a register: `digit` 2 not, 3 neg (F6/F7), 0 inc, 1 dec (FE/FF).
    mutating func unary(_ op: UInt32, digit: UInt8, size: UInt8, _ r: UInt8) {
        rr(size == 0 ? op - 1 : op, size: size, reg: digit, rm: r)
    }

    /// Group 2 shift or rotate (`digit` 0 rol .. 7 sar) of a register by an immediate or by CL.
    mutating func shift(digit: UInt8, size: UInt8, _ r: UInt8, count: UInt8?) {
        if let count {
            rr(size == 0 ? 0xC0 : 0xC1, size: size, reg: digit, rm: r); byte(count)
        } else {
            rr(size == 0 ? 0xD2 : 0xD3, size: size, reg: digit, rm: r)
        }
    }

    // MARK: - Control

    /// jmp rel32 to an absolute buffer position, or a placeholder; returns the rel32's position.
    @discardableResult mutating func jmp(to target: Int? = nil) -> Int {
        byte(0xE9); let at = pos; u32(0)
        if let target { patch(at, to: target) }
        return at
    }

    /// jcc rel32 (tttn condition code).
    @discardableResult mutating func jcc(_ cc: UInt8, to target: Int? = nil) -> Int {
        byte(0x0F); byte(0x80 | (cc & 15)); let at = pos; u32(0)
        if let target { patch(at, to: target) }
        return at
    }

    /// JRCXZ / JMP rel8 to a later position (patch8); returns the rel8's position.
    mutating func jrcxz() -> Int { byte(0xE3); let at = pos; byte(0); return at }
    mutating func jmpShort() -> Int { byte(0xEB); let at = pos; byte(0); return at }

    mutating func patch8(_ at: Int, to target: Int) {
        guard at < limit, let rel = Int8(exactly: target - (at + 1)) else { full = true; return }
        base[at] = UInt8(bitPattern: rel)
    }

    /// Points the rel32 at `at` to `target`.
    mutating func patch(_ at: Int, to target: Int) {
        guard at + 4 <= limit else { full = true; return }
        let rel = Int32(truncatingIfNeeded: target - (at + 4))
        (base + at).withMemoryRebound(to: UInt8.self, capacity: 4) { p in
            for k in 0..<4 { p[k] = UInt8(truncatingIfNeeded: UInt32(bitPattern: rel) >> UInt32(8 * k)) }
        }
    }

    mutating func callAbsolute(_ address: UInt64) {
        movImm64(Self.rax, address)
        byte(0xFF); byte(0xD0)  // call rax
    }

    /// BMI2 SHLX / SHRX / SARX dst, src, count (VEX.LZ.0F38.W1 F7; 66 / F2 / F3): shifts that
    /// leave the flags alone, so translated code can index the TLB without saving the guest's.
    enum ShiftX: UInt8 { case shlx = 1, sarx = 2, shrx = 3 }
    mutating func shiftx(_ kind: ShiftX, _ dst: UInt8, _ src: UInt8, count: UInt8) {
        byte(0xC4)
        byte((dst & 8 == 0 ? 0x80 : 0) | 0x40 | (src & 8 == 0 ? 0x20 : 0) | 0x02)
        byte(0x80 | ((~count & 15) << 3) | kind.rawValue)
        byte(0xF7)
        byte(0xC0 | (dst & 7) << 3 | (src & 7))
    }

    /// BMI2 MULX high, low, src (VEX.LZ.F2.0F38.W1 F6): rdx * src into high:low, flags untouched.
    mutating func mulx(high: UInt8, low: UInt8, _ src: UInt8) {
        byte(0xC4)
        byte((high & 8 == 0 ? 0x80 : 0) | 0x40 | (src & 8 == 0 ? 0x20 : 0) | 0x02)
        byte(0x80 | ((~low & 15) << 3) | 0x03)
        byte(0xF6)
        byte(0xC0 | (high & 7) << 3 | (src & 7))
    }

    /// NOT r64 (no flags).
    mutating func not64(_ r: UInt8) { rr(0xF7, size: 3, reg: 2, rm: r) }

    mutating func pushfq() { byte(0x9C) }
    mutating func popfq() { byte(0x9D) }
    mutating func push(_ r: UInt8) { if r & 8 != 0 { byte(0x41) }; byte(0x50 | (r & 7)) }
    mutating func pop(_ r: UInt8) { if r & 8 != 0 { byte(0x41) }; byte(0x58 | (r & 7)) }
    mutating func ret() { byte(0xC3) }
}
