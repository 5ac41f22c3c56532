import XCTest
@testable import TCG

/// Kernel-mode behaviour against the SDM: page faults, IDT delivery with privilege changes,
/// SYSCALL/SYSRET, #DE/#UD, triple fault, string instructions and LOCK on memory.
final class SystemTests: XCTestCase {
    var emu: EmulatedRunner!
    static let gdt: UInt64 = 0x3000, idt: UInt64 = 0x4000, tss: UInt64 = 0x5000
    static let handlers: UInt64 = 0x8000, kernelStack: UInt64 = 0x40000, userStack: UInt64 = 0x50000

    override func setUpWithError() throws {
        emu = try EmulatedRunner()
        let m = emu.memory
        let gdtEntries: [UInt64] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00CF_F200_0000_FFFF, 0x00AF_FA00_0000_FFFF]
        for (k, d) in gdtEntries.enumerated() { try m.store(d, at: Self.gdt + UInt64(8 * k)) }
        // 64-bit TSS at selector 0x28.
        let base = Self.tss, limit: UInt64 = 0x67
        try m.store(limit | ((base & 0xFF_FFFF) << 16) | (0x89 << 40) | (((base >> 24) & 0xFF) << 56), at: Self.gdt + 0x28)
        try m.store(base >> 32, at: Self.gdt + 0x30)
        try m.store(Self.kernelStack, at: Self.tss + 4)
        // Every vector: an interrupt gate (DPL 3) to handlers + 16 * v, which halts.
        for v in 0..<256 {
            let h = Self.handlers + UInt64(16 * v)
            let lo = (h & 0xFFFF) | (0x08 << 16) | (UInt64(0xEE) << 40) | ((h >> 16 & 0xFFFF) << 48)
            try m.store(lo, at: Self.idt + UInt64(16 * v))
            try m.store(h >> 32, at: Self.idt + UInt64(16 * v) + 8)
            try m.write([0xF4], at: h)
        }
        let s = emu.cpu.st
        s.pointee.gdtBase = Self.gdt; s.pointee.gdtLimit = 0x37
        s.pointee.idtBase = Self.idt; s.pointee.idtLimit = 0xFFF
        s.pointee.tr = SegmentCache(selector: 0x28, base: Self.tss, limit: 0x67, attributes: 0x8B)
    }

    /// Runs code in ring 0 with RSP at the kernel stack; returns the exit.
    func run(_ code: [UInt8], regs: [Int: UInt64] = [:]) throws -> CPUExit {
        var r = RegisterFile()
        r.gpr[4] = Self.kernelStack - 0x100
        for (k, v) in regs { r.gpr[k] = v }
        let (_, exit) = try emu.run(code, r)
        return exit
    }

    var cpu: X86CPU { emu.cpu }
    func stack(_ n: Int) throws -> UInt64 { try emu.memory.load(UInt64.self, at: cpu.gpr[4] + UInt64(8 * n)) }
    func handler(_ v: UInt64) -> UInt64 { Self.handlers + 16 * v + 1 }

    /// A non-canonical address through SS (RBP or RSP base) raises #SS(0), through DS #GP(0)
    /// (SDM Vol. 3 §6.15; found by DifferentialKVMTests against the host CPU).
    func testNonCanonicalStackReferenceRaisesStackFault() throws {
        let bad: UInt64 = 0x8000_0000_0000_1000
        XCTAssertEqual(try run([0x48, 0x8B, 0x45, 0x10], regs: [5: bad]), .haltedForever)  // mov rax, [rbp+0x10]
        XCTAssertEqual(cpu.st.pointee.rip, handler(12))
        XCTAssertEqual(try stack(0), 0, "#SS error code")
        XCTAssertEqual(try run([0x48, 0x8B, 0x03], regs: [3: bad]), .haltedForever)  // mov rax, [rbx]
        XCTAssertEqual(cpu.st.pointee.rip, handler(13))
        // Measured on the host CPU: 64-bit mode ignores a DS override but honours SS; FS is a
        // data segment.
        XCTAssertEqual(try run([0x3E, 0x48, 0x8B, 0x45, 0x10], regs: [5: bad]), .haltedForever)  // ds: mov rax, [rbp+0x10]
        XCTAssertEqual(cpu.st.pointee.rip, handler(12))
        XCTAssertEqual(try run([0x36, 0x48, 0x8B, 0x03], regs: [3: bad]), .haltedForever)  // ss: mov rax, [rbx]
        XCTAssertEqual(cpu.st.pointee.rip, handler(12))
        XCTAssertEqual(try run([0x64, 0x48, 0x8B, 0x45, 0x10], regs: [5: bad]), .haltedForever)  // fs: mov rax, [rbp+0x10]
        XCTAssertEqual(cpu.st.pointee.rip, handler(13))
        // (push through a non-canonical RSP: DifferentialKVMTests, from ring 3; in ring 0 the
        // fault could not be delivered on that stack.)
    }

    /// POPF setting TF: the instruction after it runs, then #DB (a trap: the frame's RIP is the
    /// next instruction, DR6.BS set), as the host CPU does under DifferentialKVMTests.
    func testTrapFlagSingleStepsTheNextInstruction() throws {
        // push 0x102 ; popf ; nop ; nop
        XCTAssertEqual(try run([0x68, 0x02, 0x01, 0x00, 0x00, 0x9D, 0x90, 0x90]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(1))
        XCTAssertEqual(try stack(0), EmulatedRunner.codeAddress + 7, "trap after the first nop")
        XCTAssertEqual(try stack(2) & (RFlags.tf | RFlags.rf), RFlags.tf, "TF in the image, RF not (a trap)")
        XCTAssertEqual(cpu.st.pointee.dr6 & 0x4000, 0x4000, "DR6.BS")
        XCTAssertEqual(cpu.st.pointee.rflags & RFlags.tf, 0, "TF clear in the handler")
    }

    /// MOV SS with TF set: the single-step trap waits for the next instruction (SDM Vol. 3
    /// §6.8.3), so one #DB follows the instruction after it.
    func testTrapFlagAfterMovSSWaitsOneInstruction() throws {
        // push 0x102 ; popf ; mov ss, ax ; nop ; nop
        XCTAssertEqual(try run([0x68, 0x02, 0x01, 0x00, 0x00, 0x9D, 0x8E, 0xD0, 0x90, 0x90], regs: [0: 0x10]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(1))
        XCTAssertEqual(try stack(0), EmulatedRunner.codeAddress + 9, "trap after the nop that follows mov ss")
        XCTAssertEqual(cpu.st.pointee.dr6 & 0x4000, 0x4000, "DR6.BS")
        // Any other instruction traps right after itself: mov ds, ax.
        XCTAssertEqual(try run([0x68, 0x02, 0x01, 0x00, 0x00, 0x9D, 0x8E, 0xD8, 0x90, 0x90], regs: [0: 0x10]), .haltedForever)
        XCTAssertEqual(try stack(0), EmulatedRunner.codeAddress + 8)
    }

    func testNotPresentPageFaultPushesErrorCodeAndSetsCR2() throws {
        // mov rax, [0x40000010] (PDPT[1] is empty)
        XCTAssertEqual(try run([0x48, 0x8B, 0x04, 0x25, 0x10, 0x00, 0x00, 0x40]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(14))
        XCTAssertEqual(cpu.st.pointee.cr2, 0x4000_0010)
        XCTAssertEqual(try stack(0), 0, "error code: not present, read, supervisor")
        XCTAssertEqual(try stack(1), EmulatedRunner.codeAddress, "faulting RIP")
        XCTAssertEqual(try stack(2), 0x08)
    }

    /// SDM Vol. 3 §18.3.1.1: a fault-class exception pushes RF = 1 (found by DifferentialKVMTests
    /// against the host CPU); a software interrupt pushes RFLAGS as it is.
    func testFaultsPushResumeFlagButSoftwareInterruptsDoNot() throws {
        XCTAssertEqual(try run([0x0F, 0x0B]), .haltedForever)  // ud2
        XCTAssertEqual(cpu.st.pointee.rip, handler(6))
        let image = try stack(2)
        XCTAssertEqual(image & RFlags.rf, RFlags.rf, "#UD frame RFLAGS \(String(image, radix: 16))")
        XCTAssertEqual(cpu.st.pointee.rflags & RFlags.rf, 0, "RF is clear in the handler")
        // iretq back with RF = 1 (to a nop, then hlt): RF is gone once the nop completed.
        let frame: [UInt64] = [0x10100, 0x08, 0x10002, Self.kernelStack - 0x80, 0x10]
        try emu.memory.write([0x90, 0xF4], at: 0x10100)
        let sp = Self.kernelStack - 0x200
        for (k, v) in frame.enumerated() { try emu.memory.store(v, at: sp + UInt64(8 * k)) }
        XCTAssertEqual(try run([0x48, 0xCF], regs: [4: sp]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, 0x10102)
        XCTAssertEqual(cpu.st.pointee.rflags & RFlags.rf, 0, "RF cleared after one instruction")
        XCTAssertEqual(try run([0x48, 0x8B, 0x04, 0x25, 0x10, 0x00, 0x00, 0x40]), .haltedForever)  // #PF
        XCTAssertEqual(try stack(3) & RFlags.rf, RFlags.rf, "#PF frame RFLAGS (after the error code)")
        XCTAssertEqual(try run([0xCD, 0x80]), .haltedForever)  // int 0x80
        XCTAssertEqual(cpu.st.pointee.rip, handler(0x80))
        XCTAssertEqual(try stack(2) & RFlags.rf, 0, "int n frame RFLAGS")
    }

    func testWriteToReadOnlyPageWithWPFaults() throws {
        try emu.memory.store(UInt64(0x4000_0000 | 0x81), at: EmulatedRunner.pdpt + 8)   // 1 GiB, present, read-only
        // mov dword [0x40000000], 1
        XCTAssertEqual(try run([0xC7, 0x04, 0x25, 0x00, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x00]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(14))
        XCTAssertEqual(try stack(0), 3, "error code: present, write")
        XCTAssertEqual(cpu.st.pointee.cr2, 0x4000_0000)
    }

    func testAccessedAndDirtyBitsAreSet() throws {
        try emu.memory.store(UInt64(0x87), at: EmulatedRunner.pdpt)
        // mov [0x20000], eax
        XCTAssertEqual(try run([0x89, 0x04, 0x25, 0x00, 0x00, 0x02, 0x00]), .haltedForever)
        let e: UInt64 = try emu.memory.load(at: EmulatedRunner.pdpt)
        XCTAssertEqual(e & 0x60, 0x60, "A and D set in the 1 GiB leaf")
    }

    func testUserModeSoftwareInterruptSwitchesToTSSStack() throws {
        // iretq to ring 3 at user code: int 0x80.
        let user: UInt64 = 0x11000
        try emu.memory.write([0xCD, 0x80], at: user)
        let frame: [UInt64] = [user, 0x23, 0x202, Self.userStack, 0x1B]
        let sp = Self.kernelStack - 0x100 - 40
        for (k, v) in frame.enumerated() { try emu.memory.store(v, at: sp + UInt64(8 * k)) }
        XCTAssertEqual(try run([0x48, 0xCF], regs: [4: sp]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(0x80))
        XCTAssertEqual(cpu.st.pointee.cpl, 0)
        XCTAssertEqual(cpu.gpr[4], Self.kernelStack - 40, "frame on TSS.RSP0")
        XCTAssertEqual(try stack(0), user + 2, "return RIP after int")
        XCTAssertEqual(try stack(1), 0x23)
        XCTAssertEqual(try stack(3), Self.userStack)
        XCTAssertEqual(try stack(4), 0x1B)
    }

    func testUserModeCannotHalt() throws {
        let user: UInt64 = 0x11000
        try emu.memory.write([0xF4], at: user)
        let frame: [UInt64] = [user, 0x23, 0x202, Self.userStack, 0x1B]
        let sp = Self.kernelStack - 0x100 - 40
        for (k, v) in frame.enumerated() { try emu.memory.store(v, at: sp + UInt64(8 * k)) }
        XCTAssertEqual(try run([0x48, 0xCF], regs: [4: sp]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(13))
        XCTAssertEqual(try stack(0), 0, "#GP(0)")
    }

    /// Ring 3 with RFLAGS.AC under CR0.AM: a misaligned data access raises #AC(0) (SDM Vol. 3
    /// §6.15, interrupt 17); aligned ones, ring 0, or AM clear do not (the user hlt then #GPs).
    func testAlignmentCheckInRing3() throws {
        let user: UInt64 = 0x11000, data: UInt64 = 0x21000
        func enterUser(_ code: [UInt8], rflags: UInt64, regs: [Int: UInt64]) throws -> UInt64 {
            try emu.memory.write(code + [0xF4], at: user)
            cpu.invalidateCode(physical: user)
            let frame: [UInt64] = [user, 0x23, rflags, Self.userStack, 0x1B]
            let sp = Self.kernelStack - 0x100 - 40
            for (k, v) in frame.enumerated() { try emu.memory.store(v, at: sp + UInt64(8 * k)) }
            var r = regs
            r[4] = sp
            XCTAssertEqual(try run([0x48, 0xCF], regs: r), .haltedForever)
            return (cpu.st.pointee.rip - Self.handlers - 1) / 16
        }
        let load: [UInt8] = [0x8B, 0x43, 0x01]  // mov eax, [rbx+1]
        cpu.st.pointee.cr0 |= CR0.am
        XCTAssertEqual(try enterUser(load, rflags: 0x202, regs: [3: data]), 13, "AC clear: the load runs, hlt #GPs")
        XCTAssertEqual(try enterUser(load, rflags: 0x4_0202, regs: [3: data]), 17, "AC set: #AC")
        XCTAssertEqual(try stack(0), 0, "#AC error code")
        XCTAssertEqual(try stack(1), user, "a fault: RIP of the load")
        XCTAssertEqual(try enterUser(load, rflags: 0x4_0202, regs: [3: data - 1]), 13, "aligned: no #AC")
        XCTAssertEqual(try enterUser([0x89, 0x43, 0x02], rflags: 0x4_0202, regs: [3: data]), 17, "a misaligned store")
        XCTAssertEqual(try enterUser([0x66, 0x89, 0x43, 0x02], rflags: 0x4_0202, regs: [3: data]), 13, "a word at 2 is aligned")
        XCTAssertEqual(try enterUser([0x53], rflags: 0x4_0202, regs: [3: data]), 13, "push onto an aligned stack")
        // popf setting AC in ring 3, then a misaligned load in the same run.
        XCTAssertEqual(try enterUser([0x68, 0x02, 0x02, 0x04, 0x00, 0x9D] + load, rflags: 0x202, regs: [3: data]), 17)
        XCTAssertEqual(try stack(1), user + 6)
        cpu.st.pointee.cr0 &= ~CR0.am
        XCTAssertEqual(try enterUser(load, rflags: 0x4_0202, regs: [3: data]), 13, "CR0.AM clear: no #AC")
    }

    func testSyscallAndSysret() throws {
        let s = cpu.st
        s.pointee.star = (UInt64(0x10) << 48) | (UInt64(0x08) << 32)
        s.pointee.lstar = 0x12000
        s.pointee.sfmask = 0x200
        // Kernel entry: sysretq.
        try emu.memory.write([0x48, 0x0F, 0x07], at: 0x12000)
        // User code after sysret: hlt raises #GP in ring 3.
        XCTAssertEqual(try run([0x0F, 0x05], regs: [11: 0x202]), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, handler(13))
        XCTAssertEqual(cpu.gpr[1], EmulatedRunner.codeAddress + 2, "RCX = return RIP")
        XCTAssertEqual(try stack(1), EmulatedRunner.codeAddress + 2, "#GP at the HLT after syscall returned")
        XCTAssertEqual(try stack(2), 0x23, "CS = STAR[63:48] + 16 | 3")
    }

    func testDivideByZeroRaisesDE() throws {
        XCTAssertEqual(try run([0x48, 0xF7, 0xF1], regs: [1: 0]), .haltedForever)   // div rcx
        XCTAssertEqual(cpu.st.pointee.rip, handler(0))
        XCTAssertEqual(try stack(0), EmulatedRunner.codeAddress)
    }

    func testUnimplementedInstructionRaisesUD() throws {
        XCTAssertEqual(try run([0xC5, 0xF8, 0x77]), .haltedForever)   // vzeroupper (no AVX)
        XCTAssertEqual(cpu.st.pointee.rip, handler(6))
        XCTAssertEqual(try run([0x0F, 0x0B]), .haltedForever)   // ud2
        XCTAssertEqual(cpu.st.pointee.rip, handler(6))
        XCTAssertEqual(try run([0xF0, 0x48, 0x89, 0xC8]), .haltedForever)   // lock mov: #UD
        XCTAssertEqual(cpu.st.pointee.rip, handler(6))
    }

    func testFaultWithoutIDTIsATripleFault() throws {
        cpu.st.pointee.idtLimit = 0
        XCTAssertEqual(try run([0x0F, 0x0B]), .tripleFault)
    }

    func testRepMovsbAndStosq() throws {
        try emu.memory.write(Array("keel tcg string".utf8), at: 0x21000)
        // rep movsb (rsi=0x21000, rdi=0x22000, rcx=15); rep stosq (rdi=0x23000, rcx=4, rax=pattern)
        let code: [UInt8] = [0xF3, 0xA4, 0x48, 0xC7, 0xC7, 0x00, 0x30, 0x02, 0x00, 0xB9, 0x04, 0, 0, 0, 0xF3, 0x48, 0xAB]
        XCTAssertEqual(try run(code, regs: [6: 0x21000, 7: 0x22000, 1: 15, 0: 0x1122_3344_5566_7788]), .haltedForever)
        XCTAssertEqual(try emu.memory.readBytes(at: 0x22000, count: 15), Array("keel tcg string".utf8))
        for k in 0..<4 { XCTAssertEqual(try emu.memory.load(UInt64.self, at: 0x23000 + UInt64(8 * k)), 0x1122_3344_5566_7788) }
        XCTAssertEqual(cpu.gpr[1], 0)
        XCTAssertEqual(cpu.gpr[7], 0x23020)
    }

    func testRepStringsAcrossPagesOverlapsAndCode() throws {
        // rep movsb upwards over itself (dst = src + 3, 40 bytes): the forward element order
        // replicates the first 3 bytes, as the real CPU does.
        try emu.memory.write(Array("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".utf8), at: 0x21000)
        XCTAssertEqual(try run([0xF3, 0xA4], regs: [6: 0x21000, 7: 0x21003, 1: 40]), .haltedForever)
        let copied = try emu.memory.readBytes(at: 0x21000, count: 43)
        XCTAssertEqual(copied, (0..<43).map { Array("abc".utf8)[$0 % 3] })
        // rep movsd with dst = src + 2: each dword is read whole before it is stored, so the
        // pattern is not a 2-byte replication (the host CPU's result, from DifferentialKVMTests).
        try emu.memory.write([0x17, 0x14, 0x90, 0x00, 0, 0, 0, 0, 0x39, 0x67, 0x57, 0x72, 0x59, 0x8D, 0xE4, 0x18, 0xAA, 0xBB], at: 0x21100)
        XCTAssertEqual(try run([0xF3, 0xA5], regs: [6: 0x21100, 7: 0x21102, 1: 4]), .haltedForever)
        XCTAssertEqual(try emu.memory.readBytes(at: 0x21100, count: 18),
                       [0x17, 0x14, 0x17, 0x14, 0x90, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x57, 0x72, 0x57, 0x72, 0xE4, 0x18])
        // rep stosd across two page boundaries, then rep movsq of 12 000 bytes from there (more
        // than one budget's worth of elements for the stos: the instruction restarts itself).
        XCTAssertEqual(try run([0xF3, 0xAB], regs: [7: 0x30FF8, 1: 3000, 0: 0xA1B2_C3D4]), .haltedForever)
        XCTAssertEqual(cpu.gpr[7], 0x30FF8 + 12_000)
        XCTAssertEqual(try emu.memory.load(UInt32.self, at: 0x30FF8), 0xA1B2_C3D4)
        XCTAssertEqual(try emu.memory.load(UInt32.self, at: 0x30FF8 + 11_996), 0xA1B2_C3D4)
        XCTAssertEqual(try emu.memory.load(UInt32.self, at: 0x30FF8 + 12_000), 0)
        XCTAssertEqual(try run([0xF3, 0x48, 0xA5], regs: [6: 0x30FF8, 7: 0x38004, 1: 1500]), .haltedForever)
        XCTAssertEqual(try emu.memory.readBytes(at: 0x38004, count: 12_000), try emu.memory.readBytes(at: 0x30FF8, count: 12_000))
        XCTAssertEqual(cpu.gpr[1], 0)
        // 16 000 bytes with a budget of 4096 elements per pass: rep stosb restarts itself.
        XCTAssertEqual(try run([0xF3, 0xAA], regs: [7: 0x40000, 1: 16_000, 0: 0x5A]), .haltedForever)
        XCTAssertEqual(try emu.memory.readBytes(at: 0x40000, count: 16_000), [UInt8](repeating: 0x5A, count: 16_000))
        // rep stosb over the code that follows it: the ud2 after it becomes nops before it runs.
        // lea rdi, [rip+0] ; add rdi, 12 ; mov ecx, 2 ; mov al, 0x90 ; rep stosb ; ud2
        let smc: [UInt8] = [0x48, 0x8D, 0x3D, 0, 0, 0, 0, 0x48, 0x83, 0xC7, 0x0D, 0xB9, 0x02, 0, 0, 0, 0xB0, 0x90, 0xF3, 0xAA, 0x0F, 0x0B]
        XCTAssertEqual(try run(smc), .haltedForever)
        XCTAssertEqual(cpu.st.pointee.rip, EmulatedRunner.codeAddress + UInt64(smc.count) + 1, "reached the final hlt, not #UD")
    }

    func testLockedCmpxchgAndXaddOnMemory() throws {
        try emu.memory.store(UInt64(5), at: 0x24000)
        // lock cmpxchg [rbx], rcx (rax=5 -> stores 9); lock xadd [rbx], rdx (rdx=1 -> mem 10, rdx 9)
        let code: [UInt8] = [0xF0, 0x48, 0x0F, 0xB1, 0x0B, 0xF0, 0x48, 0x0F, 0xC1, 0x13]
        XCTAssertEqual(try run(code, regs: [0: 5, 3: 0x24000, 1: 9, 2: 1]), .haltedForever)
        XCTAssertEqual(try emu.memory.load(UInt64.self, at: 0x24000), 10)
        XCTAssertEqual(cpu.gpr[2], 9)
    }

    func testSelfModifyingCodeIsSeen() throws {
        // mov byte [rip+1], 0x90 ... overwrites the following ud2's first byte? Simpler: write
        // "nop" over an int3 two instructions ahead, then execute it.
        // c6 05 01 00 00 00 90 = mov byte [rip+1], 0x90 ; next: jmp +0 ; cc (int3) -> becomes nop
        let code: [UInt8] = [0xC6, 0x05, 0x02, 0x00, 0x00, 0x00, 0x90, 0xEB, 0x00, 0xCC]
        XCTAssertEqual(try run(code), .haltedForever, "the int3 was replaced by a nop before it ran")
    }
}
