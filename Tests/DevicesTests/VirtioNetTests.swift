@testable import Devices
import Memory
import Net
import XCTest

final class VirtioNetTests: XCTestCase {
    let mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    typealias F = VirtioNetFeature

    // MARK: identity, features, configuration

    func testIdentityFeaturesAndConfig() throws {
        let h = try VirtioNetHarness(backends: [FakeNetBackend()])
        XCTAssertEqual(h.driver.cfg(0, 4), 0x1041_1AF4, "virtio-net is PCI device 0x1040 + 1")
        XCTAssertEqual(h.driver.cfg(8, 4) >> 8, 0x02_00_00, "class: Ethernet controller")
        let offered = h.net.deviceFeatures
        for f in [F.mac, F.status, F.mergeableRxBuffers, F.controlQueue, F.controlRx, F.controlMACAddress, F.guestAnnounce] {
            XCTAssertNotEqual(offered & f, 0, "feature 0x\(String(f, radix: 16)) must be offered")
        }
        XCTAssertEqual(offered & (F.checksum | F.guestChecksum | F.hostTSO4 | F.guestTSO4), 0,
                       "a backend without a vnet header gets no offloads")
        XCTAssertEqual(offered & F.multiqueue, 0, "one backend: no MQ")
        XCTAssertEqual(h.net.queueMaxSizes.count, 3)
        try h.start()
        XCTAssertEqual((0..<6).map { UInt8(h.config(UInt64($0), 1)) }, mac)
        XCTAssertEqual(h.config(6, 2), 1, "status: LINK_UP")
        XCTAssertEqual(h.config(8, 2), 1, "max_virtqueue_pairs")
        XCTAssertEqual(h.config(0x800, 4), 0, "past the structure reads 0")
    }

    func testOffloadsFollowTheBackendAndTheDriver() throws {
        let b = FakeNetBackend(vnetHeaderLength: 12, supportedOffloads: [.checksum, .tso4, .tso6, .tsoECN])
        let h = try VirtioNetHarness(backends: [b])
        let offered = h.net.deviceFeatures
        for f in [F.checksum, F.guestChecksum, F.hostTSO4, F.hostTSO6, F.hostECN, F.guestTSO4, F.guestTSO6, F.guestECN] {
            XCTAssertNotEqual(offered & f, 0, "feature 0x\(String(f, radix: 16)) must be offered")
        }
        XCTAssertEqual(offered & (F.hostUFO | F.guestUFO), 0, "UFO only when the backend has it")
        try h.start { $0 & ~(F.guestTSO6 | F.guestECN) }
        XCTAssertEqual(b.offloads, [.checksum, .tso4], "the backend is told what the driver accepted")
        h.driver.setStatus(0)
        XCTAssertEqual(b.offloads, [], "reset takes the offloads back")
    }

    func testMultiqueueOffersPairsAndPutsControlLast() throws {
        let backends = [FakeNetBackend(), FakeNetBackend(), FakeNetBackend()]
        let h = try VirtioNetHarness(backends: backends)
        XCTAssertNotEqual(h.net.deviceFeatures & F.multiqueue, 0)
        XCTAssertEqual(h.net.queueMaxSizes.count, 7)
        try h.start(queues: 7)
        XCTAssertEqual(h.config(8, 2), 3)
        XCTAssertEqual(try h.control(4, 0, [3, 0], queue: 6), 0, "VQ_PAIRS_SET 3 on the last queue")
        XCTAssertEqual(h.net.activePairs, 3)
        XCTAssertEqual(try h.control(4, 0, [4, 0], queue: 6), 1, "4 pairs is more than the device has")
        XCTAssertEqual(try h.control(4, 0, [0, 0], queue: 6), 1, "0 pairs")
        XCTAssertEqual(h.net.activePairs, 3)
        // Transmit on the third pair reaches the third backend.
        try h.transmit(ethernetFrame(to: mac, length: 60), queue: 5)
        h.driver.kick(5)
        XCTAssertEqual(backends[2].sent.count, 1)
        XCTAssertEqual(backends[0].sent.count, 0)
    }

    func testWithoutMQTheControlQueueIsQueue2() throws {
        let h = try VirtioNetHarness(backends: [FakeNetBackend(), FakeNetBackend()])
        try h.start(queues: 5) { $0 & ~F.multiqueue }
        XCTAssertEqual(try h.control(0, 0, [0], queue: 2), 0)
        XCTAssertFalse(h.net.filter.promiscuous)
        // A frame from the second backend lands in the only receive queue the driver uses.
        let (_, a) = try h.postReceive(2048)
        h.driver.kick(0)
        let frame = ethernetFrame(to: mac, length: 100)
        XCTAssertTrue(h.backends[1].inject(frame))
        XCTAssertEqual(try h.driver.queues[0].harvest().first?.1, 112)
        XCTAssertEqual(try h.memory.readBytes(at: a + 12, count: 100), frame)
    }

