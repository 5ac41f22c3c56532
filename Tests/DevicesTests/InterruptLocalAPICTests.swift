import Foundation
import XCTest
@testable import Devices

final class InterruptLocalAPICTests: XCTestCase {
    func testPowerOnState() throws {
        let r = try InterruptRig(cpus: 2)
        let a = r.apics[0], b = r.apics[1]
        XCTAssertEqual(a.readMSR(0x1B), 0xFEE0_0900)        // BSP | EN
        XCTAssertEqual(b.readMSR(0x1B), 0xFEE0_0800)
        XCTAssertEqual(a.read32(APICReg.version), 0x0005_0014)
        XCTAssertEqual(b.read32(APICReg.id), 1 << 24)
        XCTAssertEqual(a.read32(APICReg.svr), 0xFF)
        XCTAssertEqual(a.read32(APICReg.dfr), 0xFFFF_FFFF)
        XCTAssertEqual(a.read32(APICReg.lvtTimer), 0x10000)
        XCTAssertEqual(a.read32(APICReg.lvtLINT0), 0x700)     // BSP: virtual wire
        XCTAssertEqual(b.read32(APICReg.lvtLINT0), 0x10000)
        XCTAssertFalse(a.hasPendingEvent)
    }

    func testPICReachesBSPBeforeTheOSEnablesTheAPIC() throws {
        let r = try InterruptRig(cpus: 2)
        let pc = PCInterruptControllers(apicBus: r.bus)
        let m = pc.pic!.masterPorts
        m.write8(0, 0x11); m.write8(1, 0x08); m.write8(1, 0x04); m.write8(1, 0x01); m.write8(1, 0xFE)
        pc.setIRQ(0, level: true)
        XCTAssertTrue(r.apics[0].pendingEvents.contains(.interrupt))
        XCTAssertFalse(r.apics[1].hasPendingEvent)
        XCTAssertEqual(r.apics[0].acknowledgeInterrupt(), 0x08)
    }

