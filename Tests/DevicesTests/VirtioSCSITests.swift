@testable import Devices
import Memory
import SCSI
import XCTest

final class VirtioSCSITests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    var msi = RecordingMSIController()
    var disk: MemoryBlockDevice!
    var drv: TestVirtioPCIDriver!

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
        disk = MemoryBlockDevice(size: 1 << 20)
        let target = SCSITarget()
        target.attach(SCSILogicalUnit(backend: disk), lun: 0)
        let target3 = SCSITarget()
        target3.attach(SCSILogicalUnit(backend: MemoryBlockDevice(size: 4096)), lun: 300)
        var c = VirtioSCSI.Configuration(); c.queueCount = 2; c.queueSize = 64
        let dev = VirtioPCIDevice(device: VirtioSCSI(targets: [0: target, 3: target3], configuration: c, executor: InlineExecutor()),
                                  memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
    }

    func probe() throws {
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: 5)
        try drv.setUpQueues(memory: memory, count: 4, msix: true)
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
    }

    struct Response { var senseLength: UInt32; var residual: UInt32; var status: UInt8; var response: UInt8; var sense: [UInt8]; var used: UInt32 }

    /// One command on request queue 2: header at 0x200000, data-out at 0x201000, response at
    /// 0x210000, data-in at 0x220000.
    func command(lun: [UInt8] = [1, 0, 0x40, 0], cdb: [UInt8], dataOut: [UInt8] = [], dataIn: Int = 0, headerLength: Int = 51) throws -> Response {
        var header = [UInt8](repeating: 0, count: 51)
        header.replaceSubrange(0..<lun.count, with: lun)
        header.replaceSubrange(19..<19 + cdb.count, with: cdb)
        try memory.write(header, at: 0x200000)
        try memory.write([UInt8](repeating: 0xEE, count: 108), at: 0x210000)
        var bufs: [TestVirtqueueDriver.Buf] = [.init(address: 0x200000, length: UInt32(headerLength), writable: false)]
        if !dataOut.isEmpty {
            try memory.write(dataOut, at: 0x201000)
            bufs.append(.init(address: 0x201000, length: UInt32(dataOut.count), writable: false))
        }
        bufs.append(.init(address: 0x210000, length: 108, writable: true))
        if dataIn > 0 { bufs.append(.init(address: 0x220000, length: UInt32(dataIn), writable: true)) }
        let q = drv.queues[2]
        try q.add(bufs)
        drv.kick(2)
        let used = try q.harvest()
        let r = try memory.readBytes(at: 0x210000, count: 108)
        let senseLength = UInt32(r[0]) | UInt32(r[1]) << 8
        return Response(senseLength: senseLength, residual: UInt32(r[4]) | UInt32(r[5]) << 8 | UInt32(r[6]) << 16,
                        status: r[10], response: r[11], sense: Array(r[12..<12 + Int(min(senseLength, 96))]), used: used.first?.1 ?? 0)
    }

    func testConfigSpace() throws {
        XCTAssertEqual(drv.cfg(0, 4), 0x1048_1AF4, "virtio device 8")
        XCTAssertEqual(drv.cfg(0x09, 3), 0x01_0000, "SCSI storage controller")
        XCTAssertEqual(drv.r(0x12, 2), 4, "control, event and two request queues")
        drv.w(0x00, 4, 0)
        XCTAssertEqual(drv.r(0x04, 4) & 0x7, 0x4, "CHANGE only: no INOUT, no HOTPLUG")
        let c = drv.deviceCfg
        XCTAssertEqual(mmio.inp(c, width: 4), 2, "num_queues")
        XCTAssertEqual(mmio.inp(c + 4, width: 4), 62, "seg_max")
        XCTAssertEqual(mmio.inp(c + 20, width: 4), 96, "sense_size")
        XCTAssertEqual(mmio.inp(c + 24, width: 4), 32, "cdb_size")
        XCTAssertEqual(mmio.inp(c + 30, width: 2), 3, "max_target")
        XCTAssertEqual(mmio.inp(c + 32, width: 4), 16383, "max_lun")
        mmio.out(c + 24, width: 4, 16)
        XCTAssertEqual(mmio.inp(c + 24, width: 4), 16, "the driver may set cdb_size")
        mmio.out(c + 24, width: 4, 100_000)
        XCTAssertEqual(mmio.inp(c + 24, width: 4), 16, "an impossible cdb_size is ignored")
        mmio.out(c + 0, width: 4, 9)
        XCTAssertEqual(mmio.inp(c, width: 4), 2, "num_queues is read-only")
    }

    func testInquiryReadWriteAndSense() throws {
        try probe()
        var r = try command(cdb: [0x12, 0, 0, 0, 96, 0], dataIn: 96)
        XCTAssertEqual(r.response, 0); XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.residual, 60); XCTAssertEqual(r.used, 108 + 36)
        XCTAssertEqual(String(decoding: try memory.readBytes(at: 0x220008, count: 8), as: UTF8.self), "KEEL    ")
        // WRITE(10) then READ(10) through the queues.
        let payload = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 31 + 1) }
        r = try command(cdb: [0x2A, 0, 0, 0, 0, 4, 0, 0, 2, 0], dataOut: payload)
        XCTAssertEqual(r.response, 0); XCTAssertEqual(r.status, 0); XCTAssertEqual(r.residual, 0)
        XCTAssertEqual(Array(disk.bytes[2048..<3072]), payload)
        r = try command(cdb: [0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0], dataIn: 1024)
        XCTAssertEqual(r.status, 0); XCTAssertEqual(r.used, 108 + 1024)
        XCTAssertEqual(try memory.readBytes(at: 0x220000, count: 1024), payload)
        // Past the end: CHECK CONDITION with fixed-format sense, LBA OUT OF RANGE.
        r = try command(cdb: [0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0], dataIn: 512)
        XCTAssertEqual(r.response, 0); XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.senseLength, 18); XCTAssertEqual(r.sense[0], 0x70); XCTAssertEqual(r.sense[2], 5); XCTAssertEqual(r.sense[12], 0x21)
        XCTAssertEqual(r.residual, 512)
        // A transfer longer than the buffers: OVERRUN, nothing written.
        r = try command(cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 4, 0], dataIn: 1024)
        XCTAssertEqual(r.response, 1)
        // Flat-space LUN 300 on target 3; a missing LUN; a missing target.
        r = try command(lun: [1, 3, 0x41, 0x2C], cdb: [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], dataIn: 8)
        XCTAssertEqual(r.status, 0); XCTAssertEqual(try memory.readBytes(at: 0x220000, count: 8), [0, 0, 0, 7, 0, 0, 2, 0])
        r = try command(lun: [1, 3, 0x40, 1], cdb: [0x00, 0, 0, 0, 0, 0])
        XCTAssertEqual(r.status, 2); XCTAssertEqual(r.sense[12], 0x25)
        r = try command(lun: [1, 1, 0x40, 0], cdb: [0x12, 0, 0, 0, 96, 0], dataIn: 96)
        XCTAssertEqual(r.response, 3, "BAD_TARGET")
        r = try command(lun: [2, 0, 0x40, 0], cdb: [0x00, 0, 0, 0, 0, 0])
        XCTAssertEqual(r.response, 3, "the first LUN byte must be 1")
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, 0)
    }

    func testControlQueue() throws {
        try probe()
        // TMF LOGICAL UNIT RESET on target 0, then an AN query, then an unknown TMF subtype.
        func control(_ req: [UInt8], response: Int) throws -> [UInt8] {
            try memory.write(req, at: 0x230000)
            try memory.write([UInt8](repeating: 0xEE, count: response), at: 0x231000)
            let q = drv.queues[0]
            try q.add([.init(address: 0x230000, length: UInt32(req.count), writable: false),
                       .init(address: 0x231000, length: UInt32(response), writable: true)])
            drv.kick(0)
            _ = try q.harvest()
            return try memory.readBytes(at: 0x231000, count: response)
        }
        let lun: [UInt8] = [1, 0, 0x40, 0, 0, 0, 0, 0]
        XCTAssertEqual(try control([0, 0, 0, 0, 5, 0, 0, 0] + lun + [UInt8](repeating: 0, count: 8), response: 1), [0])
        XCTAssertEqual(try control([0, 0, 0, 0, 5, 0, 0, 0] + [1, 9, 0x40, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8), response: 1), [3])
        XCTAssertEqual(try control([0, 0, 0, 0, 99, 0, 0, 0] + lun + [UInt8](repeating: 0, count: 8), response: 1), [11])
        XCTAssertEqual(try control([1, 0, 0, 0] + lun + [0xFF, 0xFF, 0, 0], response: 5), [0, 0, 0, 0, 0])
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, 0)
        // A TMF shorter than its structure breaks the rules.
        _ = try control([0, 0, 0, 0, 5, 0], response: 1)
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, Virtio.statusNeedsReset)
    }

    func testShortHeaderNeedsReset() throws {
        try probe()
        _ = try command(cdb: [0x00], headerLength: 20)
        XCTAssertEqual(drv.status & Virtio.statusNeedsReset, Virtio.statusNeedsReset)
    }
}
