/// The x87 FPU and SSE state (SDM Vol. 1 §8.1, §10.2), stored so the executors reach registers
/// by index through a raw pointer: XMM0-15 first, then the eight x87 data registers R0-R7, each
/// in a 16-byte slot holding an 80-bit extended-precision value (the FXSAVE layout of one slot).
public struct FPUState {
    /// XMM0-15 as 32 little-endian quadwords (low quadword first).
    public var xmm: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                     UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                     UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                     UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
        = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    /// Physical x87 registers R0-R7 (not ST(i): ST(i) is R[(TOP + i) & 7]).
    public var x87: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                     UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
        = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    /// FPU control word (after FNINIT: all exceptions masked, 64-bit precision, round to nearest).
    public var fcw: UInt16 = 0x037F
    /// FPU status word, TOP in bits 11-13.
    public var fsw: UInt16 = 0
    /// Bit k set: physical register Rk is not empty (the abridged tag word of FXSAVE).
    public var ftw: UInt8 = 0
    public var fop: UInt16 = 0
    public var fip: UInt64 = 0, fdp: UInt64 = 0
    public var fcs: UInt16 = 0, fds: UInt16 = 0
    public var mxcsr: UInt32 = 0x1F80

    public init() {}

    /// MXCSR bits software may set (DAZ included); the MXCSR_MASK that FXSAVE reports.
    public static let mxcsrMask: UInt32 = 0xFFFF
}

/// FSW bits (SDM Vol. 1 §8.1.3).
enum FSW {
    static let ie: UInt16 = 0x1, de: UInt16 = 0x2, ze: UInt16 = 0x4, oe: UInt16 = 0x8, ue: UInt16 = 0x10
    static let pe: UInt16 = 0x20, sf: UInt16 = 0x40, es: UInt16 = 0x80
    static let c0: UInt16 = 0x100, c1: UInt16 = 0x200, c2: UInt16 = 0x400, c3: UInt16 = 0x4000
    static let conditions: UInt16 = c0 | c1 | c2 | c3
    static let top: UInt16 = 0x3800
}

extension X86CPU {
    /// Byte offset of `CPUState.fpu`; the FPU state is addressed through `st`, never copied.
    static let fpuOffset: Int = MemoryLayout<CPUState>.offset(of: \CPUState.fpu) ?? 0

    @inline(__always) var fpu: UnsafeMutablePointer<FPUState> {
        (UnsafeMutableRawPointer(st) + X86CPU.fpuOffset).assumingMemoryBound(to: FPUState.self)
    }

    /// XMM0-15 as 32 quadwords.
    @inline(__always) var xmmWords: UnsafeMutablePointer<UInt64> {
        UnsafeMutableRawPointer(fpu).assumingMemoryBound(to: UInt64.self)
    }

    /// The 16-byte slots of x87 registers R0-R7.
    @inline(__always) var x87Slots: UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(fpu) + 256
    }

    @inline(__always) func xmm(_ r: UInt8) -> SIMD2<UInt64> {
        let p = xmmWords + Int(r & 15) &* 2
        return SIMD2(p[0], p[1])
    }

    @inline(__always) func setXMM(_ r: UInt8, _ v: SIMD2<UInt64>) {
        let p = xmmWords + Int(r & 15) &* 2
        p[0] = v[0]; p[1] = v[1]
    }

    @inline(__always) func setXMMLow(_ r: UInt8, _ v: UInt64) { xmmWords[Int(r & 15) &* 2] = v }

}
