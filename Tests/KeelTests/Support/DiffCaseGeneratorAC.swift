import Foundation

/// Alignment-check cases for the diff-runner (which runs with CR0.AM set): RFLAGS.AC is set
/// through PUSHF/POPF, then a few instructions with memory operands at whatever alignment the
/// generator picks (and the stack as the case left it), so #AC against the real CPU is compared.
extension DiffCaseGenerator {
    mutating func alignmentCheck(_ x: inout Context) -> [UInt8] {
        // pushfq; or qword [rsp], 0x40000; popfq; mov qword [rsp-8], 0: the pushed image holds
        // IOPL and IF, which PVM reports differently (see stackOps), so it is cleared again; the
        // stack is aligned for that, then sometimes misaligned for what follows (sub rsp, 4).
        x.c.regs[Self.rsp] &= ~7
        var code: [UInt8] = [0x9C, 0x48, 0x81, 0x0C, 0x24, 0x00, 0x00, 0x04, 0x00, 0x9D, 0x48, 0xC7, 0x44, 0x24, 0xF8, 0, 0, 0, 0]
        if rng.chance(4) { code += [0x48, 0x83, 0xEC, 0x04] }
        // Not .stack: ENTER with AC set raises #AC on this host (AMD) when its frame leaves RSP
        // misaligned, which the SDM does not describe; plain pushes and pops instead.
        let families: [Family] = [.alu, .unary, .moves, .atomics, .sse, .sseMoves, .x87, .mmx]
        for _ in 0..<(1 + rng.below(3)) {
            if rng.chance(5) {
                code += rng.pick([[0x50 | UInt8(rng.below(8))], X86Encoder.encode(opcode: [0xFF], reg: 6, rm: mem(x)), [0x66, 0x6A, 0x01]])
            } else {
                code += instruction(rng.pick(families), &x)
            }
        }
        return code
    }
}
