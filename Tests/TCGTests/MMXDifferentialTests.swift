import XCTest
@testable import TCG

/// MMX and the SSE-era MMX-register instructions against the host CPU: random operands go into
/// MM0 (from RAX), MM2 (from RCX) and XMM1 (from RDX), one instruction runs, and MM0, XMM1 and
/// the general registers come back (MOVQ), on the host and under tcg. EMMS ends every stub so the
/// host's x87 stack is empty again for Swift's own Float80 code.
final class MMXDifferentialTests: XCTestCase {
    var native: NativeRunner!
    var emu: EmulatedRunner!
    /// The same CPU running every block as translated host code (JIT/).
    var jit: EmulatedRunner!
    var rng = SplitMix(seed: 0x4D4D_5831)

    override func setUpWithError() throws {
        guard let n = NativeRunner() else { throw XCTSkip("cannot map an executable page on this host") }
        native = n
        emu = try EmulatedRunner()
        emu.cpu.st.pointee.cr4 |= CR4.osfxsr | CR4.osxmmexcpt
        emu.cpu.st.pointee.cr0 |= CR0.ne | CR0.mp
        jit = try EmulatedRunner(translated: true)
        jit.cpu.st.pointee.cr4 |= CR4.osfxsr | CR4.osxmmexcpt
        jit.cpu.st.pointee.cr0 |= CR0.ne | CR0.mp
        if let s = ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_SEED"], let v = UInt64(s) { rng = SplitMix(seed: v) }
    }

