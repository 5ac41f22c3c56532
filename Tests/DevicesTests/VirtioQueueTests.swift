@testable import Devices
import Memory
import XCTest

final class VirtioQueueTests: XCTestCase {
    var memory: GuestMemory!
    var queue: SplitVirtqueue!
    var driver: TestVirtqueueDriver!

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        queue = SplitVirtqueue(maxSize: 16)
        driver = try TestVirtqueueDriver(memory: memory, size: 16, base: 0x10000)
        queue.descriptorTable = driver.desc
        queue.driverArea = driver.avail
        queue.deviceArea = driver.used
        queue.indirectDescriptors = true
        queue.isReady = true
        try queue.validate(memory)
    }

    func testChainsInOrderWithReadableThenWritable() throws {
        XCTAssertNil(try queue.pop(memory))
        let h = try driver.add([.init(address: 0x20000, length: 16, writable: false),
                                .init(address: 0x21000, length: 512, writable: true),
                                .init(address: 0x22000, length: 1, writable: true)])
        let c = try XCTUnwrap(try queue.pop(memory))
        XCTAssertEqual(c.head, h)
        XCTAssertEqual(c.buffers.map(\.address), [0x20000, 0x21000, 0x22000])
        XCTAssertEqual(c.readableLength, 16)
        XCTAssertEqual(c.writableLength, 513)
        XCTAssertNil(try queue.pop(memory))
        try queue.pushUsed(memory, head: c.head, length: 513)
        XCTAssertTrue(try queue.needsInterrupt(memory))
        let u = try driver.harvest()
        XCTAssertEqual(u.first?.0, h)
        XCTAssertEqual(u.first?.1, 513)
    }

    func testIndirectTable() throws {
        try driver.add([.init(address: 0x30000, length: 16, writable: false),
                        .init(address: 0x31000, length: 4096, writable: true),
                        .init(address: 0x32000, length: 1, writable: true)], indirect: true)
        let c = try XCTUnwrap(try queue.pop(memory))
        XCTAssertEqual(c.buffers.count, 3)
        XCTAssertEqual(c.writableLength, 4097)
        queue.indirectDescriptors = false
        try driver.add([.init(address: 0x30000, length: 16, writable: false)], indirect: true)
        XCTAssertThrowsError(try queue.pop(memory)) { XCTAssertEqual($0 as? VirtqueueError, .indirectNotNegotiated) }
    }

    func testChainCursorGathersAcrossBuffers() throws {
        try memory.write([1, 2, 3], at: 0x40000)
        try memory.write([4, 5, 6, 7, 8], at: 0x41000)
        try driver.add([.init(address: 0x40000, length: 3, writable: false), .init(address: 0x41000, length: 5, writable: false),
                        .init(address: 0x42000, length: 2, writable: true), .init(address: 0x43000, length: 4, writable: true)])
        let c = try XCTUnwrap(try queue.pop(memory))
        var r = ChainCursor(memory: memory, buffers: c.readable)
        XCTAssertEqual(r.remaining, 8)
        XCTAssertEqual(r.read(4), [1, 2, 3, 4])
        XCTAssertEqual(r.read(4), [5, 6, 7, 8])
        XCTAssertNil(r.read(1))
        var w = ChainCursor(memory: memory, buffers: c.writable)
        XCTAssertEqual(w.write([9, 9, 9]), 3)
        XCTAssertEqual(try memory.readBytes(at: 0x43000, count: 1), [9])
        XCTAssertEqual(w.segments(3)?.map(\.count), [3])
        XCTAssertNil(w.segments(1))
    }

    func testEventIndexSuppressesInterruptsAndNotifications() throws {
        queue.eventIndex = true
        driver.eventIndex = true
        // Driver asks for an interrupt only after 3 used entries (used_event = 2).
        try memory.store(UInt16(2), at: driver.avail + 4 + 2 * 16)
        var interrupts = 0
        for _ in 0..<4 {
            try driver.add([.init(address: 0x50000, length: 8, writable: true)])
            let c = try XCTUnwrap(try queue.pop(memory))
            try queue.pushUsed(memory, head: c.head, length: 8)
            if try queue.needsInterrupt(memory) { interrupts += 1 }
        }
        // The first check always signals (nothing signalled yet), then only when used crosses 2 -> 3.
        XCTAssertEqual(interrupts, 2)
        // Device side: avail_event tells the driver when to kick.
        XCTAssertFalse(try queue.setNotification(memory, enabled: true))
        let old = driver.availIdx
        try driver.add([.init(address: 0x50000, length: 8, writable: true)])
        XCTAssertTrue(try driver.kickNeeded(oldAvail: old))
        let old2 = driver.availIdx
        try driver.add([.init(address: 0x50000, length: 8, writable: true)])
        XCTAssertFalse(try driver.kickNeeded(oldAvail: old2), "device has not caught up: no kick")
        XCTAssertEqual(SplitVirtqueue.needEvent(0xFFFF, new: 1, old: 0xFFFE), true)
        XCTAssertEqual(SplitVirtqueue.needEvent(5, new: 5, old: 4), false)
    }

    func testNoInterruptFlagWithoutEventIndex() throws {
        try driver.setNoInterrupt(true)
        try driver.add([.init(address: 0x50000, length: 8, writable: true)])
        let c = try XCTUnwrap(try queue.pop(memory))
        try queue.pushUsed(memory, head: c.head, length: 0)
        XCTAssertFalse(try queue.needsInterrupt(memory))
        try queue.setNotification(memory, enabled: false)
        XCTAssertEqual(try memory.load(UInt16.self, at: driver.used), 1)
        XCTAssertFalse(try queue.setNotification(memory, enabled: true))
        XCTAssertEqual(try memory.load(UInt16.self, at: driver.used), 0)
    }

    // MARK: hostile drivers

    func writeRaw(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16, table: UInt64? = nil) throws {
        let at = (table ?? driver.desc) + 16 * UInt64(i)
        try memory.store(address, at: at); try memory.store(length, at: at + 8)
        try memory.store(flags, at: at + 12); try memory.store(next, at: at + 14)
    }

    func publish(_ head: UInt16) throws {
        try memory.store(head, at: driver.avail + 4 + 2 * UInt64(driver.availIdx % 16))
        driver.availIdx &+= 1
        try memory.store(driver.availIdx, at: driver.avail + 2)
    }

    func expect(_ error: VirtqueueError, line: UInt = #line) {
        XCTAssertThrowsError(try queue.pop(memory), line: line) { XCTAssertEqual($0 as? VirtqueueError, error, line: line) }
    }

    func testLoopIsAnErrorNotAHang() throws {
        try writeRaw(0, address: 0x20000, length: 4, flags: 1, next: 1)
        try writeRaw(1, address: 0x20000, length: 4, flags: 1, next: 0)
        try publish(0)
        expect(.chainTooLong)
    }

    func testMalformedChains() throws {
        try writeRaw(0, address: 0x20000, length: 4, flags: 1, next: 99); try publish(0)
        expect(.descriptorOutOfRange(99))
        try writeRaw(0, address: 0xFFFF_FFFF_FFFF_FFF0, length: 0x20, flags: 0, next: 0); try publish(0)
        expect(.bufferNotInRAM(address: 0xFFFF_FFFF_FFFF_FFF0, length: 0x20))
        try writeRaw(0, address: 0xFF_0000, length: 0x2_0000, flags: 0, next: 0); try publish(0)
        expect(.bufferNotInRAM(address: 0xFF_0000, length: 0x2_0000))
        try writeRaw(0, address: 0x20000, length: 4, flags: 3, next: 1)
        try writeRaw(1, address: 0x20000, length: 4, flags: 0, next: 0); try publish(0)
        expect(.readableAfterWritable)
        try publish(40)
        expect(.headOutOfRange(40))
        // Indirect: zero length, odd length, nested, with NEXT, table outside RAM, loop inside.
        try writeRaw(0, address: 0x60000, length: 0, flags: 4, next: 0); try publish(0)
        expect(.badIndirectLength(0))
        try writeRaw(0, address: 0x60000, length: 17, flags: 4, next: 0); try publish(0)
        expect(.badIndirectLength(17))
        try writeRaw(0, address: 0x60000, length: 32, flags: 4 | 1, next: 1); try publish(0)
        expect(.indirectWithNext)
        try writeRaw(0, address: 0x60000, length: 32, flags: 4, next: 0)
        try writeRaw(0, address: 0x70000, length: 16, flags: 4, next: 0, table: 0x60000); try publish(0)
        expect(.nestedIndirect)
        try writeRaw(0, address: 0xFFFF_0000, length: 32, flags: 4, next: 0); try publish(0)
        expect(.bufferNotInRAM(address: 0xFFFF_0000, length: 32))
        try writeRaw(0, address: 0x60000, length: 32, flags: 4, next: 0)
        try writeRaw(0, address: 0x20000, length: 4, flags: 1, next: 1, table: 0x60000)
        try writeRaw(1, address: 0x20000, length: 4, flags: 1, next: 0, table: 0x60000); try publish(0)
        expect(.chainTooLong)
        try writeRaw(0, address: 0x60000, length: 16 * 2000, flags: 4, next: 0); try publish(0)
        expect(.badIndirectLength(32000))
    }

    func testAvailIndexJumpAndBadRings() throws {
        try memory.store(UInt16(100), at: driver.avail + 2)
        expect(.availIndexJumped(from: 0, to: 100))
        queue.driverArea = 0xFF_FFFE
        XCTAssertThrowsError(try queue.validate(memory))
        queue.driverArea = driver.avail
        queue.descriptorTable = driver.desc + 8
        XCTAssertThrowsError(try queue.validate(memory)) { XCTAssertEqual($0 as? VirtqueueError, .misalignedRing(driver.desc + 8)) }
        queue.deviceArea = UInt64.max - 3
        queue.descriptorTable = driver.desc
        XCTAssertThrowsError(try queue.validate(memory))
    }

    /// Random descriptor tables (random addresses near and outside RAM, lengths, flags, next
    /// links, indirect tables): every pop either returns a chain whose buffers are all in RAM
    /// or throws; it never traps and never runs longer than the tables allow.
    func testRandomHostileTables() throws {
        var rng = SystemRandomNumberGenerator()
        let ramSize: UInt64 = 16 << 20
        for round in 0..<3000 {
            queue.reset()
            queue.descriptorTable = driver.desc; queue.driverArea = driver.avail; queue.deviceArea = driver.used
            queue.indirectDescriptors = Bool.random(using: &rng)
            queue.eventIndex = Bool.random(using: &rng)
            queue.isReady = true
            func randomAddress() -> UInt64 {
                switch UInt8.random(in: 0..<4, using: &rng) {
                case 0: return UInt64.random(in: 0..<ramSize, using: &rng)
                case 1: return UInt64.max &- UInt64.random(in: 0..<64, using: &rng)
                case 2: return ramSize &- UInt64.random(in: 0..<64, using: &rng)
                default: return 0x60000 + 16 * UInt64.random(in: 0..<8, using: &rng)
                }
            }
            for table in [driver.desc, 0x60000] {
                for i in 0..<UInt16(16) {
                    let length: UInt32 = Bool.random(using: &rng) ? UInt32.random(in: 0..<256, using: &rng) : UInt32.random(in: 0...UInt32.max, using: &rng)
                    try writeRaw(i, address: randomAddress(), length: length, flags: UInt16.random(in: 0..<8, using: &rng),
                                 next: UInt16.random(in: 0..<20, using: &rng), table: table)
                }
            }
            for k in 0..<16 { try memory.store(UInt16.random(in: 0..<20, using: &rng), at: driver.avail + 4 + 2 * UInt64(k)) }
            try memory.store(UInt16.random(in: 0...UInt16.max, using: &rng), at: driver.avail + 2)
            for _ in 0..<20 {
                do {
                    guard let c = try queue.pop(memory) else { break }
                    XCTAssertLessThanOrEqual(c.buffers.count, SplitVirtqueue.maxIndirectDescriptors, "round \(round)")
                    for b in c.buffers { XCTAssertNotNil(memory.hostPointer(b.address, length: UInt64(b.length))) }
                    try queue.pushUsed(memory, head: c.head, length: UInt32.random(in: 0...UInt32.max, using: &rng))
                    _ = try queue.needsInterrupt(memory)
                } catch is VirtqueueError {
                    break
                }
            }
        }
    }
}
