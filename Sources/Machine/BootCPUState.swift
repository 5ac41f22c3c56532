/// A segment register as loaded at boot (hidden part included), in accelerator-neutral terms.
public struct SegmentState: Sendable, Equatable {
    public var selector: UInt16
    public var base: UInt64
    public var limit: UInt32
    /// Descriptor type field (bits 8-11 of the access rights), e.g. 0xB code, 0x3 data, 0xB busy TSS.
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    /// S bit: code/data (true) or system segment (false).
    public var codeOrData: Bool
    public var long: Bool          // L
    public var defaultBig: Bool    // D/B
    public var granularity: Bool   // G

    public init(selector: UInt16, base: UInt64, limit: UInt32, type: UInt8, present: Bool = true, dpl: UInt8 = 0,
                codeOrData: Bool = true, long: Bool = false, defaultBig: Bool = false, granularity: Bool = false) {
        self.selector = selector; self.base = base; self.limit = limit; self.type = type; self.present = present
        self.dpl = dpl; self.codeOrData = codeOrData; self.long = long; self.defaultBig = defaultBig
        self.granularity = granularity
    }

    /// Real-mode segment as at reset (base = selector << 4, 64 KiB limit).
    public static func realMode(selector: UInt16, code: Bool) -> SegmentState {
        SegmentState(selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF, type: code ? 0xB : 0x3)
    }
}

/// The register state a boot path hands the boot vCPU: the Linux 64-bit entry (long mode, paging,
/// RSI = boot_params) or the PVH entry (32-bit protected mode, paging off, EBX = hvm_start_info).
/// The accelerator turns it into its own register format.
public struct BootCPUState: Sendable, Equatable {
    public var rip: UInt64
    public var rsp: UInt64 = 0
    public var rsi: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rflags: UInt64 = 0x2
    public var cr0: UInt64
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var efer: UInt64 = 0
    public var cs: SegmentState
    public var ds: SegmentState
    public var es: SegmentState
    public var fs: SegmentState
    public var gs: SegmentState
    public var ss: SegmentState
    public var tr: SegmentState
    public var gdtBase: UInt64 = 0
    public var gdtLimit: UInt16 = 0
    public var idtBase: UInt64 = 0
    public var idtLimit: UInt16 = 0

    public init(rip: UInt64, cr0: UInt64, cs: SegmentState, data: SegmentState, tr: SegmentState) {
        self.rip = rip; self.cr0 = cr0; self.cs = cs
        ds = data; es = data; fs = data; gs = data; ss = data
        self.tr = tr
    }
}
