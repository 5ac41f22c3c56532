import Devices
import Loop
import Machine
import TCG

/// The tcg accelerator: Keel's own x86-64 CPU, one pthread per vCPU, guest RAM through host
/// pointers and device accesses on the board's buses under the big lock. The board owns the
/// interrupt controllers (UserspaceInterruptChips: a LocalAPIC per vCPU, IOAPIC, PIC pair, PIT);
/// each vCPU is connected to its LocalAPIC, which wakes it from HLT through a condition.
public final class TCGAccelerator: Accelerator, @unchecked Sendable {
    unowned let board: PCBoard
    let platform: TCGPlatform
    var vcpus: [TCGVCPUThread] = []
    /// Pause protocol (QMP stop/cont), all under the big lock.
    let pauseGate: VCPUPauseGate

    public init(board: PCBoard) {
        self.board = board
        platform = TCGPlatform(memory: board.memory, pio: board.pioBus, mmio: board.mmioBus, lock: board.lock)
        let requests = board.requests
        platform.stopPending = { requests.isPending }
        pauseGate = VCPUPauseGate(lock: board.lock)
    }

    public func prepare(boot: BootCPUState) throws {
        let count = board.configuration.cpuCount
        let chips = board.userspaceInterrupts
        guard let chips, chips.localAPICs.count == count else {
            throw AcceleratorError("tcg: the board has no local APIC for each of the \(count) vCPUs")
        }
        for i in 0..<count {
            let cpu = X86CPU(platform: platform, index: i,
                             cpuid: CPUIDModel.keel(cpuIndex: i, cpuCount: count, timeBase: chips.timeBase))
            cpu.apic = chips.localAPICs[i]
            cpu.clock = chips.vcpuClocks[i]
            applyPowerOnMSRs(cpu, bootProcessor: i == 0)
            if i == 0 {
                Self.apply(boot, to: cpu)
            } else {
                // Application processors wait for INIT and a start-up IPI (SDM Vol. 3 §8.4.2).
                cpu.st.pointee.waitingForSIPI = true
            }
            vcpus.append(TCGVCPUThread(cpu: cpu, board: board, accelerator: self))
        }
    }

    func applyPowerOnMSRs(_ cpu: X86CPU, bootProcessor: Bool) {
        cpu.st.pointee.miscEnable = 1
        cpu.st.pointee.mtrrDefType = (1 << 11) | 6
        cpu.st.pointee.apicBase = 0xFEE0_0000 | (1 << 11) | (bootProcessor ? 1 << 8 : 0)
    }

    /// Loads the boot path's entry state into the vCPU (segments with their hidden parts).
    static func apply(_ b: BootCPUState, to cpu: X86CPU) {
        let s = cpu.st
        func seg(_ x: SegmentState) -> SegmentCache {
            var attr = UInt16(x.type & 0xF)
            if x.codeOrData { attr |= 0x10 }
            attr |= UInt16(x.dpl & 3) << 5
            if x.present { attr |= 0x80 }
            if x.long { attr |= 0x2000 }
            if x.defaultBig { attr |= 0x4000 }
            if x.granularity { attr |= 0x8000 }
            return SegmentCache(selector: x.selector, base: x.base, limit: x.limit, attributes: attr)
        }
        s.pointee.rip = b.rip
        s.pointee.rflags = b.rflags | 2
        s.pointee.flagOp = .none
        cpu.gpr[4] = b.rsp
        cpu.gpr[6] = b.rsi
        cpu.gpr[3] = b.rbx
        s.pointee.cr0 = b.cr0
        s.pointee.cr3 = b.cr3
        s.pointee.cr4 = b.cr4
        s.pointee.efer = b.efer
        s.pointee.cs = seg(b.cs)
        s.pointee.ds = seg(b.ds)
        s.pointee.es = seg(b.es)
        s.pointee.fs = seg(b.fs)
        s.pointee.gs = seg(b.gs)
        s.pointee.ss = seg(b.ss)
        s.pointee.tr = seg(b.tr)
        s.pointee.gdtBase = b.gdtBase
        s.pointee.gdtLimit = b.gdtLimit
        s.pointee.idtBase = b.idtBase
        s.pointee.idtLimit = b.idtLimit
        cpu.flushTLB(global: true)
        cpu.refreshMode()
    }

    /// Called with the big lock held (as VirtualMachineInstance does).
    public func start() {
        for v in vcpus { v.connectWakeup() }
        board.interrupts.controller = board.userspaceInterrupts?.controllers
        for v in vcpus { v.start() }
    }

    public func stop() {
        board.lock.withLock {
            pauseGate.resumeLocked()
            for v in vcpus { v.requestStop() }
        }
        for v in vcpus { v.join() }
        board.lock.withLock {
            for v in vcpus { v.disconnectWakeup() }
            board.interrupts.controller = nil
        }
    }

    public func pauseLocked() {
        pauseGate.pauseLocked(vcpus.map(\.control)) { for v in vcpus { v.kickLocked() } }
    }

    public func resumeLocked() { pauseGate.resumeLocked() }

    public var vcpuThreadIDs: [Int32] { vcpus.map { $0.control.threadID } }
}
