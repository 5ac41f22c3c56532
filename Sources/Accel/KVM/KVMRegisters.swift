import CKeel
import KVM
import Machine

/// Converts Keel's accelerator-neutral boot state into KVM's register structures.
enum KVMRegisters {
    static func segment(_ s: SegmentState) -> kvm_segment {
        var k = kvm_segment()
        k.base = s.base
        k.limit = s.limit
        k.selector = s.selector
        k.type = s.type
        k.present = s.present ? 1 : 0
        k.dpl = s.dpl
        k.db = s.defaultBig ? 1 : 0
        k.s = s.codeOrData ? 1 : 0
        k.l = s.long ? 1 : 0
        k.g = s.granularity ? 1 : 0
        return k
    }

    static func apply(_ boot: BootCPUState, to vcpu: VCPU) throws {
        var sregs = try vcpu.getSpecialRegisters()
        sregs.cs = segment(boot.cs)
        sregs.ds = segment(boot.ds)
        sregs.es = segment(boot.es)
        sregs.fs = segment(boot.fs)
        sregs.gs = segment(boot.gs)
        sregs.ss = segment(boot.ss)
        sregs.tr = segment(boot.tr)
        sregs.gdt.base = boot.gdtBase
        sregs.gdt.limit = boot.gdtLimit
        sregs.idt.base = boot.idtBase
        sregs.idt.limit = boot.idtLimit
        sregs.cr0 = boot.cr0
        sregs.cr3 = boot.cr3
        sregs.cr4 = boot.cr4
        sregs.efer = boot.efer
        try vcpu.setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rip = boot.rip
        regs.rsp = boot.rsp
        regs.rsi = boot.rsi
        regs.rbx = boot.rbx
        regs.rflags = boot.rflags
        try vcpu.setRegisters(regs)
    }

    /// x87 and SSE control words as after FNINIT / power-on (SDM Vol. 1 §8.1.5, §10.2.3).
    static func setPowerOnFPU(_ vcpu: VCPU) throws {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
    }

    /// LINT0 as ExtINT (the 8259 reaches the CPU through it in virtual-wire mode) and LINT1 as
    /// NMI, as a PC BIOS leaves them; the MADT's Local APIC NMI entry says the same.
    static func setLocalInterruptPins(_ vcpu: VCPU) throws {
        var lapic = try vcpu.getLAPIC()
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            func update(_ offset: Int, mode: UInt32) {
                var v = regs.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                v = (v & ~0x700) | (mode << 8)
                regs.storeBytes(of: v, toByteOffset: offset, as: UInt32.self)
            }
            update(0x350, mode: 0x7)   // LVT LINT0: ExtINT
            update(0x360, mode: 0x4)   // LVT LINT1: NMI
        }
        try vcpu.setLAPIC(lapic)
    }
}
