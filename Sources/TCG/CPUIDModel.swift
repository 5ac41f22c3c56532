import Devices

/// The CPUID leaves the tcg CPU reports: only features the interpreter implements.
public struct CPUIDModel: Sendable {
    public struct Leaf: Sendable, Equatable {
        public var function: UInt32, index: UInt32
        public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
        public init(_ function: UInt32, _ index: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
            self.function = function; self.index = index; self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
        }
    }

    public var leaves: [Leaf]
    /// Family/model/stepping (leaf 1 EAX), also EDX at power-on.
    public let familyModelStepping: UInt32

    public init(leaves: [Leaf], familyModelStepping: UInt32) {
        self.leaves = leaves; self.familyModelStepping = familyModelStepping
    }

    /// Leaf 1 EDX / ECX and 8000_0001 EDX / ECX feature bits that the interpreter implements.
    public enum Feature {
        public static let tsc: UInt32 = 1 << 4, msr: UInt32 = 1 << 5, pae: UInt32 = 1 << 6, cx8: UInt32 = 1 << 8
        public static let pse: UInt32 = 1 << 3, pge: UInt32 = 1 << 13, cmov: UInt32 = 1 << 15, pat: UInt32 = 1 << 16
        public static let pse36: UInt32 = 1 << 17, clflush: UInt32 = 1 << 19
        public static let cx16: UInt32 = 1 << 13, movbe: UInt32 = 1 << 22, popcnt: UInt32 = 1 << 23, hypervisor: UInt32 = 1 << 31
        public static let syscall: UInt32 = 1 << 11, nx: UInt32 = 1 << 20, pdpe1gb: UInt32 = 1 << 26
        public static let rdtscp: UInt32 = 1 << 27, lm: UInt32 = 1 << 29
        public static let lahfLM: UInt32 = 1 << 0, abm: UInt32 = 1 << 5
        // The local APIC and time base (with the board's LocalAPIC and TCGTimeBase).
        public static let apic: UInt32 = 1 << 9, x2apic: UInt32 = 1 << 21, tscDeadline: UInt32 = 1 << 24
        public static let arat: UInt32 = 1 << 2, invariantTSC: UInt32 = 1 << 8
        /// CPUID.7.0:EDX[29]: IA32_ARCH_CAPABILITIES exists (read by RDMSR 0x10A).
        public static let archCapabilities: UInt32 = 1 << 29
        public static let fpu: UInt32 = 1 << 0, mmx: UInt32 = 1 << 23, fxsr: UInt32 = 1 << 24, sse: UInt32 = 1 << 25, sse2: UInt32 = 1 << 26
    }

    /// IA32_ARCH_CAPABILITIES (MSR 0x10A): an interpreter does not speculate, so Keel's CPU is not
    /// affected by Meltdown (RDCL_NO), L1TF, SSB, MDS, TAA, MMIO stale data, PBRSB, GDS, RFDS, BHI
    /// or ITS; saying so spares the guest page-table isolation and buffer clearing on every kernel
    /// exit. (IBRS_ALL is not claimed: Keel has no IA32_SPEC_CTRL.)
    public static let archCapabilitiesMSR: UInt64 = [0, 3, 4, 5, 6, 8, 13, 14, 15, 20, 24, 26, 27, 62]
        .reduce(0) { $0 | (1 << UInt64($1)) }

