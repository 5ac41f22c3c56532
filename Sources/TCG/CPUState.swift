/// Keel's own x86-64 CPU (the tcg accelerator's core): decoder, executor, MMU, exceptions.
/// The interrupt controllers it needs are board devices (Sources/Devices/Interrupts, shared with
/// kvm's split irqchip); the vCPU thread and accelerator glue live in Sources/Accel/TCG.
public enum TCG {}

/// A segment register with its hidden part (SDM Vol. 3 §3.4.3). `attributes` uses the layout of
/// descriptor bits 40-55 with the limit nibble removed, as VMX access rights: type 0-3, S 4,
/// DPL 5-6, P 7, AVL 12, L 13, D/B 14, G 15.
public struct SegmentCache: Equatable, Sendable {
    public var selector: UInt16 = 0
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xFFFF
    public var attributes: UInt16 = 0x93

    public init(selector: UInt16 = 0, base: UInt64 = 0, limit: UInt32 = 0xFFFF, attributes: UInt16 = 0x93) {
        self.selector = selector; self.base = base; self.limit = limit; self.attributes = attributes
    }

    @inline(__always) public var present: Bool { attributes & 0x80 != 0 }
    @inline(__always) public var dpl: UInt8 { UInt8(truncatingIfNeeded: (attributes >> 5) & 3) }
    @inline(__always) public var long: Bool { attributes & 0x2000 != 0 }
    @inline(__always) public var defaultBig: Bool { attributes & 0x4000 != 0 }
    @inline(__always) public var type: UInt8 { UInt8(truncatingIfNeeded: attributes & 0xF) }

    /// The hidden part loaded from an 8-byte descriptor (SDM Vol. 3 §3.4.5).
    static func fromDescriptor(selector: UInt16, low: UInt64) -> SegmentCache {
        let base = ((low >> 16) & 0xFF_FFFF) | ((low >> 32) & 0xFF00_0000)
        var limit = UInt32(truncatingIfNeeded: (low & 0xFFFF) | ((low >> 32) & 0xF_0000))
        let attr = UInt16(truncatingIfNeeded: (low >> 40) & 0xF0FF)
        if attr & 0x8000 != 0 { limit = (limit << 12) | 0xFFF }
        return SegmentCache(selector: selector, base: base, limit: limit, attributes: attr)
    }
}

/// Segment register numbers as encoded in instructions (sreg field of ModRM), plus LDTR and TR.
public enum SegReg {
    public static let es = 0, cs = 1, ss = 2, ds = 3, fs = 4, gs = 5, ldtr = 6, tr = 7
}

/// RFLAGS bits (SDM Vol. 1 §3.4.3).
public enum RFlags {
    public static let cf: UInt64 = 1 << 0, pf: UInt64 = 1 << 2, af: UInt64 = 1 << 4, zf: UInt64 = 1 << 6
    public static let sf: UInt64 = 1 << 7, tf: UInt64 = 1 << 8, `if`: UInt64 = 1 << 9, df: UInt64 = 1 << 10
    public static let of: UInt64 = 1 << 11, iopl: UInt64 = 3 << 12, nt: UInt64 = 1 << 14, rf: UInt64 = 1 << 16
    public static let vm: UInt64 = 1 << 17, ac: UInt64 = 1 << 18, vif: UInt64 = 1 << 19, vip: UInt64 = 1 << 20
    public static let id: UInt64 = 1 << 21
    /// The six status flags computed lazily.
    public static let arith: UInt64 = cf | pf | af | zf | sf | of
    /// Bits software can change with popf/iret (the rest are fixed or reserved).
    public static let writable: UInt64 = arith | tf | `if` | df | iopl | nt | rf | ac | id | vif | vip
}

/// Control register and EFER bits used by the CPU.
public enum CR0 { public static let pe: UInt64 = 1, mp: UInt64 = 2, em: UInt64 = 4, ts: UInt64 = 8, et: UInt64 = 0x10, ne: UInt64 = 0x20, wp: UInt64 = 1 << 16, am: UInt64 = 1 << 18, nw: UInt64 = 1 << 29, cd: UInt64 = 1 << 30, pg: UInt64 = 1 << 31 }
public enum CR4 { public static let pse: UInt64 = 0x10, pae: UInt64 = 0x20, pge: UInt64 = 0x80, osfxsr: UInt64 = 0x200, osxmmexcpt: UInt64 = 0x400, umip: UInt64 = 0x800, fsgsbase: UInt64 = 0x10000, smep: UInt64 = 0x100000, smap: UInt64 = 0x200000 }
public enum EFER { public static let sce: UInt64 = 1, lme: UInt64 = 0x100, lma: UInt64 = 0x400, nxe: UInt64 = 0x800 }

