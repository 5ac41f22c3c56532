extension X86CPU {
    /// Family 17h MSRs that Linux reads without `rdmsr_safe` (or expects to exist) and that a
    /// virtual CPU presents as zero with writes ignored, as KVM does: NB_CFG (0xC001001F, read
    /// by amd_bus_cpu_online), HWCR (0xC0010015), DC_CFG (0xC0011022), BU_CFG2 (0xC001102A) and
    /// the microcode patch level (0x8B). Every other unknown MSR raises #GP(0).
    static func isReadAsZeroMSR(_ index: UInt32) -> Bool {
        switch index {
        case 0x8B, 0xC001_001F, 0xC001_0015, 0xC001_1022, 0xC001_102A: return true
        default: return false
        }
    }
}