    static var iterations: Int {
        Int(ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_ITERATIONS"] ?? "") ?? 300
    }

    /// movq mm0, rax; movq mm2, rcx; movq xmm1, rdx.
    static let prologue: [UInt8] = [0x48, 0x0F, 0x6E, 0xC0, 0x48, 0x0F, 0x6E, 0xD1, 0x66, 0x48, 0x0F, 0x6E, 0xCA]
    /// movq rax, mm0; movq rdx, xmm1; emms.
    static let epilogue: [UInt8] = [0x48, 0x0F, 0x7E, 0xC0, 0x66, 0x48, 0x0F, 0x7E, 0xCA, 0x0F, 0x77]

    func value() -> UInt64 {
        switch rng.next() % 10 {
        case 0: return 0
        case 1: return ~0
        case 2: return 0x8000_0000_8000_0000
        case 3: return 0x7F7F_8080_00FF_FF00
        case 4: return rng.next() & 0x00FF_00FF_00FF_00FF
        case 5: return rng.next() % 80
        case 6: return 0x8000_7FFF_0001_FFFF
        default: return rng.next()
        }
    }

    /// Two packed singles or a double: ordinary numbers, sometimes out of int32 range or NaN.
    func floatValue() -> UInt64 {
        switch rng.next() % 6 {
        case 0: return UInt64(Float(Int32(truncatingIfNeeded: rng.next()) >> 4).bitPattern) | UInt64(Float(-2.5).bitPattern) << 32
        case 1: return UInt64(Float(3e9).bitPattern) | UInt64(Float.nan.bitPattern) << 32
        case 2: return Double(Int32(truncatingIfNeeded: rng.next())).bitPattern
        case 3: return (Double(Int64(bitPattern: rng.next()) >> 30) + 0.5).bitPattern
        default: return rng.next()
        }
    }

    func state(float: Bool = false) -> RegisterFile {
        var r = RegisterFile()
        for k in [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] { r.gpr[k] = value() }
        if float { r.gpr[2] = floatValue() }
        r.rflags = 2 | (rng.next() & 0x8D5)
        return r
    }

    func checkOp(_ bytes: [UInt8], float: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
        let insn = Self.prologue + bytes + Self.epilogue
        let input = state(float: float)
        let expected = native.run(insn, input)
        let (got, exit) = try emu.run(insn, input, budget: 100_000)
        let hex = bytes.map { String(format: "%02x", $0) }.joined(separator: " ")
        XCTAssertEqual(exit, .haltedForever, "[\(hex)] did not run to HLT\n in:  \(input)", file: file, line: line)
        var e = expected, g = got
        e.rflags &= 0x8D5; g.rflags &= 0x8D5
        if e != g { XCTFail("[\(hex)]\n in:   \(input)\n host: \(e)\n tcg:  \(g)", file: file, line: line) }
        let (translated, translatedExit) = try jit.run(insn, input, budget: 100_000)
        XCTAssertEqual(translatedExit, .haltedForever, "[\(hex)] did not run to HLT (translated)\n in:  \(input)", file: file, line: line)
        var t = translated; t.rflags &= 0x8D5
        if e != t { XCTFail("[\(hex)] translated\n in:   \(input)\n host: \(e)\n jit:  \(t)", file: file, line: line) }
    }

    /// Every two-operand MMX/SSE-MMX opcode, mm0 op= mm2.
    static let binaryOps: [UInt8] = Array(0x60...0x6B) + [0x74, 0x75, 0x76, 0xD4, 0xD5] + Array(0xD8...0xE5)
        + Array(0xE8...0xEF) + [0xF4, 0xF5, 0xF6] + Array(0xF8...0xFE)

    func testBinaryOps() throws {
        for op in Self.binaryOps { try checkOp([0x0F, op, 0xC2]) }
        for _ in 0..<Self.iterations * 4 {
            try checkOp([0x0F, Self.binaryOps[Int(rng.next() % UInt64(Self.binaryOps.count))], 0xC2])
        }
    }

    func testShiftsByRegisterAndImmediate() throws {
        for _ in 0..<Self.iterations * 2 {
            if rng.next() % 2 == 0 {
                let op: UInt8 = [0xD1, 0xD2, 0xD3, 0xE1, 0xE2, 0xF1, 0xF2, 0xF3][Int(rng.next() % 8)]
                try checkOp([0x0F, op, 0xC2])
            } else {
                let forms: [(UInt8, UInt8)] = [(0x71, 2), (0x71, 4), (0x71, 6), (0x72, 2), (0x72, 4), (0x72, 6), (0x73, 2), (0x73, 6)]
                let (op, ext) = forms[Int(rng.next() % UInt64(forms.count))]
                try checkOp([0x0F, op, 0xC0 | ext << 3, UInt8(rng.next() % 70)])
            }
        }
    }

    func testMovesShufflesAndMasks() throws {
        for _ in 0..<Self.iterations * 2 {
            let imm = UInt8(truncatingIfNeeded: rng.next())
            switch rng.next() % 12 {
            case 0: try checkOp([0x0F, 0x70, 0xC2, imm])                         // pshufw mm0, mm2, imm
            case 1: try checkOp([0x0F, 0xD7, 0xD8])                              // pmovmskb ebx, mm0
            case 2: try checkOp([0x0F, 0xC5, 0xD8, imm])                         // pextrw ebx, mm0, imm
            case 3: try checkOp([0x0F, 0xC4, 0xC3, imm])                         // pinsrw mm0, ebx, imm
            case 4: try checkOp([0x0F, 0x6F, 0xC2])                              // movq mm0, mm2
            case 5: try checkOp([0x0F, 0x7F, 0xD0])                              // movq mm0, mm2 (store form)
            case 6: try checkOp([0x0F, 0x6E, 0xC3])                              // movd mm0, ebx
            case 7: try checkOp([0x0F, 0x7E, 0xC3])                              // movd ebx, mm0
            case 8: try checkOp([0x41, 0x0F, 0x6E, 0xC0])                        // movd mm0, r8d (REX.B names the gpr)
            case 9: try checkOp([0x44, 0x0F, 0xEF, 0xC2])                        // REX.R is ignored for mm: pxor mm0, mm2
            case 10: try checkOp([0xF3, 0x0F, 0xD6, 0xCA])                       // movq2dq xmm1, mm2
            default: try checkOp([0xF2, 0x0F, 0xD6, 0xC1])                       // movdq2q mm0, xmm1
            }
        }
    }

    func testConversionsBetweenMMXAndXMM() throws {
        for _ in 0..<Self.iterations * 2 {
            switch rng.next() % 6 {
            case 0: try checkOp([0x0F, 0x2A, 0xCA])                              // cvtpi2ps xmm1, mm2
            case 1: try checkOp([0x66, 0x0F, 0x2A, 0xCA])                        // cvtpi2pd xmm1, mm2
            case 2: try checkOp([0x0F, 0x2D, 0xC1], float: true)                 // cvtps2pi mm0, xmm1
            case 3: try checkOp([0x0F, 0x2C, 0xC1], float: true)                 // cvttps2pi mm0, xmm1
            case 4: try checkOp([0x66, 0x0F, 0x2D, 0xC1], float: true)           // cvtpd2pi mm0, xmm1
            default: try checkOp([0x66, 0x0F, 0x2C, 0xC1], float: true)          // cvttpd2pi mm0, xmm1
            }
        }
    }

    /// Which instructions leave x87 mode: fld1 (TOP 7); the instruction; fnstsw ax; emms.
    /// CVTPI2PS/PD read their m64 source through RIP (the code bytes after them, the same on
    /// both sides).
    func testX87ToMMXTransition() throws {
        let probes: [[UInt8]] = [
            [0x0F, 0x2A, 0x0D, 0, 0, 0, 0],        // cvtpi2ps xmm1, [rip]
            [0x66, 0x0F, 0x2A, 0x0D, 0, 0, 0, 0],  // cvtpi2pd xmm1, [rip]
            [0x0F, 0x2A, 0xCA],                    // cvtpi2ps xmm1, mm2
            [0x0F, 0x2D, 0xC1],                    // cvtps2pi mm0, xmm1
            [0xF3, 0x0F, 0xD6, 0xCA],              // movq2dq xmm1, mm2
            [0x0F, 0x7E, 0xC3],                    // movd ebx, mm0
            [0x0F, 0xC5, 0xD8, 0x01],              // pextrw ebx, mm0, 1
            [0x0F, 0x6F, 0x05, 0, 0, 0, 0],        // movq mm0, [rip]
        ]
        for p in probes {
            // The prologue sets MM0, MM2 and XMM1; emms; fninit (contents stay); fld1 (into R7).
            let code: [UInt8] = Self.prologue + [0x0F, 0x77, 0xDB, 0xE3, 0xD9, 0xE8] + p + [0xDF, 0xE0, 0x0F, 0x77, 0x66, 0x48, 0x0F, 0x7E, 0xCA]
            let input = state()
            let expected = native.run(code, input)
            let (got, exit) = try emu.run(code, input, budget: 1000)
            XCTAssertEqual(exit, .haltedForever)
            let hex = p.map { String(format: "%02x", $0) }.joined(separator: " ")
            XCTAssertEqual(got.gpr[0] & 0xFFFF, expected.gpr[0] & 0xFFFF, "[\(hex)] FSW (TOP) after it")
            XCTAssertEqual(got.gpr[2], expected.gpr[2], "[\(hex)] xmm1")
            XCTAssertEqual(got.gpr[3], expected.gpr[3], "[\(hex)] rbx")
        }
    }
}