/// The architectural state of one vCPU, in fixed storage reached through a pointer so that the
/// interpreter (and a later translator) touches it without exclusivity checks or ARC.
public struct CPUState {
    public var rip: UInt64 = 0
    /// RFLAGS; the six status flags are only valid here when `flagOp == .none`.
    public var rflags: UInt64 = 2
    public var flagOp: FlagOp = .none
    public var flagSize: UInt8 = 0
    public var flagRes: UInt64 = 0
    public var flagSrc1: UInt64 = 0
    public var flagSrc2: UInt64 = 0
    /// CF carried into adc/sbb, or the CF that inc/dec preserve.
    public var flagCarry: UInt64 = 0

    public var es = SegmentCache(), cs = SegmentCache(attributes: 0x9B), ss = SegmentCache(), ds = SegmentCache()
    public var fs = SegmentCache(), gs = SegmentCache()
    public var ldtr = SegmentCache(attributes: 0x82), tr = SegmentCache(attributes: 0x8B)
    public var gdtBase: UInt64 = 0, gdtLimit: UInt16 = 0xFFFF
    public var idtBase: UInt64 = 0, idtLimit: UInt16 = 0xFFFF

    public var cr0: UInt64 = 0x6000_0010, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var dr0: UInt64 = 0, dr1: UInt64 = 0, dr2: UInt64 = 0, dr3: UInt64 = 0
    public var dr6: UInt64 = 0xFFFF_0FF0, dr7: UInt64 = 0x400
    /// x87, MMX and SSE registers (reached through `X86CPU.fpu`).
    public var fpu = FPUState()

    public var star: UInt64 = 0, lstar: UInt64 = 0, cstar: UInt64 = 0, sfmask: UInt64 = 0
    public var kernelGSBase: UInt64 = 0, tscAux: UInt64 = 0
    public var sysenterCS: UInt64 = 0, sysenterESP: UInt64 = 0, sysenterEIP: UInt64 = 0
    public var apicBase: UInt64 = 0xFEE0_0900
    public var pat: UInt64 = 0x0007_0406_0007_0406
    public var miscEnable: UInt64 = 1
    public var mtrrDefType: UInt64 = 0
    /// Added to the host-derived time base to form the guest TSC.
    public var tscOffset: UInt64 = 0

    /// Current privilege level (CS.RPL in protected mode, 0 in real mode).
    public var cpl: UInt8 = 0
    /// How code is decoded now: 16, 32 or 64-bit default sizes (from CS.L, CS.D, CR0.PE, EFER.LMA).
    public var codeMode: CodeMode = .real16
    /// CR0.AM, RFLAGS.AC and CPL 3 together (refreshed at each block start): user data accesses
    /// then bypass the software TLB's fast paths, and the slow path raises #AC when misaligned.
    public var alignmentCheck: Bool = false
    /// Set by sti / mov ss / pop ss: interrupts are held off for one instruction.
    public var interruptShadow: Bool = false
    public var halted: Bool = false
    /// An application processor after INIT: runs nothing until a start-up IPI (SDM Vol. 3 §9.4).
    public var waitingForSIPI: Bool = false
    /// NMIs are held off from NMI delivery until the next IRET (SDM Vol. 3 §6.7.1).
    public var nmiBlocked: Bool = false
    /// Address of the instruction being executed (faults restart it).
    public var currentRIP: UInt64 = 0
    /// Set by an instruction that must end the block after it (code written, mode changed).
    public var breakBlock: Bool = false
    /// Set when an event could not be delivered (shutdown): the machine resets.
    public var tripleFaulted: Bool = false
    /// Instructions retired (measurement).
    public var instructionCount: UInt64 = 0
    /// For translated code (JIT/): the TLB tag's privilege bit at entry, the link site of the
    /// exit taken (0: not linkable), and the X86CPU the interpreter fallback is called with.
    var jitUserTag: UInt64 = 0
    var jitLastExit: UInt64 = 0
    var jitContext: UInt64 = 0
    /// The vCPU's VirtualJumpCache entries (translated code probes them).
    var jitJumpCache: UInt64 = 0

    public init() {}
}

public enum CodeMode: UInt8 {
    case real16 = 0, prot16 = 1, prot32 = 2, long64 = 3
    @inline(__always) var is64: Bool { self == .long64 }
    @inline(__always) var defaultOperand32: Bool { self == .prot32 || self == .long64 }
}
