import XCTest
@testable import Devices

final class InterruptIOAPICTests: XCTestCase {
    func select(_ io: IOAPIC, _ reg: UInt32) { io.write32(0x00, reg) }
    func writeEntry(_ io: IOAPIC, pin: Int, low: UInt32, high: UInt32 = 0) {
        select(io, 0x11 + UInt32(pin) * 2); io.write32(0x10, high)
        select(io, 0x10 + UInt32(pin) * 2); io.write32(0x10, low)
    }

    func testIdentificationRegisters() throws {
        let r = try InterruptRig()
        let io = IOAPIC(bus: r.bus)
        select(io, 1)
        XCTAssertEqual(io.read32(0x10), 0x0017_0020)
        select(io, 0); io.write32(0x10, 0x0A00_0000)
        XCTAssertEqual(io.read32(0x10), 0x0A00_0000)
        select(io, 2)
        XCTAssertEqual(io.read32(0x10), 0x0A00_0000)
        select(io, 0x10)
        XCTAssertEqual(io.read32(0x10), 0x10000)              // masked at reset
        XCTAssertEqual(io.read32(0x00), 0x10)
    }

    func testEdgeLatchesRisingEdgeAndMasking() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        let io = IOAPIC(bus: r.bus)
        writeEntry(io, pin: 2, low: 0x10030)                  // masked, edge, vector 0x30
        io.setIRQ(2, level: true)
        XCTAssertFalse(a.hasPendingEvent)
        writeEntry(io, pin: 2, low: 0x30)                     // unmask: the latched edge goes out
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x30)
        a.write32(APICReg.eoi, 0)
        io.setIRQ(2, level: true)                             // still high: no new edge
        XCTAssertFalse(a.hasPendingEvent)
        io.setIRQ(2, level: false)
        io.setIRQ(2, level: true)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x30)
        select(io, 0x14)
        XCTAssertEqual(io.read32(0x10) & (1 << 14), 0)        // no remote IRR on edge pins
    }

    func testLevelRemoteIRRAndEOIRedelivery() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        let io = IOAPIC(bus: r.bus)
        r.bus.levelTriggeredEOI = { [unowned io] v in io.endOfInterrupt(vector: v) }
        writeEntry(io, pin: 11, low: 0xA041)                  // level, active low, vector 0x41
        io.setIRQ(11, level: true)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x41)
        select(io, 0x10 + 22)
        XCTAssertNotEqual(io.read32(0x10) & (1 << 14), 0)     // remote IRR
        XCTAssertTrue(a.bitSet(APICReg.tmr, 0x41))
        io.setIRQ(11, level: true)                            // no second delivery before EOI
        XCTAssertFalse(a.hasPendingEvent)
        a.write32(APICReg.eoi, 0)                             // broadcast: still asserted -> again
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x41)
        io.setIRQ(11, level: false)
        a.write32(APICReg.eoi, 0)
        XCTAssertFalse(a.hasPendingEvent)
        select(io, 0x10 + 22)
        XCTAssertEqual(io.read32(0x10) & (1 << 14), 0)
        // The version-0x20 EOI register does the same.
        io.setIRQ(11, level: true)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x41)
        io.write32(0x40, 0x41)
        XCTAssertTrue(a.bitSet(APICReg.irr, 0x41))            // re-delivered
        // Remote IRR is read-only to the guest.
        writeEntry(io, pin: 11, low: 0x1A041)
        select(io, 0x10 + 22)
        XCTAssertEqual(io.read32(0x10) & 0x1FFFF, 0x1E041)
    }

    func testDestinationsAndDeliveryModes() throws {
        let r = try InterruptRig(cpus: 2)
        for a in r.apics { a.enableForTest(); a.write32(APICReg.ldr, UInt32(1 << a.index) << 24) }
        let io = IOAPIC(bus: r.bus)
        writeEntry(io, pin: 4, low: 0x50, high: 1 << 24)      // physical CPU 1
        io.setIRQ(4, level: true)
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, 0x50])
        writeEntry(io, pin: 5, low: 0x800 | 0x51, high: 3 << 24)  // logical, both
        io.setIRQ(5, level: true)
        XCTAssertEqual(r.apics.map { $0.take() }, [0x51, 0x51])
        writeEntry(io, pin: 6, low: 0x400, high: 0)           // NMI to CPU 0
        io.setIRQ(6, level: true)
        XCTAssertTrue(r.apics[0].takeNMI())
        writeEntry(io, pin: 7, low: 0x700, high: 0)           // ExtINT to CPU 0
        io.setIRQ(7, level: true)
        XCTAssertTrue(r.apics[0].pendingEvents.contains(.interrupt))
    }

    func testHostileAccesses() throws {
        let r = try InterruptRig()
        let io = IOAPIC(bus: r.bus)
        for reg: UInt32 in [0, 1, 2, 3, 0x0F, 0x3F, 0x40, 0xFF, 0xFFFF_FFFF] {
            select(io, reg)
            _ = io.read32(0x10)
            io.write32(0x10, 0xFFFF_FFFF)
        }
        for off in stride(from: UInt64(0), to: 0x1000, by: 1) {
            for w in [1, 2, 4, 8] { _ = io.read(off, width: w); io.write(off, 0xFFFF_FFFF_FFFF_FFFF, width: w) }
        }
        io.setIRQ(-1, level: true)
        io.setIRQ(24, level: true)
        io.setIRQ(Int.max, level: true)
        select(io, 1)
        XCTAssertEqual(io.read32(0x10), 0x0017_0020)
    }

    func testPCRoutingAndMSI() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        let pc = PCInterruptControllers(apicBus: r.bus)
        pc.pic!.masterPorts.write8(1, 0xFF)                    // Linux masks the 8259s with an IOAPIC
        pc.pic!.slavePorts.write8(1, 0xFF)
        writeEntry(pc.ioapic, pin: 2, low: 0x30)
        pc.setIRQ(0, level: true)                             // the PIT: GSI 0 -> pin 2
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x30)
        a.write32(APICReg.eoi, 0)
        writeEntry(pc.ioapic, pin: 20, low: 0xA060)
        pc.setIRQ(20, level: true)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x60)
        a.write32(APICReg.eoi, 0)                             // through the bus to the IOAPIC
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x60)        // still asserted
        pc.setIRQ(20, level: false)
        a.write32(APICReg.eoi, 0)
        pc.setIRQ(UInt32.max, level: true)
        pc.signalMSI(address: 0xFEE0_0000, data: 0x4065)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x65)
        pc.signalMSI(address: 0xFED0_0000, data: 0x66)        // not the MSI window: dropped
        XCTAssertFalse(a.hasPendingEvent)
    }
}
