import XCTest
import Synchronization
@testable import TCG

/// Translated code (JIT/) against the interpreter: generated programs of the forms the
/// translator emits, with memory operands on both sides of a page boundary and a loop around
/// them (chained blocks), must leave the same registers, flags and memory; faults, self-
/// modifying code and the interpreter fallback inside translated blocks behave as interpreted.
final class TranslatedCodeTests: XCTestCase {
    var rng = SplitMix(seed: 0x4A49_5431)
    /// The data region: RBX points 64 bytes before a page boundary, so [rbx + disp8] reaches
    /// both pages (and accesses that cross it).
    static let dataBase: UInt64 = EmulatedRunner.dataAddress + 0x1000 - 64
    /// Registers programs may write: never RSP, RBX (the data pointer) or R15 (the loop count).
    static let regs = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]

    func reg() -> Int { Self.regs[Int(rng.next() % UInt64(Self.regs.count))] }

    func value() -> UInt64 {
        switch rng.next() % 6 {
        case 0: return 0
        case 1: return ~0
        case 2: return UInt64(1) << (rng.next() % 64)
        case 3: return rng.next() & 0xFF
        default: return rng.next()
        }
    }

    /// prefix/REX/opcode/ModRM for a register or an [rbx + disp8] operand.
    func encode(size: Int, opcode: [UInt8], reg: Int, rm: Int?, disp: Int8 = 0, imm: [UInt8] = []) -> [UInt8] {
        var b: [UInt8] = size == 1 ? [0x66] : []
        var rex: UInt8 = size == 3 ? 8 : 0
        if reg >= 8 { rex |= 4 }
        if let rm, rm >= 8 { rex |= 1 }
        if rex != 0 || (size == 0 && (reg >= 4 || (rm ?? 0) >= 4)) { b.append(0x40 | rex) }
        b += opcode
        if let rm {
            b.append(0xC0 | UInt8((reg & 7) << 3) | UInt8(rm & 7))
        } else {
            b.append(0x40 | UInt8((reg & 7) << 3) | 3)
            b.append(UInt8(bitPattern: disp))
        }
        return b + imm
    }

    func disp(_ size: Int) -> Int8 { Int8(truncatingIfNeeded: Int(rng.next() % 120) - 8) }
    func imm(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }

    /// One instruction of the translator's native forms (or an interpreted one now and then).
    func instruction() -> [UInt8] {
        let size = Int(rng.next() % 4), w: UInt8 = size == 0 ? 0 : 1
        let immBytes = size == 0 ? 1 : (size == 1 ? 2 : 4)
        let mem: Int? = nil
        let lock: [UInt8] = rng.next() % 2 == 0 ? [0xF0] : []
        switch rng.next() % 42 {
        case 0: return encode(size: size, opcode: [UInt8(rng.next() % 8) * 8 + w], reg: reg(), rm: reg())
        case 1: return encode(size: size, opcode: [UInt8(rng.next() % 8) * 8 + 2 + w], reg: reg(), rm: mem, disp: disp(size))
        case 2: return encode(size: size, opcode: [size == 0 ? 0x80 : 0x81], reg: Int(rng.next() % 8), rm: reg(), imm: imm(immBytes))
        case 3: return encode(size: size, opcode: [0x38 + w], reg: reg(), rm: mem, disp: disp(size))  // cmp [m], r
        case 4: return encode(size: size, opcode: [0x88 + w], reg: reg(), rm: mem, disp: disp(size))  // store
        case 5: return encode(size: size, opcode: [0x8A + w], reg: reg(), rm: mem, disp: disp(size))  // load
        case 6: return encode(size: size, opcode: [size == 0 ? 0xC6 : 0xC7], reg: 0, rm: mem, disp: disp(size), imm: imm(immBytes))
        case 7: return encode(size: max(size, 1), opcode: [0x8D], reg: reg(), rm: mem, disp: disp(size))  // lea
        case 8: return encode(size: size, opcode: [0xFE + w], reg: Int(rng.next() % 2), rm: reg())  // inc/dec
        case 9: return encode(size: size, opcode: [0xF6 + w], reg: 2 + Int(rng.next() % 2), rm: reg())  // not/neg
        case 10: return encode(size: size, opcode: [size == 0 ? 0xC0 : 0xC1], reg: Int(rng.next() % 8), rm: reg(), imm: [UInt8(rng.next() % 70)])
        case 11: return encode(size: size, opcode: [size == 0 ? 0xD2 : 0xD3], reg: Int(rng.next() % 8), rm: reg())
        case 12: return encode(size: max(size, 1), opcode: [0x0F, 0xAF], reg: reg(), rm: reg())  // imul r, r
        case 13: return encode(size: 0, opcode: [0x0F, 0x90 + UInt8(rng.next() % 16)], reg: 0, rm: reg())  // setcc
        case 14: return encode(size: max(size, 1), opcode: [0x0F, 0x40 + UInt8(rng.next() % 16)], reg: reg(),
                               rm: rng.next() % 2 == 0 ? reg() : mem, disp: disp(3))  // cmovcc
        case 15: return encode(size: max(size, 1), opcode: [0x0F, rng.next() % 2 == 0 ? 0xB6 : 0xBF], reg: reg(),
                               rm: rng.next() % 2 == 0 ? reg() : mem, disp: disp(1))  // movzx/movsx
        case 16: return encode(size: size, opcode: [0x84 + w], reg: reg(), rm: reg())  // test
        case 17:  // push r; pop r
            let a = reg(), b = reg()
            return (a >= 8 ? [0x41] : []) + [0x50 + UInt8(a & 7)] + (b >= 8 ? [0x41] : []) + [0x58 + UInt8(b & 7)]
        case 18: return encode(size: 3, opcode: [0x13], reg: reg(), rm: mem, disp: disp(3))  // adc r, [m]
        case 19: return lock + encode(size: size, opcode: [UInt8(rng.next() % 7) * 8 + w], reg: reg(), rm: mem, disp: disp(size))
        case 20: return lock + encode(size: size, opcode: [size == 0 ? 0x80 : 0x83], reg: Int(rng.next() % 7), rm: mem, disp: disp(size),
                                      imm: imm(1))
        case 21:
            let unary: (UInt8, Int) = [(0xFE, 0), (0xFE, 1), (0xF6, 2), (0xF6, 3)][Int(rng.next() % 4)]
            return lock + encode(size: size, opcode: [unary.0 + w], reg: unary.1, rm: mem, disp: disp(size))
        case 22: return [0xF0] + encode(size: size, opcode: [0x0F, 0xB0 + w], reg: reg(), rm: mem, disp: disp(size))  // cmpxchg
        case 23: return [0xF0] + encode(size: size, opcode: [0x0F, 0xC0 + w], reg: reg(), rm: mem, disp: disp(size))  // xadd
        case 24:  // bt/bts/btr/btc imm
            let op = 4 + Int(rng.next() % 4), onMemory = rng.next() % 2 == 0
            return (onMemory && op != 4 ? lock : []) + encode(size: max(size, 1), opcode: [0x0F, 0xBA], reg: op,
                                                              rm: onMemory ? mem : reg(), disp: disp(3), imm: [UInt8(rng.next() % 80)])
        case 25:  // bswap
            let r = reg()
            return [UInt8(0x40 | (size == 3 ? 8 : 0) | (r >= 8 ? 1 : 0)), 0x0F, 0xC8 + UInt8(r & 7)]
        case 26:  // push imm; pop r
            let b = reg()
            return (rng.next() % 2 == 0 ? [0x6A] + imm(1) : [0x68] + imm(4)) + (b >= 8 ? [0x41] : []) + [0x58 + UInt8(b & 7)]
        case 27:  // xor edx, edx; div r/m32|64 (a zero divisor is #DE: the program stops at it)
            return [0x31, 0xD2] + encode(size: 2 + Int(rng.next() % 2), opcode: [0xF7], reg: 6, rm: rng.next() % 2 == 0 ? reg() : mem, disp: disp(3))
        case 28: return encode(size: 2 + Int(rng.next() % 2), opcode: [0x8C], reg: Int(rng.next() % 6), rm: reg())  // mov r, sreg
        case 29: return encode(size: size, opcode: [0xF6 + w], reg: 4 + Int(rng.next() % 2), rm: rng.next() % 2 == 0 ? reg() : mem,
                               disp: disp(size))  // mul / imul r/m
        case 30: return (size == 1 ? [0x66] : size == 3 ? [0x48] : []) + [rng.next() % 2 == 0 ? 0x98 : 0x99]  // cbw family, cwd family
        case 31: return encode(size: max(size, 1), opcode: [0x0F, 0xAF], reg: reg(), rm: mem, disp: disp(3))  // imul r, [m]
        case 32:  // bsf, bsr, tzcnt, lzcnt, popcnt
            let op: (prefix: [UInt8], byte: UInt8) = [([], 0xBC), ([], 0xBD), ([0xF3], 0xBC), ([0xF3], 0xBD), ([0xF3], 0xB8)][Int(rng.next() % 5)]
            let body = encode(size: max(size, 1), opcode: [0x0F, op.byte], reg: reg(), rm: rng.next() % 2 == 0 ? reg() : mem, disp: disp(3))
            // The mandatory F3 goes before an operand-size prefix and REX.
            return op.prefix + body
        case 33:  // shld / shrd of registers, by imm8 or CL
            let right = rng.next() % 2 == 0, byCL = rng.next() % 2 == 0
            let opcode: UInt8 = (right ? 0xAC : 0xA4) + (byCL ? 1 : 0)
            return encode(size: max(size, 1), opcode: [0x0F, opcode], reg: reg(), rm: reg(), imm: byCL ? [] : [UInt8(rng.next() % 40)])
        case 34:  // cmpxchg8b / cmpxchg16b [rbx + disp8]
            return lock + encode(size: rng.next() % 2 == 0 ? 3 : 2, opcode: [0x0F, 0xC7], reg: 1, rm: mem, disp: disp(3))
        case 35: return encode(size: 0, opcode: [0x0F, 0x90 + UInt8(rng.next() % 16)], reg: 0, rm: mem, disp: disp(0))  // setcc [m]
        case 36:  // pushf; pop r
            let b = reg()
            return [0x9C] + (b >= 8 ? [0x41] : []) + [0x58 + UInt8(b & 7)]
        case 37: return [0xFA]  // cli
        case 38:  // lea rsi, [rbx+a]; lea rdi, [rbx+b]; mov ecx, n; rep movsb|stosb|lodsb|cmpsb
            let src = UInt8(rng.next() % 60), dst = UInt8(rng.next() % 60), count = UInt8(rng.next() % 40)
            let string: UInt8 = [0xA4, 0xAA, 0xAC, 0xA6][Int(rng.next() % 4)]
            return [0x48, 0x8D, 0x73, src, 0x48, 0x8D, 0x7B, dst, 0xB9, count, 0, 0, 0, 0xF3, string]
        case 39:  // call to a ret, and a jump over it
            return [0xE8, 2, 0, 0, 0, 0xEB, 1, 0xC3]
        default:  // interpreted inside translated code: bt, cqo, xadd
            switch rng.next() % 3 {
            case 0: return encode(size: 3, opcode: [0x0F, 0xA3], reg: reg(), rm: reg())  // bt r, r
            case 1: return [0x48, 0x99]
            default: return encode(size: 2, opcode: [0x0F, 0xC1], reg: reg(), rm: mem, disp: disp(2))
            }
        }
    }

    /// `body` run `loops` times: mov r15d, loops; body; dec r15; jnz body.
    func program(_ body: [UInt8], loops: UInt32) -> [UInt8] {
        let head: [UInt8] = [0x41, 0xBF] + withUnsafeBytes(of: loops.littleEndian, Array.init)
        var tail: [UInt8] = [0x49, 0xFF, 0xCF]  // dec r15
        let back = -(body.count + tail.count + 6)
        tail += [0x0F, 0x85] + withUnsafeBytes(of: Int32(back).littleEndian, Array.init)
        return head + body + tail
    }

    struct Outcome: Equatable {
        var regs: RegisterFile
        var exit: CPUExit
        var rip: UInt64
        var data: [UInt8]
        var retired: UInt64
    }

    func run(_ code: [UInt8], _ input: RegisterFile, data: [UInt8], translated: Bool) throws -> (Outcome, EmulatedRunner) {
        let r = try EmulatedRunner(translated: translated)
        try r.memory.write(data, at: Self.dataBase - 64)
        var regs = input
        regs.gpr[3] = Self.dataBase
        regs.gpr[4] = EmulatedRunner.dataAddress + 0x8000
        let (out, exit) = try r.run(code, regs, budget: 2_000_000)
        let back = try r.memory.readBytes(at: Self.dataBase - 64, count: data.count)
        return (Outcome(regs: out, exit: exit, rip: r.cpu.st.pointee.rip, data: back, retired: r.cpu.instructionCount), r)
    }

    func testGeneratedProgramsMatchTheInterpreter() throws {
        let programs = Int(ProcessInfo.processInfo.environment["KEEL_TCG_JIT_PROGRAMS"] ?? "") ?? 300
        var translatedSomething = false
        var completed = 0
        for p in 0..<programs {
            var body: [UInt8] = []
            for _ in 0..<(4 + Int(rng.next() % 24)) { body += instruction() }
            let code = program(body, loops: UInt32(1 + rng.next() % 40))
            var input = RegisterFile()
            for k in Self.regs { input.gpr[k] = value() }
            input.rflags = 2 | (rng.next() & 0x8D5)
            let data = imm(320)
            let (interpreted, _) = try run(code, input, data: data, translated: false)
            let (translated, runner) = try run(code, input, data: data, translated: true)
            if runner.cpu.translated.map({ $0.used }) ?? 0 > 0 { translatedSomething = true }
            if interpreted.exit == .haltedForever { completed += 1 }
            var a = interpreted, b = translated
            a.regs.rflags &= 0x8D5; b.regs.rflags &= 0x8D5
            if a != b {
                let hex = code.map { String(format: "%02x", $0) }.joined(separator: " ")
                XCTFail("program \(p) [\(hex)]\n in: \(input)\n interpreter: \(a)\n translated:  \(b)")
                return
            }
        }
        XCTAssertTrue(translatedSomething, "no program was translated")
        // Most run to their HLT (the rest stop at a #DE or a #PF, which is compared too).
        XCTAssertGreaterThan(completed, programs / 2, "only \(completed) of \(programs) programs ran to the end")
    }

    /// A store to an unmapped page inside a translated loop faults at that instruction with the
    /// registers and flags of the instructions before it, as interpreted.
    func testFaultInsideATranslatedLoopStopsAtTheFaultingInstruction() throws {
        // add r8, 1; cmp r8, 30; mov [rbx + r8*8 ... ] walks up to 0x40000000 (unmapped): fault.
        let body: [UInt8] = [0x49, 0x83, 0xC0, 0x01,        // add r8, 1
                             0x48, 0x81, 0xC3, 0x00, 0x00, 0x00, 0x10,  // add rbx, 0x10000000
                             0x4C, 0x89, 0x03]              // mov [rbx], r8
        let code = program(body, loops: 100)
        let (interpreted, _) = try run(code, RegisterFile(), data: [0], translated: false)
        let (translated, _) = try run(code, RegisterFile(), data: [0], translated: true)
        XCTAssertEqual(interpreted.exit, .tripleFault)
        XCTAssertEqual(translated, interpreted)
    }

    /// `body`, whose `add r9, 1` has its immediate incremented by the body each iteration, looped
    /// 20 times: interpreted, r9 ends as 1 + 2 + ... + 20; translated, the same, in as many
    /// instructions.
    func assertSelfModifyingLoop(_ body: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws {
        let code = program(body, loops: 20)
        let (interpreted, _) = try run(code, RegisterFile(), data: [0], translated: false)
        let (translated, _) = try run(code, RegisterFile(), data: [0], translated: true)
        XCTAssertEqual(interpreted.regs.gpr[9], (1...20).reduce(0, +), file: file, line: line)
        XCTAssertEqual(translated.regs.gpr[9], interpreted.regs.gpr[9], file: file, line: line)
        XCTAssertEqual(translated.retired, interpreted.retired, file: file, line: line)
    }

    /// A translated loop that rewrites an immediate in its own code sees the new code on the
    /// next iteration.
    func testSelfModifyingCodeInATranslatedLoop() throws {
        // lea rax, [rip + 3] (the add's imm8); add r9, 1 (imm patched); inc byte [rax]
        let body: [UInt8] = [0x48, 0x8D, 0x05, 0x03, 0x00, 0x00, 0x00,  // lea rax, [rip+3] -> the imm8 below
                             0x49, 0x83, 0xC1, 0x01,                    // add r9, 1
                             0xFE, 0x00]                                // inc byte [rax]
        try assertSelfModifyingLoop(body)
    }

    /// An instruction that crosses into the next page is cached and translated with the block
    /// before it; a store to its bytes on the second page is seen on the next iteration.
    func testSelfModifyingCodeOnTheSecondPageOfACrossingInstruction() throws {
        // Code starts at EmulatedRunner.codeAddress (0x10000); the 6-byte loop head comes first.
        let boundary = EmulatedRunner.codeAddress + 0x1000
        let leaEnd = EmulatedRunner.codeAddress + 6 + 7
        let disp = UInt32(boundary - leaEnd)
        var body: [UInt8] = [0x48, 0x8D, 0x05] + withUnsafeBytes(of: disp.littleEndian, Array.init)  // lea rax, [boundary]
        body += [UInt8](repeating: 0x90, count: Int(boundary - 3 - leaEnd))   // nops up to boundary - 3
        body += [0x49, 0x83, 0xC1, 0x01]   // add r9, 1: its imm8 is the second page's first byte
        body += [0xFE, 0x00]               // inc byte [rax]
        try assertSelfModifyingLoop(body)
    }

    /// Returns and indirect calls find blocks by linear RIP (VirtualJumpCache): after the
    /// mapping of that RIP changes (a CR3 switch, or the PTE rewritten and INVLPG), an indirect
    /// call to it runs the newly mapped code. A global page's mapping (CR4.PGE) outlives the CR3
    /// switch, in the jump cache as in the TLB (SDM Vol. 3 §4.10.4.1), but not INVLPG.
    func testIndirectCallsFollowAChangedMapping() throws {
        for (invlpg, global) in [(false, false), (true, false), (false, true), (true, true)] {
            for translated in [false, true] {
                let r = try EmulatedRunner(translated: translated)
                let m = r.memory
                if global { r.cpu.st.pointee.cr4 |= CR4.pge }
                let linear: UInt64 = 256 << 30   // PML4 0, PDPT 256, PD 0, PT 0
                // A second root with the same identity GiB, and `linear` mapped to 0x31000; the
                // first root maps it to 0x30000.
                try m.store(UInt64(0x41000 | 7), at: 0x40000)
                try m.store(UInt64(0x87), at: 0x41000)
                for (pdpt, pd, pt, page): (UInt64, UInt64, UInt64, UInt64) in
                        [(EmulatedRunner.pdpt, 0x44000, 0x45000, 0x30000), (0x41000, 0x42000, 0x43000, 0x31000)] {
                    try m.store(pd | 7, at: pdpt + 8 * 256)
                    try m.store(pt | 7, at: pd)
                    try m.store(page | 7 | (global ? 0x100 : 0), at: pt)
                }
                try m.write([0xB8, 1, 0, 0, 0, 0xC3], at: 0x30000)   // mov eax, 1; ret
                try m.write([0xB8, 2, 0, 0, 0, 0xC3], at: 0x31000)   // mov eax, 2; ret
                // The call follows a native instruction, so its block is translated code.
                let loop: [UInt8] = [0x41, 0xBF, 3, 0, 0, 0,         // mov r15d, 3
                                     0x48, 0x89, 0xCE,               // mov rsi, rcx
                                     0xFF, 0xD1, 0x49, 0x01, 0xC0,   // call rcx; add r8, rax
                                     0x49, 0xFF, 0xCF, 0x75, 0xF3]   // dec r15; jnz
                var code: [UInt8] = [0x48, 0xB9] + withUnsafeBytes(of: linear.littleEndian, Array.init) + [0x45, 0x31, 0xC0]
                code += loop
                if invlpg {
                    // mov rdx, 0x45000; mov qword [rdx], 0x31007; invlpg [rcx]
                    code += [0x48, 0xBA] + withUnsafeBytes(of: UInt64(0x45000).littleEndian, Array.init)
                    code += [0x48, 0xC7, 0x02, 0x07, 0x10, 0x03, 0x00, 0x0F, 0x01, 0x39]
                } else {
                    code += [0x48, 0xBA] + withUnsafeBytes(of: UInt64(0x40000).littleEndian, Array.init) + [0x0F, 0x22, 0xDA]
                }
                code += loop
                var regs = RegisterFile()
                regs.gpr[4] = EmulatedRunner.dataAddress + 0x8000
                let (out, exit) = try r.run(code, regs, budget: 100_000)
                XCTAssertEqual(exit, .haltedForever)
                XCTAssertEqual(out.gpr[8], 3 * 1 + 3 * (global && !invlpg ? 1 : 2), "invlpg \(invlpg), global \(global), translated \(translated)")
            }
        }
    }

    /// A store whose TLB lookup may change the host's flags (an XOR sets them all after it)
    /// faults with the guest's flags of the CMP before it, as interpreted, and a miss in the
    /// middle of such a region (the first store's page is mapped, the loads hit) resumes with
    /// them too.
    func testFaultInsideAFlagChangingLookupRegionHasTheGuestsFlags() throws {
        let body: [UInt8] = [0x48, 0x81, 0xC3, 0x00, 0x00, 0x00, 0x10,  // add rbx, 0x10000000
                             0x49, 0x81, 0xFF, 0xE8, 0x03, 0x00, 0x00,  // cmp r15, 1000: CF, SF
                             0x4C, 0x8B, 0x0C, 0x24,                    // mov r9, [rsp]
                             0x4C, 0x89, 0x03,                          // mov [rbx], r8
                             0x4C, 0x89, 0x0C, 0x24,                    // mov [rsp], r9
                             0x31, 0xC0]                                // xor eax, eax
        let code = program(body, loops: 100)
        let (interpreted, _) = try run(code, RegisterFile(), data: [0], translated: false)
        let (translated, _) = try run(code, RegisterFile(), data: [0], translated: true)
        XCTAssertEqual(interpreted.exit, .tripleFault)
        XCTAssertEqual(interpreted.regs.rflags & (RFlags.cf | RFlags.sf), RFlags.cf | RFlags.sf)
        XCTAssertEqual(translated, interpreted)
    }

    /// STI inside a translated loop (no interrupt pending) lets translated code go on: the same
    /// registers, flags and retired count as interpreted, with IF set at the end.
    func testSTIInATranslatedLoop() throws {
        let body: [UInt8] = [0x49, 0x83, 0xC1, 0x03,   // add r9, 3
                             0xFA,                     // cli
                             0x49, 0x83, 0xC2, 0x05,   // add r10, 5
                             0xFB]                     // sti
        let code = program(body, loops: 50)
        let (interpreted, _) = try run(code, RegisterFile(), data: [0], translated: false)
        let (translated, r) = try run(code, RegisterFile(), data: [0], translated: true)
        XCTAssertEqual(interpreted.regs.gpr[9], 150)
        XCTAssertEqual(translated, interpreted)
        XCTAssertNotEqual(r.cpu.st.pointee.rflags & RFlags.if, 0)
    }

    /// The jump cache's own flushes: a CR3 write (non-global flush) keeps entries filled through
    /// global pages, a full flush does not, and INVLPG empties only its page's entries (both
    /// pages' for a block that crosses into the next).
    func testVirtualJumpCacheKeepsGlobalEntriesAcrossNonGlobalFlushes() {
        let cache = VirtualJumpCache()
        cache.reset(slowPath: 0x1000)
        let word = UnsafeMutablePointer<Atomic<UInt32>>.allocate(capacity: 1)
        defer { word.deallocate() }
        let kernel: UInt64 = 0xFFFF_FFFF_8100_0040, kernel2: UInt64 = 0xFFFF_FFFF_8100_2000, user: UInt64 = 0x40_1000
        let crossing: UInt64 = 0xFFFF_FFFF_8100_4FFE
        func fillAll() {
            cache.fill(linear: kernel, user: 0, code: 0x2000, word: word, tag: 1, global: true, crossesPage: false)
            cache.fill(linear: kernel2, user: 0, code: 0x3000, word: word, tag: 1, global: true, crossesPage: false)
            cache.fill(linear: user, user: 1, code: 0x4000, word: word, tag: 1, global: false, crossesPage: false)
            cache.fill(linear: crossing, user: 0, code: 0x5000, word: word, tag: 1, global: true, crossesPage: true)
        }
        fillAll()
        cache.flush(keepGlobal: true)
        XCTAssertTrue(present(cache, kernel, 0) && present(cache, kernel2, 0) && present(cache, crossing, 0))
        XCTAssertFalse(present(cache, user, 1))
        XCTAssertEqual(cache.entries[VirtualJumpCache.set(user, user: 1) * VirtualJumpCache.ways].code, 0x1000,
                       "an emptied entry leads to the slow path")
        cache.flushPage(kernel2 + 0x123)
        XCTAssertTrue(present(cache, kernel, 0))
        XCTAssertFalse(present(cache, kernel2, 0))
        // INVLPG of a crossing block's second page empties it; of its first page's neighbour below, not.
        cache.flushPage(crossing - 0x1000)
        XCTAssertTrue(present(cache, crossing, 0))
        cache.flushPage(crossing + 0x2)
        XCTAssertFalse(present(cache, crossing, 0))
        // A kept entry is still listed: the next full flush empties it.
        fillAll()
        cache.flush(keepGlobal: true)
        cache.flush()
        XCTAssertFalse(present(cache, kernel, 0) || present(cache, kernel2, 0) || present(cache, user, 1) || present(cache, crossing, 0))
    }

    /// Whether `la` is in either way of its set.
    func present(_ cache: VirtualJumpCache, _ la: UInt64, _ user: UInt64) -> Bool {
        let first = VirtualJumpCache.set(la, user: user) * VirtualJumpCache.ways
        return (0..<VirtualJumpCache.ways).contains { cache.entries[first + $0].linear == la }
    }

    /// Two RIPs that share a set both stay; a third evicts the older one; a refill of a present
    /// RIP replaces its entry without evicting the other way. Neighbouring RIPs (a page apart,
    /// the same byte offset back: what the first hash collided on) get different sets.
    func testVirtualJumpCacheIsTwoWaySetAssociative() {
        let cache = VirtualJumpCache()
        cache.reset(slowPath: 0x1000)
        let word = UnsafeMutablePointer<Atomic<UInt32>>.allocate(capacity: 1)
        defer { word.deallocate() }
        let base: UInt64 = 0xFFFF_FFFF_8100_0000
        let set = VirtualJumpCache.set(base, user: 0)
        var same: [UInt64] = []
        var la = base
        while same.count < 2 { la += 16; if VirtualJumpCache.set(la, user: 0) == set { same.append(la) } }
        let (a, b, c) = (base, same[0], same[1])
        func fill(_ x: UInt64, _ code: UInt64) {
            cache.fill(linear: x, user: 0, code: code, word: word, tag: 0, global: false, crossesPage: false)
        }
        fill(a, 0x2000); fill(b, 0x3000)
        XCTAssertTrue(present(cache, a, 0) && present(cache, b, 0))
        fill(a, 0x2100)
        XCTAssertTrue(present(cache, a, 0) && present(cache, b, 0))
        XCTAssertTrue((0..<2).contains { cache.entries[set * 2 + $0].linear == a && cache.entries[set * 2 + $0].code == 0x2100 })
        fill(c, 0x4000)
        XCTAssertTrue(present(cache, c, 0))
        XCTAssertEqual([a, b].filter { present(cache, $0, 0) }.count, 1)
        var collisions = 0
        for k in 1...64 as ClosedRange<UInt64> {
            let p = base + k * 0x1000 - k * 16
            if VirtualJumpCache.set(p, user: 0) == VirtualJumpCache.set(base, user: 0) { collisions += 1 }
        }
        XCTAssertLessThan(collisions, 2)
        XCTAssertNotEqual(VirtualJumpCache.set(a, user: 0), VirtualJumpCache.set(a, user: 1))
    }

    /// JMP and CALL through a register and through memory, translated: the same registers,
    /// flags (CF from a CMP read after the CALL), memory and retired count as interpreted.
    func testIndirectJumpsAndCallsInATranslatedLoop() throws {
        let body: [UInt8] = [0x48, 0x8D, 0x05, 0x02, 0x00, 0x00, 0x00,  // lea rax, [rip+2]
                             0xFF, 0xE0,                                // jmp rax
                             0x49, 0x83, 0xC1, 0x03,                    // add r9, 3
                             0x49, 0x83, 0xF9, 0x64,                    // cmp r9, 100: CF while below
                             0x48, 0x8D, 0x0D, 0x08, 0x00, 0x00, 0x00,  // lea rcx, [rip+8]: f
                             0xFF, 0xD1,                                // call rcx
                             0x49, 0x83, 0xD2, 0x00,                    // adc r10, 0
                             0xEB, 0x04,                                // jmp over f
                             0x49, 0xFF, 0xC3, 0xC3,                    // f: inc r11; ret
                             0x48, 0x89, 0x0B,                          // mov [rbx], rcx
                             0xFF, 0x13,                                // call [rbx]
                             0x48, 0x8D, 0x15, 0x07, 0x00, 0x00, 0x00,  // lea rdx, [rip+7]
                             0x48, 0x89, 0x53, 0x08,                    // mov [rbx+8], rdx
                             0xFF, 0x63, 0x08]                          // jmp [rbx+8]
        let code = program(body, loops: 50)
        let data = [UInt8](repeating: 0, count: 16)
        let (interpreted, _) = try run(code, RegisterFile(), data: data, translated: false)
        let (translated, runner) = try run(code, RegisterFile(), data: data, translated: true)
        XCTAssertEqual(interpreted.regs.gpr[9], 150)
        XCTAssertEqual(interpreted.regs.gpr[10], 33)
        XCTAssertEqual(interpreted.regs.gpr[11], 100)
        XCTAssertGreaterThan(runner.cpu.translated?.used ?? 0, 0)
        XCTAssertEqual(translated, interpreted)
    }

    /// A translated JMP or CALL to a non-canonical address (on the loop's last iteration) is
    /// the interpreter's #GP: nothing pushed, RIP at the branch, as interpreted.
    func testIndirectBranchToANonCanonicalAddressFaults() throws {
        for branch: [UInt8] in [[0xFF, 0xE0], [0xFF, 0xD0]] {          // jmp rax, call rax
            var body: [UInt8] = [0x48, 0x8D, 0x05, 0x14, 0x00, 0x00, 0x00]   // lea rax, [rip+20]: after the branch
            body += [0x48, 0xBA] + withUnsafeBytes(of: UInt64(0x8000_0000_0000).littleEndian, Array.init)  // mov rdx, non-canonical
            body += [0x49, 0x83, 0xFF, 0x01,                           // cmp r15, 1
                     0x48, 0x0F, 0x44, 0xC2]                           // cmove rax, rdx
            body += branch
            if branch[1] == 0xD0 { body += [0x48, 0x83, 0xC4, 0x08] }  // add rsp, 8: drop the return address
            body += [0x49, 0x83, 0xC1, 0x01]                           // add r9, 1
            let code = program(body, loops: 10)
            let (interpreted, _) = try run(code, RegisterFile(), data: [0], translated: false)
            let (translated, runner) = try run(code, RegisterFile(), data: [0], translated: true)
            XCTAssertEqual(interpreted.exit, .tripleFault)
            XCTAssertEqual(interpreted.regs.gpr[9], 9)
            XCTAssertGreaterThan(runner.cpu.translated?.used ?? 0, 0)
            XCTAssertEqual(translated, interpreted)
        }
    }

    /// SWAPGS no longer ends its block: translated, accesses through GS after each SWAPGS in the
    /// same block use the swapped base, as interpreted.
    func testSWAPGSInsideATranslatedBlock() throws {
        func wrmsr(_ index: UInt32, _ value: UInt64) -> [UInt8] {
            [0xB9] + withUnsafeBytes(of: index.littleEndian, Array.init)
                + [0xB8] + withUnsafeBytes(of: UInt32(truncatingIfNeeded: value).littleEndian, Array.init)
                + [0xBA] + withUnsafeBytes(of: UInt32(truncatingIfNeeded: value >> 32).littleEndian, Array.init)
                + [0x0F, 0x30]
        }
        let data = Self.dataBase - 64   // where `run` puts `data`: two qwords, 5 and 7
        let setup = wrmsr(0xC000_0101, data) + wrmsr(0xC000_0102, data + 8)   // GS base, KernelGSbase
        let body: [UInt8] = [0x0F, 0x01, 0xF8,                       // swapgs
                             0x65, 0x48, 0x8B, 0x04, 0x25, 0, 0, 0, 0,  // mov rax, gs:[0]
                             0x49, 0x01, 0xC1,                       // add r9, rax
                             0x0F, 0x01, 0xF8,                       // swapgs
                             0x65, 0x48, 0x8B, 0x04, 0x25, 0, 0, 0, 0,  // mov rax, gs:[0]
                             0x49, 0x01, 0xC2]                       // add r10, rax
        let code = setup + program(body, loops: 30)
        let values: [UInt8] = withUnsafeBytes(of: UInt64(5).littleEndian, Array.init) + withUnsafeBytes(of: UInt64(7).littleEndian, Array.init)
        let (interpreted, _) = try run(code, RegisterFile(), data: values, translated: false)
        let (translated, runner) = try run(code, RegisterFile(), data: values, translated: true)
        XCTAssertEqual(interpreted.regs.gpr[9], 210)
        XCTAssertEqual(interpreted.regs.gpr[10], 150)
        XCTAssertGreaterThan(runner.cpu.translated?.used ?? 0, 0)
        XCTAssertEqual(translated, interpreted)
    }
}