    func testPendingFlagSeenByAnotherThread() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        final class Flag: @unchecked Sendable { var woken = false }
        let lock = NSCondition(), flag = Flag()
        a.wakeup = { lock.lock(); flag.woken = true; lock.signal(); lock.unlock() }
        let seen = expectation(description: "vCPU thread saw the event")
        let vcpu = Thread {
            // A halted vCPU: sleep until woken, then poll the lock-free flag.
            lock.lock()
            while !flag.woken { lock.wait() }
            lock.unlock()
            if a.pendingEvents.contains(.interrupt) { seen.fulfill() }
        }
        vcpu.start()
        lock.lock(); lock.unlock()
        a.selfIPI(0x44)
        wait(for: [seen], timeout: 5)
    }

    func testPriorityTPRAndEOI() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.selfIPI(0x41)
        a.selfIPI(0x52)
        XCTAssertTrue(a.pendingEvents.contains(.interrupt))
        XCTAssertTrue(a.bitSet(APICReg.irr, 0x52))
        // TPR class 5 blocks 0x52 but... both vectors' classes (4, 5) are <= 5: nothing deliverable.
        a.write32(APICReg.tpr, 0x50)
        XCTAssertFalse(a.pendingEvents.contains(.interrupt))
        XCTAssertNil(a.acknowledgeInterrupt())
        XCTAssertEqual(a.read32(APICReg.ppr), 0x50)
        a.write32(APICReg.tpr, 0x40)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x52)
        XCTAssertTrue(a.bitSet(APICReg.isr, 0x52))
        XCTAssertFalse(a.bitSet(APICReg.irr, 0x52))
        XCTAssertEqual(a.read32(APICReg.ppr), 0x50)           // ISR class 5 above TPR 4
        XCTAssertNil(a.acknowledgeInterrupt())                // 0x41 is below PPR
        a.write32(APICReg.eoi, 0)
        XCTAssertFalse(a.bitSet(APICReg.isr, 0x52))
        XCTAssertEqual(a.read32(APICReg.ppr), 0x40)
        XCTAssertNil(a.acknowledgeInterrupt())                // 0x41: class 4 not above TPR class 4
        a.write32(APICReg.tpr, 0)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x41)
        XCTAssertFalse(a.pendingEvents.contains(.interrupt))
        a.write32(APICReg.eoi, 0)
        XCTAssertEqual(a.read32(APICReg.ppr), 0)
    }

    func testNestedHigherClassPreempts() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.selfIPI(0x30)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x30)
        a.selfIPI(0x35)                                        // same class: waits
        XCTAssertNil(a.acknowledgeInterrupt())
        a.selfIPI(0x80)                                        // higher class: nests
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x80)
        a.write32(APICReg.eoi, 0)                              // EOI clears 0x80 (highest ISR)
        XCTAssertTrue(a.bitSet(APICReg.isr, 0x30))
        a.write32(APICReg.eoi, 0)
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x35)
    }

    func testSoftwareDisabledDropsFixedAndMasksLVT() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.selfIPI(0x40)                                        // SVR bit 8 clear
        XCTAssertFalse(a.bitSet(APICReg.irr, 0x40))
        a.write32(APICReg.lvtTimer, 0x30)
        XCTAssertEqual(a.read32(APICReg.lvtTimer), 0x10030)   // mask stays set
        a.enableForTest()
        a.write32(APICReg.lvtTimer, 0x30)
        XCTAssertEqual(a.read32(APICReg.lvtTimer), 0x30)
        a.write32(APICReg.svr, 0xFF)                          // disabling masks every LVT
        XCTAssertEqual(a.read32(APICReg.lvtTimer), 0x10030)
    }

    func testIllegalVectorsSetESR() throws {
        let r = try InterruptRig(cpus: 2)
        let a = r.apics[0], b = r.apics[1]
        a.enableForTest(); b.enableForTest()
        a.write32(APICReg.lvtError, 0xEE)
        a.write32(APICReg.icrHigh, 1 << 24)
        a.write32(APICReg.icrLow, 0x0000_0005)                // fixed vector 5 to APIC 1
        XCTAssertFalse(b.bitSet(APICReg.irr, 5))
        // ESR reads the value latched by the last write.
        XCTAssertEqual(a.read32(APICReg.esr), 0)
        a.write32(APICReg.esr, 0)
        XCTAssertEqual(a.read32(APICReg.esr), 0x20)           // send illegal vector
        XCTAssertEqual(a.acknowledgeInterrupt(), 0xEE)         // through the error LVT
        a.write32(APICReg.esr, 0)
        XCTAssertEqual(a.read32(APICReg.esr), 0)
        // A message arriving with an illegal vector (an MSI) is a receive error.
        r.bus.signalMSI(address: 0xFEE0_1000, data: 0x0A)
        b.write32(APICReg.esr, 0)
        XCTAssertEqual(b.read32(APICReg.esr), 0x40)
        // Reserved register offset: illegal register address; no trap.
        XCTAssertEqual(a.read32(0x2F0), 0)
        a.write32(APICReg.esr, 0)
        XCTAssertEqual(a.read32(APICReg.esr), 0x80)
    }

    func testLevelTriggeredEOIBroadcast() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        var eois: [UInt8] = []
        r.bus.levelTriggeredEOI = { eois.append($0) }
        r.bus.deliver(APICMessage(destination: 0, vector: 0x61, levelTriggered: true))
        XCTAssertTrue(a.bitSet(APICReg.tmr, 0x61))
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x61)
        a.write32(APICReg.eoi, 0)
        XCTAssertEqual(eois, [0x61])
        r.bus.deliver(APICMessage(destination: 0, vector: 0x62))
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x62)
        a.write32(APICReg.eoi, 0)
        XCTAssertEqual(eois, [0x61])                          // edge: no broadcast
    }

    func testWakeupHookFiresOnNewEvent() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        var wakes = 0
        a.wakeup = { wakes += 1 }
        a.selfIPI(0x40)
        XCTAssertEqual(wakes, 1)
        a.selfIPI(0x41)                                        // already pending: no new wake
        XCTAssertEqual(wakes, 1)
        r.bus.deliver(APICMessage(destination: 0, deliveryMode: .nmi, vector: 0))
        XCTAssertEqual(wakes, 2)
        XCTAssertTrue(a.takeNMI())
        XCTAssertFalse(a.takeNMI())
    }

    func testOddWidthsAndOffsetsNeverTrap() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        a.enableForTest()
        a.write32(APICReg.tpr, 0x37)
        XCTAssertEqual(a.read(APICReg.tpr, width: 1), 0x37)
        XCTAssertEqual(a.read(APICReg.tpr + 4, width: 4), 0)
        XCTAssertEqual(a.read(APICReg.version + 2, width: 1), 0x05)
        XCTAssertEqual(a.read(APICReg.tpr, width: 8), 0x37)
        a.write(APICReg.tpr, 0x99, width: 1)                  // narrow write: dropped
        a.write(APICReg.tpr + 1, 0x99, width: 4)              // misaligned: dropped
        XCTAssertEqual(a.read32(APICReg.tpr), 0x37)
        a.write(APICReg.tpr, 0xFFFF_FFFF_0000_0012, width: 8)
        XCTAssertEqual(a.read32(APICReg.tpr), 0x12)
        for off in stride(from: UInt64(0), to: 0x1010, by: 4) {
            for w in [1, 2, 4, 8] {
                _ = a.read(off, width: w)
                if off != APICReg.icrLow && off != APICReg.svr && off != 0xB0 && off != 0x20 { a.write(off, 0xFFFF_FFFF_FFFF_FFFF, width: w) }
            }
        }
        XCTAssertEqual(a.read32(APICReg.version), 0x0005_0014)
        XCTAssertEqual(a.read(0xFFFF_FFFF_FFFF_FFF0, width: 4), 0)
    }

    func testLINT0ExtINTFromPIC() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        let irq = PCInterruptControllers(apicBus: r.bus)
        // Linux: virtual wire, LINT0 ExtINT unmasked, LINT1 NMI.
        a.enableForTest()
        a.write32(APICReg.lvtLINT0, 0x700)
        a.write32(APICReg.lvtLINT1, 0x400)
        let master = irq.pic!.masterPorts
        for v: UInt8 in [0x11, 0x30, 0x04, 0x01] { if v == 0x11 { master.write8(0, v) } else { master.write8(1, v) } }
        master.write8(1, 0xFE)                               // only IRQ 0 unmasked
        irq.setIRQ(0, level: true)
        XCTAssertTrue(a.pendingEvents.contains(.interrupt))
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x30)
        XCTAssertFalse(a.pendingEvents.contains(.interrupt))
        // Masked LINT0: the PIC's INT no longer reaches the CPU.
        master.write8(0, 0x20)
        irq.setIRQ(0, level: false)
        a.write32(APICReg.lvtLINT0, 0x10700)
        irq.setIRQ(0, level: true)
        XCTAssertFalse(a.pendingEvents.contains(.interrupt))
        a.setLINT1(true)
        XCTAssertTrue(a.takeNMI())
    }

    func testAPICBaseMSRTransitions() throws {
        let r = try InterruptRig()
        let a = r.apics[0]
        XCTAssertFalse(a.writeMSR(0x1B, 0xFEE0_0500))         // EXTD without EN
        XCTAssertFalse(a.writeMSR(0x1B, 0xFEE0_0901))         // reserved bit 0
        XCTAssertFalse(a.writeMSR(0x1B, 1 << 60 | 0xFEE0_0900)) // above MAXPHYADDR
        XCTAssertNil(a.readMSR(0x802))                        // x2APIC MSRs #GP in xAPIC mode
        XCTAssertTrue(a.writeMSR(0x1B, 0xFEE0_0D00))          // -> x2APIC
        XCTAssertTrue(a.isX2APIC)
        XCTAssertFalse(a.isXAPICMMIOEnabled)
        XCTAssertFalse(a.writeMSR(0x1B, 0xFEE0_0900))         // x2APIC -> xAPIC is illegal
        XCTAssertTrue(a.writeMSR(0x1B, 0xFEE0_0000))          // -> disabled
        XCTAssertEqual(a.readMSR(0x1B), 0xFEE0_0100)          // BSP kept
        XCTAssertFalse(a.writeMSR(0x1B, 0xFEE0_0C00))         // disabled -> x2APIC is illegal
        XCTAssertTrue(a.writeMSR(0x1B, 0xFED0_0800))          // re-enable at another base
        XCTAssertEqual(a.mmioBase, 0xFED0_0000)
        XCTAssertEqual(a.read32(APICReg.svr), 0xFF)
    }

    func testX2APICRegistersAndSelfIPI() throws {
        let r = try InterruptRig(cpus: 18)
        let a = r.apics[17]
        XCTAssertTrue(a.writeMSR(0x1B, 0xFEE0_0C00))
        XCTAssertEqual(a.readMSR(0x802), 17)                   // full 32-bit ID
        XCTAssertEqual(a.readMSR(0x80D), (1 << 16) | (1 << 1)) // cluster 1, bit 1
        XCTAssertEqual(a.readMSR(0x803), 0x0005_0014)
        XCTAssertFalse(a.writeMSR(0x802, 5))                   // ID is read-only
        XCTAssertFalse(a.writeMSR(0x80D, 5))                   // LDR is read-only
        XCTAssertNil(a.readMSR(0x80E))                         // no DFR
        XCTAssertNil(a.readMSR(0x809))                         // no APR
        XCTAssertNil(a.readMSR(0x80B))                         // EOI write-only
        XCTAssertNil(a.readMSR(0x831))                         // no ICR high
        XCTAssertTrue(a.writeMSR(0x80F, 0x1FF))
        XCTAssertFalse(a.writeMSR(0x808, 0x100))               // TPR reserved bits
        XCTAssertTrue(a.writeMSR(0x808, 0x20))
        XCTAssertEqual(a.readMSR(0x808), 0x20)
        XCTAssertFalse(a.writeMSR(0x83F, 0x1_0040))            // self IPI reserved bits
        XCTAssertTrue(a.writeMSR(0x83F, 0x40))
        XCTAssertTrue(a.pendingEvents.contains(.interrupt))
        XCTAssertEqual(a.acknowledgeInterrupt(), 0x40)
        XCTAssertFalse(a.writeMSR(0x80B, 1))                   // EOI must be 0
        XCTAssertTrue(a.writeMSR(0x80B, 0))
        XCTAssertEqual(a.readMSR(0x810 + 2), 0)                // ISR word 2 clear again
        XCTAssertFalse(a.writeMSR(0x828, 1))                   // ESR must be written 0
        XCTAssertFalse(a.writeMSR(0x830, 1 << 13))             // ICR reserved bit
        XCTAssertFalse(a.writeMSR(0x80F, 1 << 40))             // upper half must be 0
        // MMIO page does not decode in x2APIC mode.
        XCTAssertEqual(a.read32(APICReg.version), 0)
    }

    func testX2APICICRPhysicalAndClusterIPIs() throws {
        let r = try InterruptRig(cpus: 20)
        for a in r.apics {
            XCTAssertTrue(a.writeMSR(0x1B, 0xFEE0_0C00 | (a.index == 0 ? 0x100 : 0)))
            XCTAssertTrue(a.writeMSR(0x80F, 0x1FF))
        }
        let src = r.apics[0]
        XCTAssertTrue(src.writeMSR(0x830, UInt64(19) << 32 | 0x50))           // physical to 19
        XCTAssertEqual(r.apics[19].acknowledgeInterrupt(), 0x50)
        XCTAssertEqual(src.readMSR(0x830), UInt64(19) << 32 | 0x50)
        // Logical cluster 1 (IDs 16-31), members 16 and 18.
        XCTAssertTrue(src.writeMSR(0x830, UInt64(1 << 16 | 0b101) << 32 | 0x800 | 0x51))
        XCTAssertEqual(r.apics[16].acknowledgeInterrupt(), 0x51)
        XCTAssertEqual(r.apics[18].acknowledgeInterrupt(), 0x51)
        XCTAssertNil(r.apics[17].acknowledgeInterrupt())
        XCTAssertNil(r.apics[2].acknowledgeInterrupt())
    }

    func testShorthands() throws {
        let r = try InterruptRig(cpus: 3)
        for a in r.apics { a.enableForTest() }
        let src = r.apics[1]
        src.write32(APICReg.icrLow, 0x4_0060)                 // self
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, 0x60, nil])
        src.write32(APICReg.icrLow, 0x8_0061)                 // all including self
        XCTAssertEqual(r.apics.map { $0.take() }, [0x61, 0x61, 0x61])
        src.write32(APICReg.icrLow, 0xC_0062)                 // all excluding self
        XCTAssertEqual(r.apics.map { $0.take() }, [0x62, nil, 0x62])
        XCTAssertEqual(src.read32(APICReg.icrLow) & 0x1000, 0) // delivery status idle
    }

    func testPhysicalAndLogicalDestinations() throws {
        let r = try InterruptRig(cpus: 4)
        for a in r.apics { a.enableForTest() }
        let src = r.apics[0]
        src.write32(APICReg.icrHigh, 2 << 24)
        src.write32(APICReg.icrLow, 0x70)                     // physical 2
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, nil, 0x70, nil])
        src.write32(APICReg.icrHigh, 0xFF << 24)
        src.write32(APICReg.icrLow, 0x71)                     // physical broadcast
        XCTAssertEqual(r.apics.map { $0.take() }, [0x71, 0x71, 0x71, 0x71])
        // Flat logical: LDR bit per CPU, as Linux's default_init_apic_ldr.
        for a in r.apics { a.write32(APICReg.ldr, UInt32(1 << a.index) << 24) }
        src.write32(APICReg.icrHigh, 0b1010 << 24)
        src.write32(APICReg.icrLow, 0x800 | 0x72)
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, 0x72, nil, 0x72])
        // Cluster logical: DFR model 0, LDR = cluster << 4 | member bit.
        for a in r.apics {
            a.write32(APICReg.dfr, 0x0FFF_FFFF)
            a.write32(APICReg.ldr, UInt32((a.index / 2) << 4 | 1 << (a.index % 2)) << 24)
        }
        src.write32(APICReg.icrHigh, 0x13 << 24)              // cluster 1, both members
        src.write32(APICReg.icrLow, 0x800 | 0x73)
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, nil, 0x73, 0x73])
    }

    func testLowestPriorityPicksLowestArbitrationPriority() throws {
        let r = try InterruptRig(cpus: 3)
        for a in r.apics { a.enableForTest(); a.write32(APICReg.ldr, 0x0100_0000 << UInt32(a.index)) }
        r.apics[0].write32(APICReg.tpr, 0x40)
        r.apics[1].write32(APICReg.tpr, 0x20)
        r.apics[2].write32(APICReg.tpr, 0x30)
        r.apics[0].write32(APICReg.icrHigh, 0x07 << 24)
        r.apics[0].write32(APICReg.icrLow, 0x900 | 0x74)      // lowest priority, logical
        XCTAssertEqual(r.apics.map { $0.take() }, [nil, 0x74, nil])
    }

    func testINITAndSIPI() throws {
        let r = try InterruptRig(cpus: 2)
        let bsp = r.apics[0], ap = r.apics[1]
        bsp.enableForTest(); ap.enableForTest()
        ap.write32(APICReg.tpr, 0x30)
        bsp.write32(APICReg.icrHigh, 1 << 24)
        bsp.write32(APICReg.icrLow, 0xC500)                   // INIT assert, level
        XCTAssertTrue(ap.pendingEvents.contains(.initSignal))
        bsp.write32(APICReg.icrLow, 0x8500)                   // INIT de-assert: no-op
        XCTAssertTrue(ap.takeINIT())
        XCTAssertFalse(ap.takeINIT())
        XCTAssertEqual(ap.read32(APICReg.tpr), 0)             // INIT reset the registers
        XCTAssertEqual(ap.read32(APICReg.id), 1 << 24)        // but kept the ID
        bsp.write32(APICReg.icrLow, 0x0600 | 0x9A)            // SIPI vector 0x9A
        XCTAssertTrue(ap.pendingEvents.contains(.startup))
        XCTAssertEqual(ap.takeSIPI(), 0x9A)
        XCTAssertNil(ap.takeSIPI())
        XCTAssertFalse(ap.hasPendingEvent)
        XCTAssertFalse(bsp.hasPendingEvent)
    }
}
