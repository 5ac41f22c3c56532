import Foundation

/// One user-mode test case for the diff-runner guest (Guests/diff-runner.gc): code, the initial
/// registers and flags, optionally the xmm registers, and patches over the data region.
struct DiffCase {
    /// Where the guest puts the code, the data region and its size (diff-runner.gc).
    static let codeBase: UInt64 = 0x80_0000
    static let dataBase: UInt64 = 0x90_0000
    static let dataSize = 0x3000

    var label: String
    var code: [UInt8]
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8…r15.
    var regs: [UInt64] = Array(repeating: 0, count: 16)
    var rflags: UInt64 = 0x3002
    var xmm: [UInt8]? = nil
    var patches: [(offset: Int, bytes: [UInt8])] = []

    var hex: String { code.map { String(format: "%02x", $0) }.joined(separator: " ") }

    /// The record the guest reads (layout in diff-runner.gc).
    func encoded() -> [UInt8] {
        var patchBytes: [UInt8] = []
        for p in patches {
            patchBytes += le(UInt64(p.offset), 2) + le(UInt64(p.bytes.count), 2) + p.bytes
        }
        var b = le(UInt64(code.count), 2) + le(UInt64(patchBytes.count), 2) + le(xmm == nil ? 0 : 1, 4)
        for r in regs { b += le(r, 8) }
        b += le(rflags, 8)
        if let xmm { b += xmm }
        b += code + patchBytes
        while b.count % 8 != 0 { b.append(0) }
        return b
    }

    /// The initrd for a batch: header, the data region's pristine image, the cases.
    static func batch(_ cases: [DiffCase], pristine: [UInt8]) -> Data {
        var b = Array("KDIFF001".utf8) + le(UInt64(cases.count), 4) + le(UInt64(pristine.count), 4) + pristine
        for c in cases { b += c.encoded() }
        return Data(b)
    }
}

func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ n: Int) -> Bool { below(n) == 0 }
    mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

/// An x86-64 operand for ModRM encoding: a register number or [base + index*scale + disp]
/// (base nil with ripRelative: [rip + disp]).
enum X86Operand {
    case reg(Int)
    case mem(base: Int?, index: Int?, scale: Int, disp: Int32, ripRelative: Bool)
}

/// Operand size of an integer instruction: selects 0x66 / REX.W / the byte opcode.
enum OpSize: Int, CaseIterable { case b8 = 1, w16 = 2, d32 = 4, q64 = 8 }

enum X86Encoder {
    /// prefixes, then REX (if needed or `forceREX`), opcode bytes, ModRM/SIB/disp, immediate.
    static func encode(prefixes: [UInt8] = [], size: OpSize? = nil, rexW: Bool = false, opcode: [UInt8], reg: Int,
                       rm: X86Operand, imm: [UInt8] = [], forceREX: Bool = false, legacyAfter: [UInt8] = []) -> [UInt8] {
        var out = prefixes
        if size == .w16 { out.append(0x66) }
        out += legacyAfter
        var rex: UInt8 = 0
        if size == .q64 || rexW { rex |= 8 }
        if reg & 8 != 0 { rex |= 4 }
        var modrmBytes: [UInt8] = []
        switch rm {
        case .reg(let r):
            if r & 8 != 0 { rex |= 1 }
            modrmBytes = [0xC0 | UInt8((reg & 7) << 3) | UInt8(r & 7)]
        case .mem(let base, let index, let scale, let disp, let ripRelative):
            let regBits = UInt8((reg & 7) << 3)
            if ripRelative {
                modrmBytes = [regBits | 5] + le(UInt64(UInt32(bitPattern: disp)), 4)
            } else {
                let ss: UInt8 = scale == 8 ? 3 : scale == 4 ? 2 : scale == 2 ? 1 : 0
                let b = base ?? 5
                let needSIB = index != nil || base == nil || (b & 7) == 4
                var mod: UInt8
                if base == nil { mod = 0 }
                else if disp == 0 && (b & 7) != 5 { mod = 0 }
                else if disp >= -128 && disp <= 127 { mod = 1 }
                else { mod = 2 }
                if let base, base & 8 != 0 { rex |= 1 }
                if let index, index & 8 != 0 { rex |= 2 }
                if needSIB {
                    let idx = UInt8((index ?? 4) & 7)
                    modrmBytes = [(mod << 6) | regBits | 4, (ss << 6) | (idx << 3) | UInt8(b & 7)]
                } else {
                    modrmBytes = [(mod << 6) | regBits | UInt8(b & 7)]
                }
                if base == nil || mod == 2 { modrmBytes += le(UInt64(UInt32(bitPattern: disp)), 4) }
                else if mod == 1 { modrmBytes.append(UInt8(bitPattern: Int8(disp))) }
            }
        }
        if rex != 0 || forceREX { out.append(0x40 | rex) }
        return out + opcode + modrmBytes + imm
    }
}
