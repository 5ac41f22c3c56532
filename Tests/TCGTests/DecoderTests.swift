import XCTest
@testable import TCG

final class DecoderTests: XCTestCase {
    func decode(_ bytes: [UInt8], mode: CodeMode = .long64) -> Result<Instruction, DecodeFailure> {
        bytes.withUnsafeBufferPointer { Decoder.decode($0.baseAddress!, count: $0.count, mode: mode) }
    }

    func testGroup1Immediate() throws {
        let i = try decode([0x41, 0x80, 0xFA, 0xC5]).get()
        XCTAssertEqual(i.op, .aluRMImm)
        XCTAssertEqual(i.sub, 7)
        XCTAssertEqual(i.rm, 10)
        XCTAssertFalse(i.isMem)
        XCTAssertEqual(i.imm, 0xC5)
        XCTAssertEqual(i.length, 4)
    }
}
