import XCTest
@testable import TCG

/// x87 encodings and cases the kvm-vs-tcg runs found (SDM Vol. 1 §8.2.2 Table 8-3, §8.5.1.2):
/// FXAM on unsupported encodings and pseudo-denormals, FUCOM on an unnormal, arithmetic on an
/// empty register.
extension FPUSystemTests {
    /// fninit; fld tbyte [rbx]; fxam; fnstsw ax
    func fxamClass(_ significand: UInt64, _ signExponent: UInt16) throws -> UInt64 {
        try emu.memory.store(significand, at: Self.data)
        try emu.memory.store(signExponent, at: Self.data + 8)
        XCTAssertNil(try run([0xDB, 0xE3, 0xDB, 0x2B, 0xD9, 0xE5, 0xDF, 0xE0], regs: [3: Self.data]))
        return cpu.gpr[0] & 0x4700  // C3 C2 C1 C0
    }

    func testFXAMClassifiesFromTheRegisterBits() throws {
        XCTAssertEqual(try fxamClass(0x8000_0000_0000_0000, 0x3FFF), 0x0400, "1.0: normal")
        XCTAssertEqual(try fxamClass(0x4000_0000_0000_0000, 0x3FFF), 0, "unnormal: unsupported")
        XCTAssertEqual(try fxamClass(0x4000_0000_0000_0000, 0x7FFF), 0, "pseudo-NaN: unsupported")
        XCTAssertEqual(try fxamClass(0, 0xFFFF), 0x0200, "pseudo-infinity: unsupported, negative")
        XCTAssertEqual(try fxamClass(0x8000_0000_0000_0000, 0x7FFF), 0x0500, "infinity")
        XCTAssertEqual(try fxamClass(0xC000_0000_0000_0000, 0x7FFF), 0x0100, "NaN")
        XCTAssertEqual(try fxamClass(0x8000_0000_0000_0001, 0x0000), 0x4400, "pseudo-denormal: denormal")
        XCTAssertEqual(try fxamClass(1, 0x0000), 0x4400, "denormal")
        XCTAssertEqual(try fxamClass(0, 0x8000), 0x4200, "negative zero")
    }

    func testUnnormalIsAnInvalidOperandEvenForFUCOM() throws {
        try emu.memory.store(UInt64(0x4000_0000_0000_0000), at: Self.data)
        try emu.memory.store(UInt16(0x3FFF), at: Self.data + 8)
        // fninit; fldz; fld tbyte [rbx]; fucomi st, st(1); fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xEE, 0xDB, 0x2B, 0xDB, 0xE9, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0x01, "IE")
        XCTAssertEqual(cpu.st.pointee.currentRFlags() & (RFlags.zf | RFlags.pf | RFlags.cf), RFlags.zf | RFlags.pf | RFlags.cf, "unordered")
    }

    func testArithmeticOnAnEmptyRegisterStoresTheIndefinite() throws {
        try emu.memory.store(UInt32(0xFFC1_2345), at: Self.data)  // a float NaN with a payload
        // fninit; fld dword [rbx]; fadd st, st(1) (ST(1) empty); fstp qword [rbx+8]; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0x03, 0xD8, 0xC1, 0xDD, 0x5B, 0x08, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(try emu.memory.load(UInt64.self, at: Self.data + 8), 0xFFF8_0000_0000_0000, "the indefinite, not the NaN's payload")
        XCTAssertEqual(cpu.gpr[0] & 0x41, 0x41, "IE and SF: stack underflow")
    }

    func testDenormalDividedByZeroIsDivideByZeroAlone() throws {
        try emu.memory.store(UInt32(0x0000_1234), at: Self.data)  // a denormal float
        // fninit; fldz; fdivr dword [rbx]; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xEE, 0xD8, 0x3B, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x3F, 0x04, "ZE, not DE")
        // fninit; fld1; fdiv dword [rbx]: a denormal divisor is DE (and the huge quotient OE, PE).
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xE8, 0xD8, 0x33, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x06, 0x02, "DE")
    }

    func testLoadsClearC1() throws {
        try emu.memory.store(Double(3).bitPattern, at: Self.data)
        // fninit; fld1; fdiv qword [rbx] (1/3 rounds up: C1); fldpi; fnstsw ax
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xE8, 0xDC, 0x33, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x200, 0x200)
        XCTAssertNil(try run([0xDB, 0xE3, 0xD9, 0xE8, 0xDC, 0x33, 0xD9, 0xEB, 0xDF, 0xE0], regs: [3: Self.data]))
        XCTAssertEqual(cpu.gpr[0] & 0x200, 0, "FLDPI clears C1")
    }
}
