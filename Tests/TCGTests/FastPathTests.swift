import XCTest
@testable import TCG

/// The run loop's inline forms (FastPath.swift, CoreOps.swift) against the general executor's
/// helpers they replace: same results and the same six status flags once materialized.
final class FastPathTests: XCTestCase {
    /// Values that reach the edges: zero, all ones, sign bits of each width, and random ones.
    func operands() -> [UInt64] {
        var g = SystemRandomNumberGenerator()
        var v: [UInt64] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
                           0xFFFF_FFFF, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ~0]
        for _ in 0..<24 { v.append(g.next()) }
        return v
    }

    func testLazyShiftsAndInlineRotatesMatchTheEagerShift() throws {
        let runner = try EmulatedRunner()
        let cpu = runner.cpu, s = cpu.st
        var checked = 0
        for size: UInt8 in 0...3 {
            for op: UInt8 in [0, 1, 4, 5, 6, 7] {
                for raw in operands() {
                    let v = raw & sizeMask(size)
                    for count in 1...UInt64(size == 3 ? 63 : 31) {
                        for carryIn in [false, true] {
                            // Previous flags: a lazy subtraction whose CF is `carryIn`.
                            s.pointee.rflags = 2
                            _ = s.pointee.aluResult(5, carryIn ? 0 : 1, 1, 3)
                            let eager = cpu.shift(op, v, count, size)
                            let eagerFlags = s.pointee.currentRFlags() & RFlags.arith

                            s.pointee.rflags = 2
                            _ = s.pointee.aluResult(5, carryIn ? 0 : 1, 1, 3)
                            let inline = try XCTUnwrap(s.pointee.shiftResult(op, v, count, size))
                            let inlineFlags = s.pointee.currentRFlags() & RFlags.arith
                            XCTAssertEqual(inline, eager, "op \(op) size \(size) v \(v) count \(count)")
                            XCTAssertEqual(inlineFlags, eagerFlags, "flags: op \(op) size \(size) v \(v) count \(count)")
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 10_000)
    }

    func testRCLAndRCRAreLeftToTheGeneralPath() throws {
        var st = CPUState()
        XCTAssertNil(st.shiftResult(2, 5, 1, 2))
        XCTAssertNil(st.shiftResult(3, 5, 1, 2))
    }

    func testConditionsAfterLazyShiftsReadTheirFlags() throws {
        var st = CPUState()
        // shr eax, 1 of 1: result 0 (ZF), CF = 1, OF = MSB of the operand (0).
        XCTAssertEqual(st.shiftResult(5, 1, 1, 2), 0)
        XCTAssertTrue(st.condition(0x4))   // JE
        XCTAssertTrue(st.condition(0x2))   // JB
        XCTAssertFalse(st.condition(0x0))  // JO
        // sar of a negative byte by 1: SF set, CF = the bit shifted out.
        XCTAssertEqual(st.shiftResult(7, 0x81, 1, 0), 0xC0)
        XCTAssertTrue(st.condition(0x8))   // JS
        XCTAssertTrue(st.condition(0x2))   // JB
        XCTAssertTrue(st.condition(0xC))   // JL: SF != OF (OF clear)
    }

    func testInlineIMULMatchesTheHostFlagsRule() {
        var st = CPUState()
        // Two 64-bit products, one that fits and one that does not; SF/ZF/AF/PF are kept.
        st.rflags = 2 | RFlags.zf | RFlags.pf
        XCTAssertEqual(st.imulResult(6, 7, 3), 42)
        XCTAssertEqual(st.currentRFlags() & RFlags.arith, RFlags.zf | RFlags.pf)
        XCTAssertEqual(st.imulResult(1 << 62, 4, 3), 0)
        XCTAssertEqual(st.currentRFlags() & RFlags.arith, RFlags.zf | RFlags.pf | RFlags.cf | RFlags.of)
        // 32-bit: -2 * 3 fits; 0x10000 * 0x10000 does not.
        XCTAssertEqual(st.imulResult(0xFFFF_FFFE, 3, 2), 0xFFFF_FFFA)
        XCTAssertEqual(st.currentRFlags() & (RFlags.cf | RFlags.of), 0)
        XCTAssertEqual(st.imulResult(0x10000, 0x10000, 2), 0)
        XCTAssertEqual(st.currentRFlags() & (RFlags.cf | RFlags.of), RFlags.cf | RFlags.of)
    }

    func testFastFormsAreChosenOnlyWhereTheirAssumptionsHold() {
        var i = Instruction()
        i.op = .jcc; i.size = 3
        XCTAssertEqual(FastForm.of(i, mode: .long64), FastForm.jcc64)
        XCTAssertEqual(FastForm.of(i, mode: .prot32), FastForm.none)  // rip is masked there
        i.op = .aluRMReg; i.isMem = true; i.sub = 0
        XCTAssertEqual(FastForm.of(i, mode: .long64), FastForm.none)  // read-modify-write stays general
        i.sub = 7
        XCTAssertEqual(FastForm.of(i, mode: .long64), FastForm.cmpMemReg)
        i.op = .incRM; i.isMem = false; i.prefixes = Prefix.lock
        XCTAssertEqual(FastForm.of(i, mode: .long64), FastForm.none)
        i.op = .ret; i.prefixes = 0; i.imm = 8
        XCTAssertEqual(FastForm.of(i, mode: .long64), FastForm.none)  // ret imm16 stays general
        XCTAssertEqual(MemoryLayout<Instruction>.stride, 40)
    }
}

/// Integer to floating-point conversions under each MXCSR rounding control (CVTSI2SS/SD,
/// CVTDQ2PS, CVTPI2PS): 2^24 + 1 is not a single, 2^53 + 1 not a double.
final class ConversionRoundingTests: XCTestCase {
    func testIntegerToSingleFollowsTheRoundingControl() {
        let n: Int64 = (1 << 24) + 1
        XCTAssertEqual(X86CPU.single(n, .toNearestOrEven), 16_777_216)
        XCTAssertEqual(X86CPU.single(n, .down), 16_777_216)
        XCTAssertEqual(X86CPU.single(n, .up), 16_777_218)
        XCTAssertEqual(X86CPU.single(n, .towardZero), 16_777_216)
        XCTAssertEqual(X86CPU.single(-n, .down), -16_777_218)
        XCTAssertEqual(X86CPU.single(-n, .up), -16_777_216)
        XCTAssertEqual(X86CPU.single(-n, .towardZero), -16_777_216)
        // Nearest rounds 2^24 + 3 up; toward zero and down must not.
        XCTAssertEqual(X86CPU.single((1 << 24) + 3, .towardZero), 16_777_218)
        XCTAssertEqual(X86CPU.single((1 << 24) + 3, .up), 16_777_220)
        // The extremes: Int64.max is below 2^63, Int64.min is -2^63 exactly.
        XCTAssertEqual(X86CPU.single(.max, .toNearestOrEven), 0x1p63)
        XCTAssertEqual(X86CPU.single(.max, .down), Float(0x1p63).nextDown)
        XCTAssertEqual(X86CPU.single(.min, .up), -0x1p63)
        XCTAssertEqual(X86CPU.single(.min + 1, .down), -0x1p63)
        XCTAssertEqual(X86CPU.single(.min + 1, .up), Float(-0x1p63).nextUp)
        XCTAssertEqual(X86CPU.single(7, .down), 7)
    }

    func testIntegerToDoubleFollowsTheRoundingControl() {
        let n: Int64 = (1 << 53) + 1
        XCTAssertEqual(X86CPU.double(n, .toNearestOrEven), 9_007_199_254_740_992)
        XCTAssertEqual(X86CPU.double(n, .up), 9_007_199_254_740_994)
        XCTAssertEqual(X86CPU.double(-n, .down), -9_007_199_254_740_994)
        XCTAssertEqual(X86CPU.double(-n, .towardZero), -9_007_199_254_740_992)
        XCTAssertEqual(X86CPU.double(.max, .towardZero), Double(0x1p63).nextDown)
    }
}
