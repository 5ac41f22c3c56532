import Devices
import Foundation
import Loop
import XCTest
@testable import TCG

/// A clock the test moves by hand; timers fire when the test says so.
final class ManualClock: GuestClock {
    var nanoseconds: UInt64 = 0
    var tsc: UInt64 { nanoseconds * 2 }
    let tscFrequencyHz: UInt64 = 2_000_000_000
    var timers: [ManualTimer] = []
    func makeTimer(_ callback: @escaping () -> Void) throws -> GuestTimer {
        let t = ManualTimer(callback)
        timers.append(t)
        return t
    }
    /// Moves time on and runs the timers now due.
    func advance(to ns: UInt64) {
        nanoseconds = ns
        for t in timers { if let d = t.deadline, d <= ns { t.deadline = nil; t.callback() } }
    }
}

final class ManualTimer: GuestTimer {
    let callback: () -> Void
    var deadline: UInt64?
    init(_ c: @escaping () -> Void) { callback = c }
    func arm(atNanoseconds deadline: UInt64) { self.deadline = deadline }
    func disarm() { deadline = nil }
}

/// The CPU side of the interrupt controllers (SDM Vol. 3 ch. 6, 8.4, 10): maskable interrupts
/// acknowledged from the LocalAPIC and delivered through the IDT, the interrupt shadow, HLT
/// wake-up conditions, NMI blocking until IRET, INIT and start-up IPIs into real mode, the xAPIC
/// page and APIC MSRs per vCPU, and code invalidation across vCPUs.
final class InterruptControllerTests: XCTestCase {
    var sys: SystemTests!
    var clock: ManualClock!
    var bus: APICBus!
    var apic0: LocalAPIC!
    var apic1: LocalAPIC!

    override func setUpWithError() throws {
        // SystemTests' long-mode machine (GDT, TSS, an IDT whose handlers halt), reused.
        sys = SystemTests(name: "setup", testClosure: { _ in })
        try sys.setUpWithError()
        clock = ManualClock()
        bus = APICBus()
        apic0 = try LocalAPIC(index: 0, bus: bus, clock: clock)
        apic1 = try LocalAPIC(index: 1, bus: bus, clock: clock)
        cpu.apic = apic0
        // The APIC page and the IOAPIC's in the 4th GiB: a 1 GiB page at 0xC0000000.
        try sys.emu.memory.store(UInt64(0xC000_0000 | 0x83), at: EmulatedRunner.pdpt + 24)
        apic0.write(offset: 0xF0, data: UnsafeRawBufferPointer(start: [UInt32(0x1FF)], count: 4))
    }

    var cpu: X86CPU { sys.emu.cpu }
    var emu: EmulatedRunner { sys.emu }

