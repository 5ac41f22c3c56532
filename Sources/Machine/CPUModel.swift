/// One CPUID leaf/subleaf in accelerator-neutral form.
public struct CPUIDLeaf: Sendable, Equatable {
    public var function: UInt32, index: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(function: UInt32, index: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function; self.index = index; self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
}

/// Keel's CPU model: what the guest is told about its CPU. Under kvm it starts from what the
/// host's KVM supports and removes what Keel does not want the guest to rely on; it then fills
/// in the per-vCPU topology (APIC IDs, logical processor counts) that only the VMM knows.
public enum KeelCPUModel {
    // Hidden from the guest:
    // - ARCH_CAPABILITIES (7.0:EDX[29]): its MSR exposes the host's mitigation state; QEMU's
    //   comparable setup drops it too (-cpu host,-arch-capabilities).
    // - monitor/mwait (1:ECX[3]): an idle guest must halt, not spin in mwait on a shared host.
    // - leaf 6 (thermal and power) describes host hardware the guest cannot manage.
    // - AMD TOPOEXT (8000_0001:ECX[22]): Keel describes topology through leaf 0xB only.

    public static func leaves(fromSupported supported: [CPUIDLeaf], cpuIndex: Int, cpuCount: Int) -> [CPUIDLeaf] {
        let apicID = UInt32(cpuIndex)
        let count = UInt32(max(1, cpuCount))
        // Bits needed to number `count` logical processors (x2APIC ID shift for the core level).
        var shift: UInt32 = 0
        while (1 << shift) < count { shift += 1 }
        var out: [CPUIDLeaf] = []
        for var l in supported {
            switch l.function {
            case 0x1:
                l.ebx = (l.ebx & 0x0000_FFFF) | (min(count, 255) << 16) | (apicID << 24)
                l.ecx |= 1 << 31            // hypervisor present
                l.ecx &= ~(1 << 3)          // no monitor/mwait
                if count > 1 { l.edx |= 1 << 28 } else { l.edx &= ~(1 << 28) }  // HTT: multi-processor package
            case 0x6:
                l.eax = 0; l.ebx = 0; l.ecx = 0; l.edx = 0
            case 0x7 where l.index == 0:
                l.edx &= ~(1 << 29)         // no IA32_ARCH_CAPABILITIES
            case 0xB, 0x1F:
                // Extended topology: one thread per core, `count` cores in one package.
                switch l.index {
                case 0: l.eax = 0; l.ebx = 1; l.ecx = (1 << 8) | l.index
                case 1: l.eax = shift; l.ebx = count; l.ecx = (2 << 8) | l.index
                default: l.eax = 0; l.ebx = 0; l.ecx = l.index
                }
                l.edx = apicID
            case 0x8000_0001:
                l.ecx &= ~(1 << 22)         // no AMD topology extensions claim beyond leaf 0xB
            default: break
            }
            out.append(l)
        }
        return out
    }

    /// Architectural MSRs set at power-on, as a PC's firmware leaves them. Only those the
    /// accelerator knows are written (the caller filters by its list).
    public static let powerOnMSRs: [(index: UInt32, value: UInt64)] = [
        (0x0000_01A0, 1),                    // IA32_MISC_ENABLE: fast strings
        (0x0000_02FF, (1 << 11) | 6),        // IA32_MTRR_DEF_TYPE: MTRRs on, write-back default
        (0x0000_0174, 0), (0x0000_0175, 0), (0x0000_0176, 0),   // SYSENTER_CS/ESP/EIP
        (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR LSTAR CSTAR SFMASK
        (0xC000_0102, 0),                    // KERNEL_GS_BASE
        (0x0000_0010, 0),                    // TSC
    ]
}
