import XCTest
@testable import TCG

/// Measures the interpreter's speed on a CPU-bound loop (printed; asserts only that it ran).
/// `swift test -c release --filter ThroughputTests` gives the number worth quoting.
final class ThroughputTests: XCTestCase {
    func testTightLoopInstructionsPerSecond() throws {
        let emu = try EmulatedRunner()
        // mov ecx, N; 1: add rax, rcx; xor rdx, rax; dec rcx; jnz 1b
        let n: UInt32 = 3_000_000
        var code: [UInt8] = [0xB9]
        withUnsafeBytes(of: n.littleEndian) { code += $0 }
        code += [0x48, 0x01, 0xC8, 0x48, 0x31, 0xC2, 0x48, 0xFF, 0xC9, 0x75, 0xF5]
        var input = RegisterFile()
        input.rflags = 2
        let start = DispatchTime.now().uptimeNanoseconds
        let before = emu.cpu.instructionCount
        let (out, exit) = try emu.run(code, input, budget: Int.max)
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let executed = emu.cpu.instructionCount - before
        XCTAssertEqual(exit, .haltedForever)
        XCTAssertEqual(out.gpr[1], 0)
        XCTAssertEqual(executed, UInt64(n) * 4 + 2)
        print("tcg tight loop: \(executed) instructions in \(String(format: "%.3f", elapsed)) s = \(String(format: "%.1f", Double(executed) / elapsed / 1e6)) M instructions/s")
    }

    func testMemoryAndCallLoopInstructionsPerSecond() throws {
        let emu = try EmulatedRunner()
        // rsp = 0x30000; mov ecx, N; 1: mov [rsp-16], rcx; call f; add rax, [rsp-16]; dec ecx; jnz 1b; hlt
        // f: push rbx; mov rbx, [rsp+8]; pop rbx; ret
        let n: UInt32 = 500_000
        var code: [UInt8] = [0xBC, 0x00, 0x00, 0x03, 0x00, 0xB9]
        withUnsafeBytes(of: n.littleEndian) { code += $0 }
        let loop: [UInt8] = [0x48, 0x89, 0x4C, 0x24, 0xF0, 0xE8, 0x0A, 0x00, 0x00, 0x00, 0x48, 0x03, 0x44, 0x24, 0xF0, 0xFF, 0xC9, 0x75, 0xED]
        code += loop + [0xF4] + [0x53, 0x48, 0x8B, 0x5C, 0x24, 0x08, 0x5B, 0xC3]
        var input = RegisterFile()
        input.rflags = 2
        let start = DispatchTime.now().uptimeNanoseconds
        let before = emu.cpu.instructionCount
        let (out, exit) = try emu.run(code, input, budget: Int.max)
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let executed = emu.cpu.instructionCount - before
        XCTAssertEqual(exit, .haltedForever)
        XCTAssertEqual(out.gpr[1], 0)
        print("tcg memory/call loop: \(executed) instructions in \(String(format: "%.3f", elapsed)) s = \(String(format: "%.1f", Double(executed) / elapsed / 1e6)) M instructions/s")
    }
}
