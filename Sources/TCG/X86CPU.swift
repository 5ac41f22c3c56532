import Devices
import Glibc
import Loop
import Memory
import Synchronization

/// An x86 exception raised by an instruction (SDM Vol. 3 §6.3). Thrown with typed throws so the
/// fast path never boxes an error.
public struct X86Exception: Error, Equatable {
    public var vector: UInt8
    public var errorCode: UInt32
    public var hasErrorCode: Bool

    public init(_ vector: UInt8, _ errorCode: UInt32? = nil) {
        self.vector = vector; self.errorCode = errorCode ?? 0; hasErrorCode = errorCode != nil
    }

    public static let divideError: UInt8 = 0, debug: UInt8 = 1, nmi: UInt8 = 2, breakpoint: UInt8 = 3
    public static let overflow: UInt8 = 4, invalidOpcode: UInt8 = 6, deviceNotAvailable: UInt8 = 7
    public static let doubleFault: UInt8 = 8, invalidTSS: UInt8 = 10, segmentNotPresent: UInt8 = 11
    public static let stackFault: UInt8 = 12, generalProtection: UInt8 = 13, pageFault: UInt8 = 14
    public static let x87: UInt8 = 16, alignment: UInt8 = 17, simd: UInt8 = 19

    static var ud: X86Exception { X86Exception(invalidOpcode) }
    static var de: X86Exception { X86Exception(divideError) }
    static func gp(_ code: UInt32 = 0) -> X86Exception { X86Exception(generalProtection, code) }
    static func ss(_ code: UInt32 = 0) -> X86Exception { X86Exception(stackFault, code) }
    static func np(_ code: UInt32) -> X86Exception { X86Exception(segmentNotPresent, code) }
    static func ts(_ code: UInt32) -> X86Exception { X86Exception(invalidTSS, code) }
}

/// Why `X86CPU.run` returned.
public enum CPUExit: Equatable {
    /// The exit flag was set (stop, pause, or an interrupt to look at).
    case requested
    /// HLT with interrupts enabled: wait for an interrupt.
    case halted
    /// HLT with interrupts disabled: nothing can wake this CPU.
    case haltedForever
    /// A triple fault: the machine must reset.
    case tripleFault
    /// The instruction budget ran out.
    case budget
}

/// One x86-64 vCPU of the tcg accelerator: state, software TLB, decode cache and interpreter.
/// All mutable state sits behind pointers allocated once, so the interpreter runs without
/// exclusivity checks, ARC traffic or allocation.
public final class X86CPU: @unchecked Sendable {
    public let st: UnsafeMutablePointer<CPUState>
    /// RAX..R15.
    public let gpr: UnsafeMutablePointer<UInt64>
    let tlb: UnsafeMutablePointer<TLBEntry>
    /// Indices of the TLB entries filled since the last flush (each once: TLBEntry.listed).
    let tlbFilled: UnsafeMutablePointer<UInt16>
    var tlbFilledCount = 0
    /// Variable and fixed MTRRs (read back as written).
    let mtrrs: UnsafeMutablePointer<UInt64>
    let cache: DecodeCache
    unowned(unsafe) let platform: TCGPlatform
    /// Keeps the platform alive as long as the CPU (its deinit unregisters the TLB there).
    private let platformOwner: TCGPlatform
    /// The platform's CodePageMap words, for the block lookup without reference counting.
    let codePageWords: UnsafeMutablePointer<Atomic<UInt32>>
    /// Guest RAM's regions (GuestMemory.table), looked up without a class reference.
    let ramRegions: UnsafeMutableBufferPointer<GuestRegion>
    let codePageCount: UInt64
    public let index: Int
    public var cpuid: CPUIDModel
    /// Set from any thread to make `run` return at the next block boundary.
    public let exitRequest = Atomic<Bool>(false)
    /// This vCPU's local APIC (the machine's interrupt controllers reach the CPU only through
    /// it): polled lock-free at block boundaries, acknowledged under the big lock. nil in unit
    /// tests that run the CPU alone.
    public var apic: LocalAPIC? { didSet { unretainedAPIC = apic.map { Unmanaged.passUnretained($0) } } }
    /// `apic` for the MSR paths, used without reference counting: the APIC is weakly referenced
    /// elsewhere, so its count lives in a side table and every retain is a slow call; `apic`
    /// keeps it alive.
    var unretainedAPIC: Unmanaged<LocalAPIC>?
    /// The machine's clock as this vCPU sees it (RDTSC); nil: a 1 GHz TSC from host time.
    public var clock: VCPUClock?
    /// Monotonic time base (ns) at creation, for the TSC.
    let tscBase: UInt64
    static let traceUD = getenv("KEEL_TCG_TRACE_UD") != nil
    /// Whether hot 64-bit blocks run as translated host code (JIT/), and from which run of a
    /// block on. KEEL_TCG_JIT=off: never (the interpreter alone); =eager: from the first run
    /// (the differential tests use it to put every case through the translator).
    public var translatesBlocks = X86CPU.translationSetting != "off"
    public var translationThreshold: UInt8 = X86CPU.translationSetting == "eager" ? 1 : 2
    static let translationSetting: String = {
        guard let v = getenv("KEEL_TCG_JIT") else { return "on" }
        let s = String(cString: v)
        return s == "0" || s == "no" ? "off" : s
    }()
    /// This vCPU's translated code, made at the first translation, and its buffer.
    var translated: TranslatedCode?
    var translatedBase: UnsafeMutablePointer<UInt8>?
    /// TranslatedCode.indirectExitR12, for linking exits to page-crossing blocks.
    var translatedIndirectExitR12 = 0
    /// Probed inline by translated code before its lookup call (VirtualJumpCache.swift).
    let virtualJumpCache = VirtualJumpCache()
    /// In front of the decode cache for translated code's lookups (TranslatedDispatch.swift).
    let jumpCache: UnsafeMutablePointer<JumpCacheEntry> = {
        let p = UnsafeMutablePointer<JumpCacheEntry>.allocate(capacity: JumpCacheEntry.count)
        p.initialize(repeating: JumpCacheEntry(), count: JumpCacheEntry.count)
        return p
    }()
    /// The exit of the last translated run that may be linked to the next block (see run).
    var pendingLink: UInt64 = 0
    var pendingLinkRIP: UInt64 = 0
    /// When this vCPU first found the big lock busy as it went to take a pending interrupt (0:
    /// not deferring); see `serviceEvents`.
    var interruptDeferredSince: UInt64 = 0
    var interruptDeferral = X86CPU.defaultInterruptDeferral
    var loggedUD = Set<UInt64>()
    /// Instructions executed (for measurements).
    public var instructionCount: UInt64 { st.pointee.instructionCount }

