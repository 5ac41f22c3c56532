import XCTest
@testable import TCG

/// The MMX part of the 0F map (SDM Vol. 2 Appendix A): which encodings decode as `.mmx`, their
/// operands and immediates, and the neighbours that stay #UD.
extension DecoderTests {
    func testMMXEncodingsDecode() throws {
        // paddb mm1, [rax+8]
        var i = try decode([0x0F, 0xFC, 0x48, 0x08]).get()
        XCTAssertEqual(i.op, .mmx); XCTAssertEqual(i.sub, 0xFC); XCTAssertTrue(i.isMem); XCTAssertEqual(i.reg, 1)
        XCTAssertEqual(i.length, 4)
        // psrlq mm2, 7 (group 14 /2): the reg field is kept in imm2's high byte.
        i = try decode([0x0F, 0x73, 0xD2, 0x07]).get()
        XCTAssertEqual(i.op, .mmx); XCTAssertEqual(i.rm, 2); XCTAssertEqual(i.imm, 7); XCTAssertEqual(i.imm2 >> 8, 2)
        // pshufw mm0, mm1, 0x1B; emms (no ModRM); movq2dq xmm9, mm3 (F3); cvtpi2pd xmm0, [rsi] (66)
        XCTAssertEqual(try decode([0x0F, 0x70, 0xC1, 0x1B]).get().length, 4)
        i = try decode([0x0F, 0x77]).get()
        XCTAssertEqual(i.op, .mmx); XCTAssertEqual(i.length, 2)
        i = try decode([0xF3, 0x44, 0x0F, 0xD6, 0xCB]).get()
        XCTAssertEqual(i.op, .mmx); XCTAssertEqual(i.reg, 9); XCTAssertEqual(i.imm2 & 0xFF, 2)
        XCTAssertEqual(try decode([0x66, 0x0F, 0x2A, 0x06]).get().op, .mmx)
        // With 66 the same opcodes are the SSE2 forms on xmm registers.
        XCTAssertEqual(try decode([0x66, 0x0F, 0xFC, 0xC1]).get().op, .sse)
        XCTAssertEqual(try decode([0x66, 0x0F, 0xF7, 0xC1]).get().op, .sse, "maskmovdqu")
    }

    func testMMXNeighboursAreUndefined() {
        let undefined: [[UInt8]] = [
            [0x0F, 0x6C, 0xC1],        // punpcklqdq has no MMX form
            [0x0F, 0x73, 0xD9, 0x01],  // psrldq (/3) has no MMX form
            [0x0F, 0x72, 0xC1, 0x01],  // group 13 /0
            [0x0F, 0xD6, 0xC1],        // movq xmm/m64 store needs 66
            [0x0F, 0xF7, 0x00],        // maskmovq takes registers only
            [0x0F, 0xE7, 0xC1],        // movntq takes memory only
            [0x0F, 0xD7, 0x00],        // pmovmskb takes registers only
            [0xF0, 0x0F, 0xFC, 0x00],  // LOCK
            [0xF2, 0x0F, 0xD6, 0x00],  // movdq2q takes registers only
        ]
        for b in undefined {
            if case .success(let i) = decode(b) { XCTFail("\(b.map { String(format: "%02x", $0) }) decoded as \(i.op)") }
        }
    }
}