    // MARK: transmit

    func testTransmitStripsTheHeaderForAPlainBackend() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        let f1 = ethernetFrame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 342)
        let f2 = ethernetFrame(to: mac, length: 1514, seed: 7)
        try h.transmit(f1)
        try h.transmit(f2, split: 5)
        h.driver.kick(1)
        XCTAssertEqual(b.sent, [f1, f2])
        let used = try h.driver.queues[1].harvest()
        XCTAssertEqual(used.count, 2)
        XCTAssertTrue(used.allSatisfy { $0.1 == 0 })
    }

    func testTransmitKeepsTheHeaderForAVnetBackend() throws {
        let b = FakeNetBackend(vnetHeaderLength: 12, supportedOffloads: [.checksum])
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        let header: [UInt8] = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]
        let f = ethernetFrame(to: mac, length: 200)
        try h.transmit(f, header: header)
        h.driver.kick(1)
        XCTAssertEqual(b.sent, [header + f])
    }

    func testWouldBlockKeepsTheFrameAndResumesWhenWritable() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        b.blockSends = true
        let frames = (0..<3).map { ethernetFrame(to: mac, length: 60 + $0, seed: UInt8($0)) }
        for f in frames { try h.transmit(f) }
        h.driver.kick(1)
        XCTAssertEqual(b.sendAttempts, 1, "the queue waits after .wouldBlock instead of spinning")
        XCTAssertEqual(try h.driver.queues[1].harvest().count, 0, "nothing is completed while blocked")
        h.driver.kick(1)
        XCTAssertEqual(b.sent.count, 0)
        b.blockSends = false
        b.receiver?.backendWritable()
        XCTAssertEqual(b.sent, frames, "the held frame goes first, nothing lost or reordered")
        XCTAssertEqual(try h.driver.queues[1].harvest().count, 3)
    }

    func testMalformedTransmitChainsAreDropped() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        // Shorter than the header; then a writable-only chain; then a frame larger than any.
        try h.driver.queues[1].add([.init(address: try h.buffer(zeroes: 8), length: 8, writable: false)])
        try h.driver.queues[1].add([.init(address: try h.buffer(zeroes: 64), length: 64, writable: true)])
        let big = try h.buffer(zeroes: 70_000)
        try h.driver.queues[1].add([.init(address: big, length: 70_000, writable: false)])
        let good = ethernetFrame(to: mac, length: 64)
        try h.transmit(good)
        h.driver.kick(1)
        XCTAssertEqual(b.sent, [good])
        XCTAssertEqual(try h.driver.queues[1].harvest().count, 4, "bad chains still go back to the driver")
        XCTAssertEqual(h.transport.status & Virtio.statusNeedsReset, 0)
    }

    // MARK: receive

    func testReceiveWithoutMergeableBuffers() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start { $0 & ~F.mergeableRxBuffers }
        let (head, a) = try h.postReceive(1526)
        let (_, small) = try h.postReceive(64)
        h.driver.kick(0)
        let frame = ethernetFrame(to: mac, length: 1000)
        XCTAssertTrue(b.inject(frame))
        let used = try h.driver.queues[0].harvest()
        XCTAssertEqual(used.count, 1)
        XCTAssertEqual(used.first?.0, head)
        XCTAssertEqual(used.first?.1, 1012)
        XCTAssertEqual(try h.memory.readBytes(at: a, count: 12), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "zeroed header, num_buffers 1")
        XCTAssertEqual(try h.memory.readBytes(at: a + 12, count: 1000), frame)
        // The 64-byte buffer cannot hold 1000 bytes: the frame is dropped, the buffer kept.
        XCTAssertTrue(b.inject(frame))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 0)
        XCTAssertTrue(b.inject(ethernetFrame(to: mac, length: 40)))
        XCTAssertEqual(try h.driver.queues[0].harvest().first?.1, 52)
        XCTAssertEqual(try h.memory.readBytes(at: small + 10, count: 2), [1, 0])
    }

    func testReceiveWithMergeableBuffersSpansChains() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        XCTAssertNotEqual(h.features & F.mergeableRxBuffers, 0)
        var addresses: [UInt64] = []
        for _ in 0..<4 { addresses.append(try h.postReceive(1000).1) }
        h.driver.kick(0)
        let frame = ethernetFrame(to: mac, length: 2500)
        XCTAssertTrue(b.inject(frame))
        let used = try h.driver.queues[0].harvest()
        XCTAssertEqual(used.map(\.1), [1000, 1000, 512])
        XCTAssertEqual(try h.memory.readBytes(at: addresses[0] + 10, count: 2), [3, 0], "num_buffers")
        var got = try h.memory.readBytes(at: addresses[0] + 12, count: 988)
        got += try h.memory.readBytes(at: addresses[1], count: 1000)
        got += try h.memory.readBytes(at: addresses[2], count: 512)
        XCTAssertEqual(got, frame)
    }

    func testVnetHeaderFromTheBackendIsPassedAndSanitised() throws {
        let b = FakeNetBackend(vnetHeaderLength: 12, supportedOffloads: [.checksum, .tso4])
        let h = try VirtioNetHarness(backends: [b])
        try h.start { $0 & ~F.guestTSO4 }
        let (_, a) = try h.postReceive(4096)
        h.driver.kick(0)
        let frame = ethernetFrame(to: mac, length: 300)
        XCTAssertTrue(b.inject([1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0] + frame))
        XCTAssertEqual(try h.memory.readBytes(at: a, count: 12), [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0])
        XCTAssertEqual(try h.memory.readBytes(at: a + 12, count: 300), frame)
        // A TSO4 frame the driver did not accept is dropped, not handed over.
        XCTAssertTrue(b.inject([1, 1, 54, 0, 0xB4, 5, 34, 0, 16, 0, 0, 0] + frame))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 1)
    }

    func testNoReceiveBuffersDisablesTheBackendUntilTheDriverPostsSome() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        let frame = ethernetFrame(to: mac, length: 60)
        XCTAssertFalse(b.inject(frame), "no buffers: the backend keeps the frame")
        XCTAssertEqual(b.receiveEnabledChanges.last, false)
        XCTAssertFalse(b.receiveEnabled)
        let (_, a) = try h.postReceive(1526)
        XCTAssertTrue(try h.driver.queues[0].kickNeeded(oldAvail: 0), "the device asked to be kicked")
        h.driver.kick(0)
        XCTAssertTrue(b.receiveEnabled, "posting buffers switches receive back on")
        XCTAssertTrue(b.inject(frame))
        XCTAssertEqual(try h.memory.readBytes(at: a + 12, count: 60), frame)
    }

    func testReceiveBeforeDriverOKIsRefusedThenEnabledAtActivation() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        XCTAssertFalse(b.inject(ethernetFrame(to: mac, length: 60)))
        XCTAssertFalse(b.receiveEnabled)
        try h.start()
        XCTAssertTrue(b.receiveEnabled)
    }

    /// QMP stop: no chains taken either way; cont picks up what waited.
    func testPausedQueuesTakeNothingUntilResumed() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        let (_, a) = try h.postReceive(1526)
        h.driver.kick(0)
        h.transport.setQueuesPaused(true)
        let out = ethernetFrame(to: mac, length: 70), incoming = ethernetFrame(to: mac, length: 90)
        try h.transmit(out)
        h.driver.kick(1)
        XCTAssertEqual(b.sent.count, 0, "paused: the transmit queue is not read")
        XCTAssertFalse(b.inject(incoming), "paused: the frame stays with the backend")
        XCTAssertFalse(b.receiveEnabled)
        h.transport.setQueuesPaused(false)
        XCTAssertEqual(b.sent, [out])
        XCTAssertTrue(b.receiveEnabled, "resuming lets the backend offer its frame again")
        XCTAssertTrue(b.inject(incoming))
        XCTAssertEqual(try h.memory.readBytes(at: a + 12, count: 90), incoming)
    }

    // MARK: control queue

    func testReceiveFilterFromTheControlQueue() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        for _ in 0..<8 { _ = try h.postReceive(1526) }
        h.driver.kick(0)
        let other: [UInt8] = [0x52, 0x54, 0, 0xAA, 0xBB, 0xCC]
        let multicast: [UInt8] = [0x01, 0x00, 0x5E, 0, 0, 1]
        XCTAssertTrue(b.inject(ethernetFrame(to: other, length: 60)))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 1, "promiscuous after reset")
        XCTAssertEqual(try h.control(0, 0, [0]), 0, "PROMISC off")
        XCTAssertTrue(b.inject(ethernetFrame(to: other, length: 60)))
        XCTAssertTrue(b.inject(ethernetFrame(to: multicast, length: 60)))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 0, "another station's and an unlisted multicast are filtered")
        XCTAssertTrue(b.inject(ethernetFrame(to: mac, length: 60)))
        XCTAssertTrue(b.inject(ethernetFrame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 60)))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 2, "own address and broadcast pass")
        // MAC table: one unicast, one multicast.
        XCTAssertEqual(try h.control(1, 0, [1, 0, 0, 0] + other + [1, 0, 0, 0] + multicast), 0)
        XCTAssertTrue(b.inject(ethernetFrame(to: other, length: 60)))
        XCTAssertTrue(b.inject(ethernetFrame(to: multicast, length: 60)))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 2)
        XCTAssertEqual(try h.control(0, 5, [1]), 0, "NOBCAST")
        XCTAssertTrue(b.inject(ethernetFrame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 60)))
        XCTAssertEqual(try h.driver.queues[0].harvest().count, 0)
        // MAC address set: the config space follows.
        XCTAssertEqual(try h.control(1, 1, other), 0)
        XCTAssertEqual((0..<6).map { UInt8(h.config(UInt64($0), 1)) }, other)
    }

    func testMalformedControlCommandsAnswerErrorAndNeverTrap() throws {
        let h = try VirtioNetHarness(backends: [FakeNetBackend()])
        try h.start()
        XCTAssertEqual(try h.control(0, 0, [2]), 1, "PROMISC takes 0 or 1")
        XCTAssertEqual(try h.control(0, 0, [1, 1]), 1, "PROMISC with two bytes")
        XCTAssertEqual(try h.control(0, 9, [1]), 1, "unknown rx command")
        XCTAssertEqual(try h.control(9, 0, []), 1, "unknown class")
        XCTAssertEqual(try h.control(2, 0, [1, 0]), 1, "VLAN was not offered")
        XCTAssertEqual(try h.control(1, 1, [1, 2, 3]), 1, "short MAC")
        XCTAssertEqual(try h.control(1, 0, [0xFF, 0xFF, 0xFF, 0xFF]), 1, "a 4-billion-entry table")
        XCTAssertEqual(try h.control(1, 0, [1, 0, 0, 0, 1, 2, 3]), 1, "table shorter than its count")
        XCTAssertEqual(try h.control(1, 0, [0, 0, 0, 0, 0, 0, 0, 0, 9]), 1, "trailing bytes")
        XCTAssertEqual(try h.control(4, 0, [2, 0]), 1, "MQ was not offered")
        XCTAssertEqual(try h.control(3, 0, [7]), 1, "announce ack with data")
        XCTAssertNil(try h.control(0, 0, [1], ackLength: 0), "no writable byte: nothing written, still completed")
        // A command bigger than any real one.
        let huge = try h.buffer(zeroes: 8192)
        try h.driver.queues[2].add([.init(address: huge, length: 8192, writable: false),
                                    .init(address: try h.buffer(zeroes: 1), length: 1, writable: true)])
        h.driver.kick(2)
        XCTAssertEqual(try h.driver.queues[2].harvest().first?.1, 1)
        // Overflowing table: accepted, that kind is then let through wholesale.
        let entries = 65
        var table = [UInt8(entries), 0, 0, 0] + [UInt8](repeating: 0x52, count: 6 * entries)
        table += [0, 0, 0, 0]
        XCTAssertEqual(try h.control(1, 0, table), 0)
        XCTAssertTrue(h.net.filter.unicastOverflow)
        XCTAssertEqual(h.transport.status & Virtio.statusNeedsReset, 0)
        XCTAssertEqual(try h.control(0, 1, [1]), 0, "still answering")
        XCTAssertTrue(h.net.filter.allMulticast)
        XCTAssertEqual(try h.control(3, 0, []), 0, "announce ack")
    }

    func testResetForgetsTheFilterAndHeldChains() throws {
        let b = FakeNetBackend()
        let h = try VirtioNetHarness(backends: [b])
        try h.start()
        XCTAssertEqual(try h.control(0, 0, [0]), 0)
        XCTAssertEqual(try h.control(1, 1, [2, 0, 0, 0, 0, 1]), 0)
        b.blockSends = true
        try h.transmit(ethernetFrame(to: mac, length: 60))
        h.driver.kick(1)
        h.driver.setStatus(0)
        XCTAssertTrue(h.net.filter.promiscuous)
        XCTAssertEqual(h.net.mac, mac)
        XCTAssertNil(h.net.pairs[0].txHeld)
        b.blockSends = false
        b.receiver?.backendWritable()
        XCTAssertEqual(b.sent.count, 0, "a chain from before the reset is never sent")
        h.driver.queues.removeAll()
        h.driver.notifyOffsets.removeAll()
        h.nextBuffer = 0x60_0000
        try h.start()
        let f = ethernetFrame(to: mac, length: 80)
        try h.transmit(f)
        h.driver.kick(1)
        XCTAssertEqual(b.sent, [f])
    }
}
