import XCTest
@testable import TCG

/// SSE/SSE2 and x87 against the host CPU: random 128-bit operands are built in XMM registers
/// from general registers (MOVQ, PUNPCKLQDQ), one instruction runs, and the result comes back
/// through MOVQ and PSHUFD, on the host and under tcg; registers and status flags must match.
final class SSEDifferentialTests: XCTestCase {
    var native: NativeRunner!
    var emu: EmulatedRunner!
    /// The same CPU running every block as translated host code (JIT/).
    var jit: EmulatedRunner!
    var rng = SplitMix(seed: 0x5353_4532)

    override func setUpWithError() throws {
        guard let n = NativeRunner() else { throw XCTSkip("cannot map an executable page on this host") }
        native = n
        emu = try EmulatedRunner()
        emu.cpu.st.pointee.cr4 |= CR4.osfxsr | CR4.osxmmexcpt
        jit = try EmulatedRunner(translated: true)
        jit.cpu.st.pointee.cr4 |= CR4.osfxsr | CR4.osxmmexcpt
        if let s = ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_SEED"], let v = UInt64(s) { rng = SplitMix(seed: v) }
    }

    static var iterations: Int {
        Int(ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_ITERATIONS"] ?? "") ?? 300
    }

    /// xmm0 = rbx:rax, xmm2 = rdx:rcx.
    static let prologue: [UInt8] = [0x66, 0x48, 0x0F, 0x6E, 0xC0, 0x66, 0x48, 0x0F, 0x6E, 0xCB, 0x66, 0x0F, 0x6C, 0xC1,
                                    0x66, 0x48, 0x0F, 0x6E, 0xD1, 0x66, 0x48, 0x0F, 0x6E, 0xDA, 0x66, 0x0F, 0x6C, 0xD3]
    /// rbx:rax = xmm0.
    static let epilogue: [UInt8] = [0x66, 0x48, 0x0F, 0x7E, 0xC0, 0x66, 0x0F, 0x70, 0xC0, 0x4E, 0x66, 0x48, 0x0F, 0x7E, 0xC3]

    func value() -> UInt64 {
        switch rng.next() % 10 {
        case 0: return 0
        case 1: return ~0
        case 2: return 0x8000_0000_8000_0000
        case 3: return 0x7F7F_8080_00FF_FF00
        case 4: return rng.next() & 0x00FF_00FF_00FF_00FF
        case 5: return rng.next() % 80
        default: return rng.next()
        }
    }

    /// A double or float-pair bit pattern: mostly ordinary numbers, sometimes zero, inf or NaN.
    func floatValue() -> UInt64 {
        switch rng.next() % 10 {
        case 0: return 0
        case 1: return (-1.5).bitPattern
        case 2: return Double.infinity.bitPattern
        case 3: return UInt64(Float(3.25).bitPattern) | UInt64(Float(-0.0).bitPattern) << 32
        case 4: return Double(Int64(bitPattern: rng.next()) >> 20).bitPattern
        case 5: return UInt64(Float(Int32(truncatingIfNeeded: rng.next()) >> 8).bitPattern) | UInt64(Float(Int16(truncatingIfNeeded: rng.next())).bitPattern) << 32
        default:
            // Random sign and mantissa, exponent in a moderate range (no NaN by construction).
            let e = 0x3C0 + rng.next() % 0x80
            return (rng.next() & 0x800F_FFFF_FFFF_FFFF) | (e << 52)
        }
    }

    func state(float: Bool = false) -> RegisterFile {
        var r = RegisterFile()
        for k in [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] { r.gpr[k] = float ? floatValue() : value() }
        r.rflags = 2 | (rng.next() & 0x8D5)
        return r
    }

    func check(_ insn: [UInt8], _ input: RegisterFile, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = native.run(insn, input)
        let (got, exit) = try emu.run(insn, input, budget: 100_000)
        let hex = insn.map { String(format: "%02x", $0) }.joined(separator: " ")
        XCTAssertEqual(exit, .haltedForever, "[\(hex)] did not run to HLT\n in:  \(input)", file: file, line: line)
        var e = expected, g = got
        e.rflags &= 0x8D5; g.rflags &= 0x8D5
        if e != g { XCTFail("[\(hex)]\n in:   \(input)\n host: \(e)\n tcg:  \(g)", file: file, line: line) }
        let (translated, translatedExit) = try jit.run(insn, input, budget: 100_000)
        XCTAssertEqual(translatedExit, .haltedForever, "[\(hex)] did not run to HLT (translated)\n in:  \(input)", file: file, line: line)
        var t = translated; t.rflags &= 0x8D5
        if e != t { XCTFail("[\(hex)] translated\n in:   \(input)\n host: \(e)\n jit:  \(t)", file: file, line: line) }
    }

    /// `bytes` between the prologue and epilogue.
    func checkOp(_ bytes: [UInt8], float: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
        try check(Self.prologue + bytes + Self.epilogue, state(float: float), file: file, line: line)
    }

    static let integerOps: [UInt8] = Array(0x60...0x6D) + [0x74, 0x75, 0x76, 0xD4, 0xD5] + Array(0xD8...0xE5)
        + Array(0xE8...0xEF) + [0xF4, 0xF5, 0xF6] + Array(0xF8...0xFE)

    func testPackedIntegerBinaryOps() throws {
        for _ in 0..<Self.iterations * 4 {
            let op = Self.integerOps[Int(rng.next() % UInt64(Self.integerOps.count))]
            try checkOp([0x66, 0x0F, op, 0xC2])
        }
    }

    func testShiftsByRegisterAndImmediate() throws {
        for _ in 0..<Self.iterations * 2 {
            if rng.next() % 2 == 0 {
                let op: UInt8 = [0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3][Int(rng.next() % 8)]
                try checkOp([0x66, 0x0F, op, 0xC2])
            } else {
                let forms: [(UInt8, UInt8)] = [(0x71, 2), (0x71, 4), (0x71, 6), (0x72, 2), (0x72, 4), (0x72, 6), (0x73, 2), (0x73, 3), (0x73, 6), (0x73, 7)]
                let (op, ext) = forms[Int(rng.next() % UInt64(forms.count))]
                try checkOp([0x66, 0x0F, op, 0xC0 | ext << 3, UInt8(rng.next() % 70)])
            }
        }
    }

    func testShufflesMovesAndMasks() throws {
        for _ in 0..<Self.iterations * 2 {
            let imm = UInt8(truncatingIfNeeded: rng.next())
            switch rng.next() % 9 {
            case 0: try checkOp([[0x66, 0xF3, 0xF2][Int(rng.next() % 3)], 0x0F, 0x70, 0xC2, imm])
            case 1: try checkOp([0x66, 0x0F, 0xD7, 0xC8])                     // pmovmskb ecx, xmm0
            case 2: try checkOp([0x66, 0x0F, 0xC5, 0xC8, imm])                // pextrw ecx, xmm0, imm
            case 3: try checkOp([0x66, 0x0F, 0xC4, 0xC1, imm])                // pinsrw xmm0, ecx, imm
            case 4: try checkOp([0xF3, 0x0F, 0x7E, 0xC2])                     // movq xmm0, xmm2
            case 5: try checkOp([0x66, 0x0F, 0xD6, 0xD0])                     // movq xmm0, xmm2 (store form)
            case 6: try checkOp([[0xF3, 0xF2][Int(rng.next() % 2)], 0x0F, 0x10, 0xC2])  // movss/movsd
            case 7: try checkOp([0x0F, [0x12, 0x16][Int(rng.next() % 2)], 0xC2])        // movhlps/movlhps
            default: try checkOp([0x66, 0x0F, 0x7E, 0xC1])                     // movd ecx, xmm0
            }
        }
    }

    func testFloatingPointArithmeticAndLogic() throws {
        for _ in 0..<Self.iterations * 4 {
            let prefix: [UInt8] = [[], [0x66], [0xF3], [0xF2]][Int(rng.next() % 4)]
            let op: UInt8 = [0x51, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F][Int(rng.next() % 7)]
            if rng.next() % 4 == 0 && prefix.count < 2 {
                let logic: UInt8 = [0x54, 0x55, 0x56, 0x57, 0x14, 0x15][Int(rng.next() % 6)]
                let p: [UInt8] = prefix == [0xF3] || prefix == [0xF2] ? [] : prefix
                try checkOp(p + [0x0F, logic, 0xC2], float: true)
                continue
            }
            try checkOp(prefix + [0x0F, op, 0xC2], float: true)
        }
    }

    func testFloatingPointComparesAndConversions() throws {
        for _ in 0..<Self.iterations * 4 {
            let imm = UInt8(rng.next() % 8)
            let p2: [UInt8] = [[], [0x66]][Int(rng.next() % 2)]
            let p4: [UInt8] = [[], [0x66], [0xF3], [0xF2]][Int(rng.next() % 4)]
            switch rng.next() % 9 {
            case 0: try checkOp(p4 + [0x0F, 0xC2, 0xC2, imm], float: true)
            case 1: try checkOp(p2 + [0x0F, [0x2E, 0x2F][Int(rng.next() % 2)], 0xC2], float: true)
            case 2: try checkOp(p2 + [0x0F, 0xC6, 0xC2, UInt8(truncatingIfNeeded: rng.next())], float: true)
            case 3: try checkOp(p4 + [0x0F, 0x5A, 0xC2], float: true)
            case 4: if p4 != [0xF2] { try checkOp(p4 + [0x0F, 0x5B, 0xC2], float: true) }
            case 5: if !p4.isEmpty { try checkOp(p4 + [0x0F, 0xE6, 0xC2], float: true) }
            case 6: try checkOp([[0xF3, 0xF2][Int(rng.next() % 2)], 0x48, 0x0F, 0x2A, 0xC1])       // cvtsi2ss/sd xmm0, rcx
            case 7: try checkOp([[0xF3, 0xF2][Int(rng.next() % 2)], rng.next() % 2 == 0 ? 0x48 : 0x40, 0x0F, [0x2C, 0x2D][Int(rng.next() % 2)], 0xCA], float: true)
            default: try checkOp(p2 + [0x0F, 0x50, 0xC8], float: true)          // movmskps/pd ecx, xmm0
            }
        }
    }

    // MARK: - x87 through the stack (push/pop keep RSP balanced; the x87 stack ends empty)

    func x87State() -> RegisterFile {
        var r = state(float: true)
        r.gpr[4] = 0x30000
        if rng.next() % 3 == 0 { r.gpr[0] = UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: rng.next()))) }
        return r
    }

    func testX87ArithmeticOnDoubles() throws {
        // push rax; push rbx; fld qword [rsp+8]; fld qword [rsp]; <op>; fstp qword [rsp]; fnstsw ax-less: pop rbx; pop rcx
        for _ in 0..<Self.iterations * 2 {
            let ops: [[UInt8]] = [[0xDE, 0xC1], [0xDE, 0xC9], [0xDE, 0xE9], [0xDE, 0xE1], [0xDE, 0xF9], [0xDE, 0xF1],
                                  [0xD8, 0xC1, 0xDD, 0xD9], [0xD9, 0xC9, 0xDD, 0xD9], [0xDD, 0xD9, 0xD9, 0xFA],
                                  [0xDD, 0xD9, 0xD9, 0xE0], [0xDD, 0xD9, 0xD9, 0xE1], [0xDD, 0xD9, 0xD9, 0xFC],
                                  [0xDC, 0x44, 0x24, 0x08, 0xDD, 0xD9], [0xDC, 0x4C, 0x24, 0x08, 0xDD, 0xD9],
                                  [0xDB, 0xF1, 0xDD, 0xD9], [0xDF, 0xE9, 0x90, 0x90], [0xD9, 0xE8, 0xDE, 0xC1, 0xDD, 0xD9]]
            let op = ops[Int(rng.next() % UInt64(ops.count))]
            let code: [UInt8] = [0x50, 0x53, 0xDD, 0x44, 0x24, 0x08, 0xDD, 0x04, 0x24] + op
                + [0xDD, 0x1C, 0x24, 0x5B, 0x59, 0x9B, 0xDF, 0xE0, 0x66, 0x25, 0x00, 0x45]
            // fstp [rsp]; pop rbx; pop rcx; fwait; fnstsw ax; and ax, C3|C2|C0: the host's sticky
            // exception flags and C1 (round-up) depend on its earlier history.
            try check(code, x87State())
        }
    }

    func testX87IntegerConversionsAndCompares() throws {
        for _ in 0..<Self.iterations * 2 {
            let code: [UInt8]
            switch rng.next() % 4 {
            case 0:
                // fild qword [rsp]; fistp dword [rsp]; fild dword [rsp]; fstp qword [rsp]
                code = [0x50, 0xDF, 0x2C, 0x24, 0xDB, 0x1C, 0x24, 0xDB, 0x04, 0x24, 0xDD, 0x1C, 0x24, 0x58]
            case 1:
                // fld qword [rsp]; fistp qword [rsp] (round to nearest); fild word [rsp]; fistp word [rsp+2]
                code = [0x50, 0xDD, 0x04, 0x24, 0xDF, 0x3C, 0x24, 0xDF, 0x04, 0x24, 0xDF, 0x5C, 0x24, 0x02, 0x58]
            case 2:
                // fld qword [rsp]; fld1; fcomp st1; fnstsw ax; fstp st0; fld dword [rsp]; fstp qword [rsp]
                code = [0x53, 0x50, 0xDD, 0x04, 0x24, 0xD9, 0xE8, 0xD8, 0xD9, 0xDF, 0xE0, 0x66, 0x25, 0x00, 0x45, 0xDD, 0xD8,
                        0xD9, 0x44, 0x24, 0x08, 0xDD, 0x1C, 0x24, 0x5B, 0x5A]
            default:
                // fld qword [rsp]; fxam; fnstsw ax; fstp st0; fldpi; fld st0; fmulp; fstp qword [rsp]
                code = [0x50, 0xDD, 0x04, 0x24, 0xD9, 0xE5, 0xDF, 0xE0, 0x66, 0x25, 0x00, 0x47, 0xDD, 0xD8, 0xD9, 0xEB, 0xD9, 0xC0, 0xDE, 0xC9,
                        0xDD, 0x1C, 0x24, 0x5B]
            }
            try check(code, x87State())
        }
    }
}
