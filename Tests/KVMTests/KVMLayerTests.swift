import CKeel
import Glibc
import KVM
import Memory
import XCTest

/// Tiny real-mode guests run straight through the KVM layer, with no machine around them.
final class KVMLayerTests: XCTestCase {
    var system: KVMSystem!

    override func setUpWithError() throws {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { throw XCTSkip("no /dev/kvm on this host: the kvm accelerator cannot be tested here") }
        system = try KVMSystem()
    }

    /// A VM with 1 MiB of RAM, `code` at 0x1000 and the vCPU in real mode there.
    func makeGuest(_ code: [UInt8], irqchip: Bool = false) throws -> (VirtualMachine, VCPU, GuestMemory) {
        let vm = try system.createVM()
        try vm.setTSSAddress(0xFFFB_D000)
        if irqchip { try vm.createIRQChip() }
        let mem = try GuestMemory(layout: [(0, 1 << 20)])
        try vm.setUserMemoryRegion(guestAddress: 0, size: 1 << 20, host: mem.regions[0].host, owner: mem)
        try mem.write(code, at: 0x1000)
        let vcpu = try vm.createVCPU(id: 0)
        var s = try vcpu.getSpecialRegisters()
        s.cs.base = 0; s.cs.selector = 0
        try vcpu.setSpecialRegisters(s)
        var r = kvm_regs()
        r.rip = 0x1000; r.rflags = 2
        try vcpu.setRegisters(r)
        return (vm, vcpu, mem)
    }

    func testCapabilitiesAndCPUID() throws {
        XCTAssertGreaterThan(system.vcpuMmapSize, 0)
        let cpuid = try system.supportedCPUID()
        XCTAssertTrue(cpuid.contains { $0.function == 0 }, "leaf 0 missing")
        XCTAssertTrue(cpuid.contains { $0.function == 1 }, "leaf 1 missing")
        XCTAssertTrue(try system.msrIndexList().contains(0xC000_0081), "STAR not in KVM's MSR list")
    }

    func testPortWriteAndReadExits() throws {
        // mov dx,0x3f8; mov al,0x5a; out dx,al; in al,dx; mov ah,al; out 0x80, ax; hlt
        let (_, vcpu, _) = try makeGuest([0xBA, 0xF8, 0x03, 0xB0, 0x5A, 0xEE, 0xEC, 0x88, 0xC4, 0xE7, 0x80, 0xF4])
        guard case .ioOut(let port, let size, let count, let data) = try vcpu.runOnce() else { return XCTFail("expected an OUT exit") }
        XCTAssertEqual([port, UInt16(size), UInt16(count)], [0x3F8, 1, 1])
        XCTAssertEqual(data.load(as: UInt8.self), 0x5A)
        guard case .ioIn(let p2, 1, 1, let d2) = try vcpu.runOnce() else { return XCTFail("expected an IN exit") }
        XCTAssertEqual(p2, 0x3F8)
        d2.storeBytes(of: 0x77, as: UInt8.self)
        guard case .ioOut(0x80, 2, 1, let d3) = try vcpu.runOnce() else { return XCTFail("expected a 16-bit OUT") }
        XCTAssertEqual(d3.loadUnaligned(as: UInt16.self), 0x7777, "the IN's value must reach the guest's AL")
        guard case .halt = try vcpu.runOnce() else { return XCTFail("expected HLT") }
    }

    func testMMIOExit() throws {
        // mov word [0x0010], 0xBEEF; hlt — with DS based past the 1 MiB RAM slot, so it is MMIO.
        let (_, vcpu, _) = try makeGuest([0xC7, 0x06, 0x10, 0x00, 0xEF, 0xBE, 0xF4])
        var s = try vcpu.getSpecialRegisters()
        s.ds.base = 0x20_0000
        try vcpu.setSpecialRegisters(s)
        guard case .mmioWrite(let addr, let data) = try vcpu.runOnce() else { return XCTFail("expected an MMIO write") }
        XCTAssertEqual(addr, 0x20_0010)
        XCTAssertEqual(data.count, 2)
        XCTAssertEqual(data.loadUnaligned(as: UInt16.self), 0xBEEF)
    }

    func testIOEventFDSignalsWithoutExit() throws {
        // mov dx,0x3f0; mov al,5; out dx,al; hlt
        let (vm, vcpu, _) = try makeGuest([0xBA, 0xF0, 0x03, 0xB0, 0x05, 0xEE, 0xF4])
        let efd = eventfd(0, Int32(EFD_NONBLOCK))
        defer { close(efd) }
        try vm.registerIOEventFD(efd, space: .pio, address: 0x3F0, length: 1)
        guard case .halt = try vcpu.runOnce() else { return XCTFail("the OUT must not exit to userspace") }
        var v: UInt64 = 0
        XCTAssertEqual(read(efd, &v, 8), 8)
        XCTAssertEqual(v, 1)
    }

    func testIRQFDAndMSIRegistration() throws {
        let (vm, _, _) = try makeGuest([0xF4], irqchip: true)
        let efd = eventfd(0, Int32(EFD_NONBLOCK))
        defer { close(efd) }
        try vm.registerIRQFD(efd, gsi: 5)
        try vm.unregisterIRQFD(efd, gsi: 5)
        try vm.setIRQLine(4, level: true)
        try vm.setIRQLine(4, level: false)
        // An MSI to APIC ID 0, vector 0x40: accepted by the in-kernel LAPIC (1 = delivered, 0 = blocked).
        XCTAssertNoThrow(try vm.signalMSI(address: 0xFEE0_0000, data: 0x40))
    }

    func testImmediateExit() throws {
        let (_, vcpu, _) = try makeGuest([0xEB, 0xFE]) // jmp $
        vcpu.setImmediateExit(true)
        guard case .interrupted = try vcpu.runOnce() else { return XCTFail("immediate_exit must return at once") }
    }
}