    /// Keel's tcg CPU for vCPU `cpuIndex` of `cpuCount` (APIC ID = index).
    /// GenuineIntel, because Linux takes the TSC and LAPIC timer frequencies from CPUID.15H only
    /// on Intel (native_calibrate_tsc); family 6 model 0x3A is not on its TSC-deadline errata list.
    public static func keel(cpuIndex: Int = 0, cpuCount: Int = 1, timeBase: TCGTimeBase = TCGTimeBase()) -> CPUIDModel {
        func regs(_ s: String) -> [UInt32] {
            var b = Array(s.utf8)
            while b.count % 4 != 0 { b.append(0) }
            var out: [UInt32] = []
            var k = 0
            while k < b.count {
                var w = UInt32(b[k])
                w |= UInt32(b[k + 1]) << 8
                w |= UInt32(b[k + 2]) << 16
                w |= UInt32(b[k + 3]) << 24
                out.append(w)
                k += 4
            }
            return out
        }
        let vendor = regs("GenuineIntel")
        // Family 6, model 0x3A (extended model 3, model 0xA), stepping 9.
        let fms: UInt32 = (0x3 << 16) | (0x6 << 8) | (0xA << 4) | 0x9
        let count = UInt32(max(1, min(cpuCount, 255)))
        let apicID = UInt32(truncatingIfNeeded: cpuIndex) & 0xFF
        var brand = regs("Keel TCG x86-64 CPU")
        while brand.count < 12 { brand.append(0) }
        let common: UInt32 = Feature.fpu | Feature.mmx | Feature.fxsr | Feature.pse | Feature.tsc | Feature.msr | Feature.pae | Feature.cx8 | Feature.pge
        let common2: UInt32 = Feature.cmov | Feature.pat | Feature.pse36
        let htt: UInt32 = count > 1 ? 1 << 28 : 0
        let edx1: UInt32 = common | common2 | Feature.clflush | Feature.sse | Feature.sse2 | htt | Feature.apic
        let ecx1: UInt32 = Feature.cx16 | Feature.movbe | Feature.popcnt | Feature.hypervisor
            | Feature.x2apic | Feature.tscDeadline
        let ext: UInt32 = Feature.syscall | Feature.nx | Feature.pdpe1gb | Feature.rdtscp | Feature.lm
        let ebx1: UInt32 = (apicID << 24) | (count << 16) | (8 << 8)
        var l: [Leaf] = []
        l.append(Leaf(0, eax: 0x16, ebx: vendor[0], ecx: vendor[2], edx: vendor[1]))
        l.append(Leaf(1, eax: fms, ebx: ebx1, ecx: ecx1, edx: edx1))
        l.append(Leaf(6, eax: Feature.arat))
        l.append(Leaf(7, 0, edx: Feature.archCapabilities))
        let t15 = timeBase.cpuid15, t16 = timeBase.cpuid16
        l.append(Leaf(0x15, eax: t15.eax, ebx: t15.ebx, ecx: t15.ecx, edx: t15.edx))
        l.append(Leaf(0x16, eax: t16.eax, ebx: t16.ebx, ecx: t16.ecx, edx: t16.edx))
        l.append(Leaf(0x8000_0007, edx: Feature.invariantTSC))
        l.append(Leaf(0x8000_0000, eax: 0x8000_0008, ebx: vendor[0], ecx: vendor[2], edx: vendor[1]))
        l.append(Leaf(0x8000_0001, eax: fms, ecx: Feature.lahfLM | Feature.abm, edx: ext | common | common2))
        for k in 0..<3 {
            l.append(Leaf(0x8000_0002 + UInt32(k), eax: brand[4 * k], ebx: brand[4 * k + 1], ecx: brand[4 * k + 2], edx: brand[4 * k + 3]))
        }
        // AMD cache descriptors (APM Vol. 3 CPUID Fn8000_0005/6): 32 KiB 8-way L1 I and D,
        // 512 KiB 8-way L2, 16 MiB 16-way L3, 64-byte lines, so the kernel and glibc size their
        // copy thresholds from plausible values instead of zeros.
        let l1: UInt32 = (32 << 24) | (8 << 16) | (1 << 8) | 64
        l.append(Leaf(0x8000_0005, ecx: l1, edx: l1))
        l.append(Leaf(0x8000_0006, ecx: (512 << 16) | (0x6 << 12) | (1 << 8) | 64, edx: (32 << 18) | (0x8 << 12) | (1 << 8) | 64))
        l.append(Leaf(0x8000_0008, eax: UInt32(X86CPU.physicalAddressBits) | (48 << 8), ecx: count - 1))
        return CPUIDModel(leaves: l, familyModelStepping: fms)
    }

    /// CPUID(function, index): unknown leaves above the maximum return the highest basic leaf,
    /// as Intel documents; AMD returns zeros. Keel returns zeros for any leaf it does not list.
    public func query(_ function: UInt32, _ index: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        for l in leaves where l.function == function && (l.index == index || !Self.indexed(function)) {
            return (l.eax, l.ebx, l.ecx, l.edx)
        }
        return (0, 0, 0, 0)
    }

    static func indexed(_ f: UInt32) -> Bool { f == 4 || f == 7 || f == 0xB || f == 0xD || f == 0x1F }
}
