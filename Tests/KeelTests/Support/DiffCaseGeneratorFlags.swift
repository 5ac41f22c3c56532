import Foundation

/// Cases that set RFLAGS.AC or TF through PUSHF/POPF. Alignment checks (the diff-runner runs with
/// CR0.AM set): a few instructions with memory operands at whatever alignment the generator picks
/// (and the stack as the case left it), so #AC is compared with the real CPU. Single steps: the
/// #DB after the first instruction, or after the second when the first is MOV SS.
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

    mutating func singleStep(_ x: inout Context) -> [UInt8] {
        // mov eax, ss; push 0x102; popfq (TF, from a constant image: PVM reports IOPL and IF
        // differently); mov ss, eax, which holds the trap back one instruction; xor eax, eax, after
        // which #DB comes (EAX is cleared because PVM's ring-3 SS selector is the host's).
        guard !x.reserved.contains(0) else { return alu(x) }
        let next: [UInt8] = rng.pick([[], [0x90], [0xF8]])
        return [0x8C, 0xD0, 0x68, 0x02, 0x01, 0x00, 0x00, 0x9D, 0x8E, 0xD0, 0x31, 0xC0] + next
    }
}
