import XCTest
@testable import TCG

/// The software TLB's tables and tags: one table per privilege, and the write tag a read walk
/// may give.
final class TLBTests: XCTestCase {
    /// A page reached at CPL 0 and at CPL 3 (the kernel copying to a user buffer) keeps both
    /// entries; INVLPG empties both.
    func testSupervisorAndUserEntriesForOnePageCoexist() throws {
        let r = try EmulatedRunner()
        let cpu = r.cpu
        let la = EmulatedRunner.dataAddress + 0x3000
        cpu.st.pointee.cpl = 0
        _ = try cpu.translate(la, .read)
        cpu.st.pointee.cpl = 3
        _ = try cpu.translate(la, .read)
        let page = (la >> 12) << 1
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.readTag, page)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 1).pointee.readTag, page | 1)
        XCTAssertNotEqual(tlbEntry(cpu.tlb, la, user: 0), tlbEntry(cpu.tlb, la, user: 1))
        cpu.flushTLBPage(la)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.readTag, ~0)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 1).pointee.readTag, ~0)
    }

    /// A read walk gives the write tag only when the leaf's D bit is already set: else the
    /// first store walks again and sets D (SDM Vol. 3 §4.8).
    func testReadWalkGivesTheWriteTagOnlyForADirtyPage() throws {
        let r = try EmulatedRunner()
        let cpu = r.cpu
        let la = EmulatedRunner.dataAddress + 0x5000
        let key = (la >> 12) << 1
        // The runner's 1 GiB page (PDPT entry 0) is mapped without D.
        _ = try cpu.translate(la, .read)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.writeTag, ~0)
        XCTAssertEqual(try r.memory.load(UInt64.self, at: EmulatedRunner.pdpt) & PTE.d, 0, "a read does not set D")
        _ = try cpu.translate(la, .write)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.writeTag, key)
        XCTAssertEqual(try r.memory.load(UInt64.self, at: EmulatedRunner.pdpt) & PTE.d, PTE.d)
        cpu.flushTLB(global: true)
        _ = try cpu.translate(la, .read)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.writeTag, key, "D set: the read walk gives the write tag")
        // Read-only for everyone with CR0.WP: no write tag even though D is set.
        try r.memory.store(UInt64(0x80 | 0x40 | 0x20 | 0x4 | 0x1), at: EmulatedRunner.pdpt)
        cpu.flushTLB(global: true)
        _ = try cpu.translate(la, .read)
        XCTAssertEqual(tlbEntry(cpu.tlb, la, user: 0).pointee.writeTag, ~0)
    }
}
