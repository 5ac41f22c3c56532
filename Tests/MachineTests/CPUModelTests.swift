import Machine
import XCTest

final class CPUModelTests: XCTestCase {
    /// What a host's KVM might offer: leaf 1 with monitor and the host's APIC ID, leaf 7 with
    /// ARCH_CAPABILITIES, topology leaf 0xB with two subleaves, thermal leaf 6.
    let supported = [
        CPUIDLeaf(function: 0x1, index: 0, eax: 0xA20F12, ebx: 0x0B02_0800, ecx: (1 << 3) | (1 << 0), edx: 1 << 28),
        CPUIDLeaf(function: 0x6, index: 0, eax: 4, ebx: 0, ecx: 1, edx: 0),
        CPUIDLeaf(function: 0x7, index: 0, eax: 0, ebx: 1 << 3, ecx: 0, edx: (1 << 29) | (1 << 4)),
        CPUIDLeaf(function: 0xB, index: 0, eax: 1, ebx: 2, ecx: 0x100, edx: 11),
        CPUIDLeaf(function: 0xB, index: 1, eax: 7, ebx: 16, ecx: 0x201, edx: 11),
    ]

    func leaf(_ l: [CPUIDLeaf], _ f: UInt32, _ i: UInt32 = 0) -> CPUIDLeaf { l.first { $0.function == f && $0.index == i }! }

    func testPerVCPUIdentityAndTopology() {
        let cpu2 = KeelCPUModel.leaves(fromSupported: supported, cpuIndex: 2, cpuCount: 3)
        let l1 = leaf(cpu2, 1)
        XCTAssertEqual(l1.ebx >> 24, 2, "initial APIC ID is the vCPU index")
        XCTAssertEqual((l1.ebx >> 16) & 0xFF, 3, "logical processor count")
        XCTAssertEqual(l1.ebx & 0xFFFF, 0x0800, "brand index and CLFLUSH size kept")
        XCTAssertNotEqual(l1.edx & (1 << 28), 0, "HTT with more than one CPU")
        XCTAssertNotEqual(l1.ecx & (1 << 31), 0, "hypervisor bit")
        XCTAssertEqual(leaf(cpu2, 0xB, 0).edx, 2)
        XCTAssertEqual(leaf(cpu2, 0xB, 1).ebx, 3)
        XCTAssertEqual(leaf(cpu2, 0xB, 1).eax, 2, "x2APIC ID shift covers 3 CPUs")
        XCTAssertEqual(leaf(cpu2, 0xB, 1).ecx, 0x201)
        let single = leaf(KeelCPUModel.leaves(fromSupported: supported, cpuIndex: 0, cpuCount: 1), 1)
        XCTAssertEqual(single.edx & (1 << 28), 0, "no HTT with one CPU")
    }

    func testHiddenFeatures() {
        let l = KeelCPUModel.leaves(fromSupported: supported, cpuIndex: 0, cpuCount: 1)
        XCTAssertEqual(leaf(l, 1).ecx & (1 << 3), 0, "no monitor/mwait")
        XCTAssertEqual(leaf(l, 1).ecx & 1, 1, "other features kept")
        XCTAssertEqual(leaf(l, 7).edx & (1 << 29), 0, "no ARCH_CAPABILITIES")
        XCTAssertEqual(leaf(l, 7).edx & (1 << 4), 1 << 4)
        XCTAssertEqual(leaf(l, 6), CPUIDLeaf(function: 6, index: 0, eax: 0, ebx: 0, ecx: 0, edx: 0))
        XCTAssertEqual(l.count, supported.count, "no leaf dropped or added")
    }
}
