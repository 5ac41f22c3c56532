import Devices
import Loop
import Memory
@testable import TCG

/// A tcg CPU in 64-bit long mode over a small RAM with the low 1 GiB identity-mapped:
/// runs a few instruction bytes followed by HLT.
final class EmulatedRunner {
    let memory: GuestMemory
    let platform: TCGPlatform
    let cpu: X86CPU
    static let codeAddress: UInt64 = 0x10000
    static let dataAddress: UInt64 = 0x20000
    static let pml4: UInt64 = 0x1000, pdpt: UInt64 = 0x2000
    let pio = Bus(name: "pio"), mmio = Bus(name: "mmio")

    /// `translated`: every block runs as translated code from its first run (the JIT/ path);
    /// else the interpreter alone.
    init(ramSize: UInt64 = 4 << 20, translated: Bool = false) throws {
        memory = try GuestMemory(layout: [(guestAddress: 0, size: ramSize)])
        platform = TCGPlatform(memory: memory, pio: pio, mmio: mmio, lock: BigLock())
        cpu = X86CPU(platform: platform, cpuid: CPUIDModel.keel())
        cpu.translatesBlocks = translated
        cpu.translationThreshold = 1
        try memory.store(Self.pdpt | 7, at: Self.pml4)
        try memory.store(UInt64(0x87), at: Self.pdpt)      // 1 GiB page at 0, user, writable
        enterLongMode()
    }

    func enterLongMode(cpl3: Bool = false) {
        let s = cpu.st
        s.pointee.cr0 = CR0.pe | CR0.pg | CR0.et | CR0.wp
        s.pointee.cr4 = CR4.pae
        s.pointee.cr3 = Self.pml4
        s.pointee.efer = EFER.lme | EFER.lma | EFER.nxe | EFER.sce
        s.pointee.cs = SegmentCache(selector: 8, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA09B)
        let data = SegmentCache(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC093)
        s.pointee.ds = data; s.pointee.es = data; s.pointee.ss = data; s.pointee.fs = data; s.pointee.gs = data
        cpu.flushTLB(global: true)
        cpu.refreshMode()
    }

    /// Runs `insn` (then HLT) from `input`; returns the registers and RFLAGS after, or the
    /// vector of an exception left pending at the IDT-less CPU (a triple fault).
    func run(_ insn: [UInt8], _ input: RegisterFile, budget: Int = 10_000) throws -> (RegisterFile, CPUExit) {
        try memory.write(insn + [0xF4], at: Self.codeAddress)
        // The host wrote guest code behind the CPU's back: drop decoded blocks.
        cpu.invalidateCode(physical: Self.codeAddress)
        let s = cpu.st
        for k in 0..<16 { cpu.gpr[k] = input.gpr[k] }
        s.pointee.flagOp = .none
        s.pointee.rflags = input.rflags | 2
        s.pointee.rip = Self.codeAddress
        s.pointee.halted = false
        cpu.refreshMode()
        let exit = cpu.run(budget: budget)
        var out = RegisterFile()
        for k in 0..<16 { out.gpr[k] = cpu.gpr[k] }
        out.rflags = s.pointee.currentRFlags()
        return (out, exit)
    }
}