    public init(platform: TCGPlatform, index: Int = 0, cpuid: CPUIDModel) {
        self.platform = platform
        platformOwner = platform
        codePageWords = platform.codePages.words
        ramRegions = platform.memory.table
        codePageCount = platform.codePages.pageCount
        self.index = index
        self.cpuid = cpuid
        st = .allocate(capacity: 1)
        st.initialize(to: CPUState())
        gpr = .allocate(capacity: 16)
        gpr.initialize(repeating: 0, count: 16)
        tlb = .allocate(capacity: TLBEntry.total)
        tlb.initialize(repeating: TLBEntry(), count: TLBEntry.total)
        tlbFilled = .allocate(capacity: TLBEntry.total)
        cache = DecodeCache()
        mtrrs = .allocate(capacity: 27)
        mtrrs.initialize(repeating: 0, count: 27)
        tscBase = monotonicNanoseconds()
        platform.register(tlb: tlb)
        resetToPowerOn()
    }

    deinit {
        platform.unregister(tlb: tlb)
        st.deinitialize(count: 1); st.deallocate()
        gpr.deallocate()
        tlb.deallocate()
        tlbFilled.deallocate()
        jumpCache.deallocate()
        mtrrs.deallocate()
    }

    /// The CodePageMap word of the page holding `physical` (CodePageMap.tag, read through the
    /// words this CPU holds): 0 outside RAM.
    @inline(__always) func codePageWord(_ physical: UInt64) -> UInt32 {
        let page = physical >> 12
        return page < codePageCount ? codePageWords[Int(truncatingIfNeeded: page)].load(ordering: .relaxed) : 0
    }

    /// Whether the page holding `physical` has decoded code (CodePageMap.contains).
    @inline(__always) func isCodePage(_ physical: UInt64) -> Bool { codePageWord(physical) & 1 != 0 }

    /// The physical page the TLB maps `la` to for instruction fetch at the current privilege,
    /// or nil when it has no such entry (no page walk).
    @inline(__always) func executablePage(_ la: UInt64) -> UInt64? {
        let e = tlbEntry(tlb, la, user: st.pointee.userTag)
        return e.pointee.execTag == ((la >> 12) << 1) | st.pointee.userTag ? e.pointee.physicalPage : nil
    }