    func testFixedInterruptIsAcknowledgedAndDeliveredThroughTheIDT() throws {
        bus.deliver(APICMessage(destination: 0, vector: 0x41))
        XCTAssertTrue(apic0.pendingEvents.contains(.interrupt))
        // sti; nop; hlt — delivered after the shadow, at a block boundary.
        XCTAssertEqual(try sys.run([0xFB, 0x90]), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x41), "the handler for vector 0x41 ran")
        XCTAssertEqual(apic0.processorPriority, 0x40, "vector 0x41 in service")
        XCTAssertFalse(apic0.hasPendingEvent)
        XCTAssertEqual(try sys.stack(2) & RFlags.if, RFlags.if, "RFLAGS.IF pushed set")
        XCTAssertEqual(cpu.st.pointee.rflags & RFlags.if, 0, "interrupt gate clears IF")
    }

    /// The big lock held by another thread (`release` lets it go, else it does after `holdFor`).
    func holdBigLock(holdFor seconds: Double) -> (release: DispatchSemaphore, done: DispatchSemaphore) {
        let lock = cpu.platform.lock
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        Thread {
            lock.lock()
            held.signal()
            _ = release.wait(timeout: .now() + seconds)
            lock.unlock()
            done.signal()
        }.start()
        held.wait()
        return (release, done)
    }

    /// sti; nop; then `inc rcx; jmp` forever.
    static let stiThenCount: [UInt8] = [0xFB, 0x90, 0x48, 0xFF, 0xC1, 0xEB, 0xFB]

    func testPendingInterruptWaitsOutABusyBigLockWhileTheCPURunsOn() throws {
        cpu.interruptDeferral = .max
        let holder = holdBigLock(holdFor: 30)
        bus.deliver(APICMessage(destination: 0, vector: 0x41))
        let exit = try sys.run(Self.stiThenCount)
        holder.release.signal()
        holder.done.wait()
        XCTAssertEqual(exit, .budget, "the vCPU did not sleep on the lock")
        XCTAssertGreaterThan(cpu.gpr[1], 100, "guest code ran meanwhile")
        XCTAssertTrue(apic0.pendingEvents.contains(.interrupt), "still pending, not lost")
        XCTAssertEqual(cpu.run(budget: 100), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x41), "taken once the lock was free")
    }

    func testPendingInterruptIsTakenWhenTheDeferralRunsOut() throws {
        cpu.interruptDeferral = 0
        let holder = holdBigLock(holdFor: 0.02)
        bus.deliver(APICMessage(destination: 0, vector: 0x41))
        let exit = try sys.run(Self.stiThenCount)
        holder.done.wait()
        XCTAssertEqual(exit, .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x41), "the vCPU waited for the lock and took it")
        XCTAssertLessThan(cpu.gpr[1], 100, "within a block or two, not a whole budget")
    }

    /// A loop of `cli; inc rcx; ...; sti; inc r8` that sends itself vector 0x41 (xAPIC ICR, self
    /// shorthand) on its 40th pass, IF clear: the STI lets it in after the shadow (the INC
    /// after it), interpreted and translated alike. Translated, an STI with nothing pending goes
    /// on to the next block; this one must not.
    func testSelfIPIWithIFClearIsTakenAfterSTIsShadow() throws {
        let code: [UInt8] = [0x48, 0xBA] + withUnsafeBytes(of: UInt64(0xFEE0_0300).littleEndian, Array.init)  // mov rdx, ICR
            + [0xFA,                                  // loop: cli
               0x48, 0xFF, 0xC1,                      // inc rcx
               0x48, 0x83, 0xF9, 0x28,                // cmp rcx, 40
               0x75, 0x06,                            // jne sti
               0xC7, 0x02, 0x41, 0x00, 0x04, 0x00,    // mov dword [rdx], 0x40041: self, fixed, 0x41
               0xFB,                                  // sti
               0x49, 0xFF, 0xC0,                      // inc r8
               0xEB, 0xEA]                            // jmp loop
        for translated in [false, true] {
            try setUpWithError()
            cpu.translatesBlocks = translated
            XCTAssertEqual(try sys.run(code), .halted, "translated \(translated)")
            XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x41), "translated \(translated)")
            XCTAssertEqual(cpu.gpr[1], 40, "translated \(translated)")
            XCTAssertEqual(cpu.gpr[8], 40, "the instruction after STI ran first; translated \(translated)")
            if translated { XCTAssertGreaterThan(cpu.translated?.used ?? 0, 0) }
        }
    }

    func testInterruptWaitsWhileIFIsClear() throws {
        bus.deliver(APICMessage(destination: 0, vector: 0x41))
        XCTAssertEqual(try sys.run([0xFA, 0x90]), .halted)   // cli; nop; hlt
        XCTAssertEqual(cpu.st.pointee.rip, EmulatedRunner.codeAddress + 3, "halted at the HLT, not in a handler")
        XCTAssertTrue(cpu.isWaiting)
        XCTAssertFalse(cpu.hasWakeupEvent, "IF clear: the interrupt does not end HLT")
        cpu.st.pointee.rflags |= RFlags.if
        XCTAssertTrue(cpu.hasWakeupEvent)
        XCTAssertEqual(cpu.run(budget: 100), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x41))
    }

    func testHLTWakesOnTheLAPICTimerAndWakeupIsCalled() throws {
        var wakeups = 0
        apic0.wakeup = { wakeups += 1 }
        // LVT timer: vector 0x50, one-shot; divide by 1; 1000 ticks of 1 GHz = 1 us.
        apic0.write(offset: 0x3E0, data: UnsafeRawBufferPointer(start: [UInt32(0xB)], count: 4))
        apic0.write(offset: 0x320, data: UnsafeRawBufferPointer(start: [UInt32(0x50)], count: 4))
        apic0.write(offset: 0x380, data: UnsafeRawBufferPointer(start: [UInt32(1000)], count: 4))
        XCTAssertEqual(try sys.run([0xFB]), .halted)   // sti; hlt
        XCTAssertEqual(cpu.st.pointee.rip, EmulatedRunner.codeAddress + 2)
        XCTAssertFalse(cpu.hasWakeupEvent)
        clock.advance(to: 1000)
        XCTAssertEqual(wakeups, 1, "the APIC woke the halted vCPU")
        XCTAssertTrue(cpu.hasWakeupEvent)
        XCTAssertEqual(cpu.run(budget: 100), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x50))
        XCTAssertEqual(try sys.stack(0), EmulatedRunner.codeAddress + 2, "return address after the HLT")
    }

    func testNMIIsBlockedUntilIRET() throws {
        bus.deliver(APICMessage(destination: 0, deliveryMode: .nmi, vector: 0))
        // cli; hlt — an NMI ends HLT even with IF clear.
        XCTAssertEqual(try sys.run([0xFA]), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(2))
        XCTAssertTrue(cpu.st.pointee.nmiBlocked)
        bus.deliver(APICMessage(destination: 0, deliveryMode: .nmi, vector: 0))
        XCTAssertFalse(cpu.hasWakeupEvent, "a second NMI waits for IRET")
        // The handler: iretq.
        try emu.memory.write([0x48, 0xCF], at: sys.handler(2) - 1)
        cpu.invalidateCode(physical: sys.handler(2))
        cpu.st.pointee.rip = sys.handler(2) - 1
        cpu.st.pointee.halted = false
        // iretq unblocks; the pending NMI is taken at once (its handler is the iretq again),
        // then cli; hlt runs.
        XCTAssertEqual(cpu.run(budget: 100), .halted)
        XCTAssertFalse(apic0.hasPendingEvent, "the second NMI was taken after IRET")
        XCTAssertFalse(cpu.st.pointee.nmiBlocked)
        XCTAssertEqual(cpu.st.pointee.rip, EmulatedRunner.codeAddress + 2)
    }

    func testINITThenSIPIStartsAnAPInRealMode() throws {
        let ap = X86CPU(platform: emu.platform, index: 1, cpuid: CPUIDModel.keel(cpuIndex: 1, cpuCount: 2))
        ap.apic = apic1
        ap.st.pointee.waitingForSIPI = true
        XCTAssertEqual(ap.run(budget: 100), .halted)
        // Trampoline at 0x9000: mov ax, cs; mov ds, ax; mov ax, [0x10]; hlt
        try emu.memory.write([0x8C, 0xC8, 0x8E, 0xD8, 0xA1, 0x10, 0x00, 0xF4], at: 0x9000)
        try emu.memory.write([0x34, 0x12], at: 0x9010)
        // The BSP sends INIT then SIPI vector 9 through its ICR (physical destination 1).
        apic0.write(offset: 0x310, data: UnsafeRawBufferPointer(start: [UInt32(1 << 24)], count: 4))
        apic0.write(offset: 0x300, data: UnsafeRawBufferPointer(start: [UInt32(0x4500)], count: 4))
        apic0.write(offset: 0x300, data: UnsafeRawBufferPointer(start: [UInt32(0x4609)], count: 4))
        XCTAssertTrue(ap.hasWakeupEvent)
        XCTAssertEqual(ap.run(budget: 100), .halted)
        XCTAssertFalse(ap.st.pointee.waitingForSIPI)
        XCTAssertEqual(ap.st.pointee.cs.selector, 0x900)
        XCTAssertEqual(ap.st.pointee.cs.base, 0x9000)
        XCTAssertEqual(ap.st.pointee.codeMode, .real16)
        XCTAssertEqual(ap.gpr[0] & 0xFFFF, 0x1234, "read through DS = CS")
        XCTAssertEqual(ap.st.pointee.rip, 8)
        // A SIPI outside wait-for-SIPI is ignored; INIT resets into wait-for-SIPI again.
        apic0.write(offset: 0x300, data: UnsafeRawBufferPointer(start: [UInt32(0x4608)], count: 4))
        _ = ap.run(budget: 100)
        XCTAssertEqual(ap.st.pointee.cs.base, 0x9000)
        XCTAssertFalse(apic1.hasPendingEvent)
        apic0.write(offset: 0x300, data: UnsafeRawBufferPointer(start: [UInt32(0x4500)], count: 4))
        XCTAssertEqual(ap.run(budget: 100), .halted)
        XCTAssertTrue(ap.st.pointee.waitingForSIPI)
        XCTAssertEqual(ap.st.pointee.cr0 & CR0.pe, 0)
    }

    func testXAPICPageAndMSRsReachTheVCPUsOwnAPIC() throws {
        let ap = X86CPU(platform: emu.platform, index: 1, cpuid: CPUIDModel.keel(cpuIndex: 1, cpuCount: 2))
        ap.apic = apic1
        // mov eax, [rsi] (rsi = 0xFEE00020, the APIC ID register); mov ebx, eax; mov ecx, 0x1B; rdmsr; hlt
        let code: [UInt8] = [0x8B, 0x06, 0x89, 0xC3, 0xB9, 0x1B, 0x00, 0x00, 0x00, 0x0F, 0x32]
        XCTAssertEqual(try sys.run(code, regs: [6: 0xFEE0_0020]), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, EmulatedRunner.codeAddress + UInt64(code.count) + 1, "no fault")
        XCTAssertEqual(cpu.gpr[3] & 0xFFFF_FFFF, 0, "BSP reads APIC ID 0")
        XCTAssertEqual(cpu.gpr[0] & 0xFFFF_FFFF, 0xFEE0_0900, "IA32_APIC_BASE: enabled, BSP")
        // The same code on vCPU 1 reads its own APIC.
        let s = ap.st
        s.pointee = cpu.st.pointee
        s.pointee.rip = EmulatedRunner.codeAddress
        s.pointee.halted = false
        for r in 0..<16 { ap.gpr[r] = 0 }
        ap.gpr[4] = SystemTests.kernelStack - 0x100
        ap.gpr[6] = 0xFEE0_0020
        ap.flushTLB(global: true)
        ap.refreshMode()
        XCTAssertEqual(ap.run(budget: 100), .halted)
        XCTAssertEqual(ap.gpr[3] & 0xFFFF_FFFF, 1 << 24, "AP reads APIC ID 1")
        XCTAssertEqual(ap.gpr[0] & 0xFFFF_FFFF, 0xFEE0_0800, "IA32_APIC_BASE: enabled, not BSP")
    }

    func testTSCDeadlineMSRArmsTheTimerFromRDTSCsClock() throws {
        let vclock = VCPUClock(base: clock)
        let apic = try LocalAPIC(index: 2, bus: bus, clock: vclock)
        cpu.apic = apic
        cpu.clock = vclock
        apic.write(offset: 0xF0, data: UnsafeRawBufferPointer(start: [UInt32(0x1FF)], count: 4))
        apic.write(offset: 0x320, data: UnsafeRawBufferPointer(start: [UInt32(0x60 | (2 << 17))], count: 4))
        clock.nanoseconds = 500
        // wrmsr IA32_TSC = 0 (the TSC restarts), then wrmsr IA32_TSC_DEADLINE = 2000 (1 us later)
        let code: [UInt8] = [0xB9, 0x10, 0, 0, 0, 0x31, 0xC0, 0x31, 0xD2, 0x0F, 0x30,
                             0xB9, 0xE0, 0x06, 0, 0, 0xB8, 0xD0, 0x07, 0, 0, 0x0F, 0x30, 0xFB]
        XCTAssertEqual(try sys.run(code), .halted)
        XCTAssertEqual(vclock.tsc, 0)
        XCTAssertEqual(cpu.tsc, 0, "RDTSC reads the vCPU clock")
        clock.advance(to: 1499)
        XCTAssertFalse(cpu.hasWakeupEvent)
        clock.advance(to: 1500)
        XCTAssertTrue(cpu.hasWakeupEvent, "deadline 2000 ticks at 2 GHz after the TSC write at 500 ns")
        XCTAssertEqual(cpu.run(budget: 100), .halted)
        XCTAssertEqual(cpu.st.pointee.rip, sys.handler(0x60))
    }

    /// vCPU A holds a TLB entry that lets it store to a page without the slow path; vCPU B then
    /// decodes code from that page. A's next store must still make B re-decode.
    func testStoreByOneVCPUInvalidatesAnotherVCPUsDecodedCode() throws {
        let page: UInt64 = 0x30000
        let b = X86CPU(platform: emu.platform, index: 1, cpuid: CPUIDModel.keel(cpuIndex: 1, cpuCount: 2))
        // B's code: mov eax, 1; hlt
        try emu.memory.write([0xB8, 0x01, 0, 0, 0, 0xF4], at: page)
        // A: mov byte [page + 0x800], 0 (a store that fills A's TLB for the page, writable); hlt
        cpu.apic = nil
        XCTAssertEqual(try sys.run([0xC6, 0x04, 0x25, 0x00, 0x08, 0x03, 0x00, 0x00]), .haltedForever)
        func runB() -> UInt64 {
            let s = b.st
            s.pointee = cpu.st.pointee
            s.pointee.rip = page
            s.pointee.halted = false
            b.refreshMode()
            _ = b.run(budget: 100)
            return b.gpr[0]
        }
        XCTAssertEqual(runB(), 1)
        // A: mov byte [page + 1], 2; hlt — through A's TLB entry filled before B decoded the page.
        try emu.memory.write([0xC6, 0x04, 0x25, 0x01, 0x00, 0x03, 0x00, 0x02, 0xF4], at: EmulatedRunner.codeAddress)
        cpu.invalidateCode(physical: EmulatedRunner.codeAddress)
        cpu.st.pointee.rip = EmulatedRunner.codeAddress
        cpu.st.pointee.halted = false
        XCTAssertEqual(cpu.run(budget: 100), .haltedForever)
        XCTAssertEqual(try emu.memory.load(UInt8.self, at: page + 1), 2)
        XCTAssertEqual(runB(), 2, "B ran the new code")
    }
}
