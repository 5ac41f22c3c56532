/// What a decoded instruction does; the executor switches on this (one jump table).
public enum Op: UInt8 {
    case invalid = 0
    // Integer ALU. `sub` holds the ALU operation (0 add, 1 or, 2 adc, 3 sbb, 4 and, 5 sub, 6 xor, 7 cmp).
    case aluRMReg, aluRegRM, aluRMImm
    case testRMReg, testRMImm
    case incRM, decRM, notRM, negRM
    case mulRM, imulRM, divRM, idivRM
    case imulRegRM, imulRegRMImm
    case shiftRM          // sub: 0 rol 1 ror 2 rcl 3 rcr 4 shl 5 shr 6 sal 7 sar; count: imm (countFromCL flag) or 1
    case shld, shrd       // count from imm or CL
    case btReg, btImm      // sub: 0 bt 1 bts 2 btr 3 btc
    case bsf, bsr, tzcnt, lzcnt, popcnt, bswap
    case cmpxchg, xadd, cmpxchg8b16b
    case xchgRMReg
    // Moves.
    case movRMReg, movRegRM, movRMImm, movzx, movsx, movsxd, lea, movbeLoad, movbeStore
    case movSregRM, movRMSreg, movMoffsLoad, movMoffsStore
    case cbw, cwd, xlat, cmov, setcc
    case lahf, sahf
    // Stack.
    case pushRM, pushImm, popRM, pushSreg, popSreg, pushf, popf, leave, enter
    // Control transfer.
    case jcc, jmpRel, callRel, jmpRM, callRM, ret, retf, jmpFarM, callFarM, jmpFarImm, iret, loop, jrcxz
    case int3, intN, int1, into, ud2
    // String: sub 0 movs 1 cmps 2 stos 3 lods 4 scas 5 ins 6 outs.
    case string
    // Port I/O: imm port, or DX when `sub` == 1.
    case inPort, outPort
    // Flags and processor control.
    case clc, stc, cmc, cld, std, cli, sti, hlt, nop, pause
    case cpuid, rdtsc, rdtscp, rdmsr, wrmsr, syscall, sysret, swapgs
    case group6, group7Mem  // sub: the reg field (sgdt sidt lgdt lidt smsw - lmsw invlpg)
    case movFromCR, movToCR, movFromDR, movToDR, clts
    case wbinvd, fence, clflush
    case fxsave, fxrstor, ldmxcsr, stmxcsr
    case rdrand
    // x87 (D8-DF: `sub` the opcode's low 3 bits, `imm` the ModRM byte), FWAIT, and the SSE/SSE2
    // 0F map (`sub` the second opcode byte, `imm2` the mandatory prefix: 0 none, 1 66, 2 F3, 3 F2).
    case x87, fwait, sse
    // MMX and the SSE/SSE2 instructions with an MMX register operand (same `sub`/`imm2` as sse).
    case mmx
}

/// Prefix bits kept in `Instruction.prefixes`.
public enum Prefix {
    public static let rep: UInt8 = 1      // F3
    public static let repne: UInt8 = 2    // F2
    public static let lock: UInt8 = 4
    public static let opsize: UInt8 = 8   // 66
    public static let rex: UInt8 = 16
    public static let rexW: UInt8 = 32
    /// Shift or double shift counts from CL (else from `imm`).
    public static let countCL: UInt8 = 64
}

/// Register numbers: 0-15 general registers; 16-19 AH, CH, DH, BH in byte operands without REX.
public enum Reg {
    public static let rax: UInt8 = 0, rcx: UInt8 = 1, rdx: UInt8 = 2, rbx: UInt8 = 3, rsp: UInt8 = 4
    public static let rbp: UInt8 = 5, rsi: UInt8 = 6, rdi: UInt8 = 7
    /// No register in a memory operand's base or index.
    public static let none: UInt8 = 0xFF
    /// RIP-relative base (64-bit mode, mod 00 rm 101).
    public static let rip: UInt8 = 0xFE
}

/// One decoded instruction: a compact value the interpreter runs (and a translator can read).
/// Memory operand: seg:[base + index << scale + disp], masked to the address size.
public struct Instruction {
    public var op: Op = .invalid
    public var length: UInt8 = 0
    /// Operand size: 0 byte, 1 word, 2 dword, 3 qword.
    public var size: UInt8 = 2
    /// Address size: 1 16-bit, 2 32-bit, 3 64-bit.
    public var addrSize: UInt8 = 3
    public var prefixes: UInt8 = 0
    /// Segment of the memory operand (SegReg), explicit override or the default.
    public var seg: UInt8 = 3
    /// Whether the r/m operand is in memory (mod != 3).
    public var isMem: Bool = false
    /// ModRM reg field with REX.R (or the register in the opcode), byte registers mapped.
    public var reg: UInt8 = 0
    /// ModRM rm register with REX.B when !isMem, byte registers mapped.
    public var rm: UInt8 = 0
    public var base: UInt8 = Reg.none
    public var index: UInt8 = Reg.none
    public var scale: UInt8 = 0
    /// Operation selector within `op` (ALU operation, condition code, group field, source size).
    public var sub: UInt8 = 0
    /// The interpreter's specialized form (FastForm), set when the block is cached; 0 none.
    /// Fills what was padding, so the stride stays 40 bytes.
    public var fast: UInt8 = 0
    public var disp: Int32 = 0
    public var imm: UInt64 = 0
    /// Second immediate (enter's nesting level, a far pointer's selector).
    public var imm2: UInt16 = 0

    public init() {}

    /// Ends a decoded block: the next instruction's address is not rip + length, or may not be.
    var endsBlock: Bool {
        switch op {
        case .jcc, .jmpRel, .callRel, .jmpRM, .callRM, .ret, .retf, .jmpFarM, .callFarM, .jmpFarImm, .iret,
             .loop, .jrcxz, .int3, .intN, .int1, .into, .ud2, .invalid, .hlt, .syscall, .sysret,
             .movToCR, .movSregRM, .popSreg, .wrmsr, .group7Mem, .group6, .sti, .popf, .cli, .rdrand, .cpuid,
             .string, .inPort, .outPort, .clts, .movToDR, .pause:
            return true
        default:
            return false
        }
    }
}