    /// Host address of the 4 KiB RAM page holding `physical`, or nil (MMIO or nothing).
    @inline(__always) func ramPage(_ physical: UInt64) -> UnsafeMutableRawPointer? {
        ramRegions.hostPointer(physical & ~0xFFF, length: 4096)
    }

    /// The guest TSC: the machine clock's (which the LocalAPIC's TSC-deadline timer reads too),
    /// or without one nanoseconds since the vCPU was made (a 1 GHz TSC) plus the guest's offset.
    var tsc: UInt64 {
        if let clock { return clock.tsc }
        return (monotonicNanoseconds() &- tscBase) &+ st.pointee.tscOffset
    }

    /// WRMSR IA32_TSC.
    func setTSC(_ v: UInt64) {
        if let clock { clock.setTSC(v); return }
        st.pointee.tscOffset = v &- (tsc &- st.pointee.tscOffset)
    }

    /// Power-on state (SDM Vol. 3 §9.1.1): real mode at F000:FFF0.
    public func resetToPowerOn() {
        st.pointee = CPUState()
        st.pointee.jitContext = UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque()))
        st.pointee.jitJumpCache = UInt64(UInt(bitPattern: virtualJumpCache.entries))
        for r in 0..<16 { gpr[r] = 0 }
        gpr[Int(Reg.rdx)] = UInt64(cpuid.familyModelStepping)
        st.pointee.cs = SegmentCache(selector: 0xF000, base: 0xFFFF_0000, limit: 0xFFFF, attributes: 0x9B)
        st.pointee.rip = 0xFFF0
        flushTLB(global: true)
        updateMode()
    }

    /// Recomputes the decode mode and CPL after CS, CR0 or EFER change.
    func updateMode() {
        let s = st
        if s.pointee.cr0 & CR0.pe == 0 {
            s.pointee.codeMode = .real16
            s.pointee.cpl = 0
        } else {
            if s.pointee.efer & EFER.lma != 0 && s.pointee.cs.long {
                s.pointee.codeMode = .long64
            } else {
                s.pointee.codeMode = s.pointee.cs.defaultBig ? .prot32 : .prot16
            }
            s.pointee.cpl = UInt8(truncatingIfNeeded: s.pointee.cs.selector & 3)
        }
        st.pointee.breakBlock = true
    }

    // MARK: - Registers

    /// A register operand of `size` (0-3); byte registers 16-19 are AH..BH.
    @inline(__always) func reg(_ r: UInt8, _ size: UInt8) -> UInt64 { readGPR(gpr, r, size) }

    /// Writes a register operand: 32-bit writes zero the upper half, 8/16-bit writes merge.
    @inline(__always) func setReg(_ r: UInt8, _ size: UInt8, _ v: UInt64) { writeGPR(gpr, r, size, v) }

    /// The segment cache for an instruction's segment number (0-7).
    @inline(__always) func segment(_ n: UInt8) -> SegmentCache {
        switch n {
        case 0: return st.pointee.es
        case 1: return st.pointee.cs
        case 2: return st.pointee.ss
        case 3: return st.pointee.ds
        case 4: return st.pointee.fs
        case 5: return st.pointee.gs
        case 6: return st.pointee.ldtr
        default: return st.pointee.tr
        }
    }

    func setSegment(_ n: UInt8, _ s: SegmentCache) {
        switch n {
        case 0: st.pointee.es = s
        case 1: st.pointee.cs = s; updateMode()
        case 2: st.pointee.ss = s
        case 3: st.pointee.ds = s
        case 4: st.pointee.fs = s
        case 5: st.pointee.gs = s
        case 6: st.pointee.ldtr = s
        default: st.pointee.tr = s
        }
    }

    /// Base added to an offset in segment `n` (in 64-bit mode only FS and GS have one).
    @inline(__always) func segmentBase(_ n: UInt8) -> UInt64 { st.pointee.segmentBase(n) }

    /// Mask of the instruction pointer in the current mode.
    @inline(__always) var ipMask: UInt64 {
        switch st.pointee.codeMode {
        case .long64: return ~0
        case .prot32: return 0xFFFF_FFFF
        default: return 0xFFFF
        }
    }

    /// Stack pointer width: 64 in long mode, else SS.B.
    @inline(__always) var stackAddrSize: UInt8 {
        if st.pointee.codeMode == .long64 { return 3 }
        return st.pointee.ss.defaultBig ? 2 : 1
    }

    // MARK: - External interface

    /// Recomputes CPL and decode mode after state was loaded from outside.
    public func refreshMode() { updateMode() }

    /// Makes `run` return at the next block boundary.
    public func kick() { exitRequest.store(true, ordering: .releasing) }
}
