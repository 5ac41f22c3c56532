import CKeel
@testable import Devices
import Foundation
import Glibc
import Loop
import Memory
@testable import Net
import XCTest

/// A stand-in for drivers/vhost behind VhostKernelFD's ioctl: records each request with its
/// argument as the kernel would read it, answers GET_FEATURES and GET_VRING_BASE, and fails the
/// request named in `failing`.
final class FakeVhostKernel {
    var requests: [String] = []
    var offered: UInt64
    var bases: [UInt32: UInt32] = [:]
    var addresses: [UInt32: vhost_vring_addr] = [:]
    var kicks: [UInt32: Int32] = [:], calls: [UInt32: Int32] = [:]
    var memoryTable: [UInt8] = []
    var failing: UInt?

    init(offered: UInt64) { self.offered = offered }

    func ioctl(_ fd: Int32, _ request: UInt, _ p: UnsafeMutableRawPointer?) -> Int32 {
        if request == failing { errno = EFAULT; return -1 }
        guard let p else {
            requests.append(request == CKEEL_VHOST_SET_OWNER ? "SET_OWNER" : request == CKEEL_VHOST_RESET_OWNER ? "RESET_OWNER" : "? \(request)")
            return 0
        }
        func state() -> vhost_vring_state { p.load(as: vhost_vring_state.self) }
        func file() -> vhost_vring_file { p.load(as: vhost_vring_file.self) }
        switch request {
        case CKEEL_VHOST_GET_FEATURES: p.storeBytes(of: offered, as: UInt64.self); requests.append("GET_FEATURES")
        case CKEEL_VHOST_SET_FEATURES: requests.append("SET_FEATURES 0x\(String(p.load(as: UInt64.self), radix: 16))")
        case CKEEL_VHOST_SET_MEM_TABLE:
            let n = Int(p.load(as: UInt32.self))
            memoryTable = Array(UnsafeRawBufferPointer(start: p, count: 8 + 32 * n))
            requests.append("SET_MEM_TABLE \(n)")
        case CKEEL_VHOST_SET_VRING_NUM: requests.append("SET_VRING_NUM \(state().index) \(state().num)")
        case CKEEL_VHOST_SET_VRING_BASE: requests.append("SET_VRING_BASE \(state().index) \(state().num)")
        case CKEEL_VHOST_GET_VRING_BASE:
            var s = state()
            s.num = bases[s.index] ?? 0
            p.storeBytes(of: s, as: vhost_vring_state.self)
            requests.append("GET_VRING_BASE \(s.index)")
        case CKEEL_VHOST_SET_VRING_ADDR:
            let a = p.load(as: vhost_vring_addr.self)
            addresses[a.index] = a
            requests.append("SET_VRING_ADDR \(a.index)")
        case CKEEL_VHOST_SET_VRING_KICK: kicks[file().index] = file().fd; requests.append("SET_VRING_KICK \(file().index)")
        case CKEEL_VHOST_SET_VRING_CALL: calls[file().index] = file().fd; requests.append("SET_VRING_CALL \(file().index)")
        case CKEEL_VHOST_SET_VRING_ERR: requests.append("SET_VRING_ERR \(file().index)")
        case CKEEL_VHOST_NET_SET_BACKEND: requests.append("NET_SET_BACKEND \(file().index) \(file().fd)")
        case CKEEL_VHOST_VSOCK_SET_GUEST_CID: requests.append("SET_GUEST_CID \(p.load(as: UInt64.self))")
        case CKEEL_VHOST_VSOCK_SET_RUNNING: requests.append("SET_RUNNING \(p.load(as: Int32.self))")
        default: requests.append("? \(request)")
        }
        return 0
    }
}

/// Records the notify ioeventfds and accepts MSI routes, as kvm would.
final class KVMLikeAccelerator: IOEventAccelerator {
    var ioEvents: [(fd: Int32, address: UInt64)] = []
    var routes: [Int32: UInt32] = [:]
    func addIOEvent(fd: Int32, address: UInt64, length: UInt32) throws { ioEvents.append((fd, address)) }
    func removeIOEvent(fd: Int32, address: UInt64, length: UInt32) { ioEvents.removeAll { $0.fd == fd && $0.address == address } }
    func setMSIRoute(fd: Int32, address: UInt64, data: UInt32) throws { routes[fd] = data }
    func removeMSIRoute(fd: Int32) { routes[fd] = nil }
}

/// vhost-vsock-pci driven as Linux's virtio_pci and vsock drivers do, against the fake kernel:
/// what Keel asks of /dev/vhost-vsock, in which order, with which addresses and fds.
final class VhostKernelDeviceTests: XCTestCase {
    var pio = Bus(name: "pio"), mmio = Bus(name: "mmio")
    var bridge: PCIHostBridge!
    var memory: GuestMemory!
    var msi = RecordingMSIController()
    var loop: EventLoop!
    /// drivers/vhost/vsock.c's VHOST_VSOCK_FEATURES: VHOST_FEATURES, ACCESS_PLATFORM, SEQPACKET.
    static let vsockOffer: UInt64 = (1 << 24) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 32) | (1 << 33) | (1 << 1)
    static let ringBits = Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex

    override func setUpWithError() throws {
        memory = try makeGuestMemory()
        bridge = PCIHostBridge(pio: pio, mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
        loop = try EventLoop()
    }

    func makeVsock(_ kernel: FakeVhostKernel, cid: UInt64 = 42, accelerator: IOEventAccelerator? = nil) throws
        -> (VhostKernelDevice, VirtioPCIDevice, TestVirtioPCIDriver) {
        let vhost = VhostKernelFD(adopting: open("/dev/null", O_RDWR), path: "fake-vhost-vsock", ioctl: kernel.ioctl)
        let device = try VhostKernelDevice.vsock(vhost: vhost, guestCID: cid, memory: memory, loop: loop)
        let dev = VirtioPCIDevice(device: device, memory: memory, msiController: msi)
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        if let accelerator { dev.ioEvents = VirtioNotifyAcceleration(accelerator: accelerator, loop: loop) }
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        return (device, dev, drv)
    }

    func start(_ drv: TestVirtioPCIDriver) throws {
        XCTAssertTrue(drv.negotiate { $0 })
        drv.enableMSIX(vectors: 4)
        try drv.setUpQueues(memory: memory, count: 3, msix: true)
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        XCTAssertEqual(drv.status & Virtio.statusDriverOK, Virtio.statusDriverOK)
    }

    func host(_ gpa: UInt64) -> UInt64 { UInt64(UInt(bitPattern: memory.hostPointer(gpa, length: 1))) }

    func testVsockOffersOnlyRingBitsAndSeqpacketAndReadsItsCID() throws {
        let kernel = FakeVhostKernel(offered: Self.vsockOffer)
        let (device, _, drv) = try makeVsock(kernel, cid: 0xFFFF_0003)
        XCTAssertEqual(kernel.requests, ["GET_FEATURES", "SET_OWNER", "GET_FEATURES", "SET_GUEST_CID 4294901763"])
        var offered: UInt64 = 0
        XCTAssertTrue(drv.negotiate { offered = $0; return $0 })
        XCTAssertEqual(offered, Self.ringBits | VhostKernelDevice.vsockSeqpacket, "no IOTLB, logging, NOTIFY_ON_EMPTY or ANY_LAYOUT")
        XCTAssertEqual(device.deviceType, 19)
        XCTAssertEqual(device.queueMaxSizes, [128, 128, 128])
        XCTAssertEqual(mmio.inp(drv.deviceCfg, width: 8), 4294901763)
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 4, width: 4), 0)
        mmio.out(drv.deviceCfg, width: 8, 7)
        XCTAssertEqual(mmio.inp(drv.deviceCfg, width: 4), 0xFFFF_0003, "guest_cid is read-only")
    }

    /// Under tcg: DRIVER_OK hands the rx and tx rings over in vhost_dev_start's order, then
    /// starts vsock; Keel's notify writes become kicks, the kernel's calls become MSI-X messages,
    /// the event queue stays here; a reset stops vsock, then asks each ring's base.
    func testHandoverKicksCallsAndReset() throws {
        let kernel = FakeVhostKernel(offered: Self.vsockOffer)
        let (device, dev, drv) = try makeVsock(kernel)
        kernel.requests.removeAll()
        try start(drv)
        let features = "0x\(String(Self.ringBits | VhostKernelDevice.vsockSeqpacket, radix: 16))"
        XCTAssertEqual(kernel.requests, ["SET_FEATURES \(features)", "SET_MEM_TABLE 1"]
            + (0..<2).flatMap { ["SET_VRING_NUM \($0) 128", "SET_VRING_BASE \($0) 0", "SET_VRING_ADDR \($0)", "SET_VRING_ERR \($0)", "SET_VRING_CALL \($0)", "SET_VRING_KICK \($0)"] }
            + ["SET_RUNNING 1"])
        XCTAssertTrue(device.started)
        // struct vhost_memory: one region, guest 0, 16 MiB, at Keel's mapping.
        let t = kernel.memoryTable
        func le64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(t[o + $1]) << (8 * UInt64($1)) } }
        XCTAssertEqual([le64(8), le64(16), le64(24), le64(32)], [0, 16 << 20, host(0), 0])
        for i in 0..<2 {
            let a = try XCTUnwrap(kernel.addresses[UInt32(i)])
            XCTAssertEqual(a.desc_user_addr, host(drv.queues[i].desc))
            XCTAssertEqual(a.avail_user_addr, host(drv.queues[i].avail))
            XCTAssertEqual(a.used_user_addr, host(drv.queues[i].used))
            XCTAssertEqual(a.flags, 0)
            XCTAssertEqual(kernel.kicks[UInt32(i)], device.vhostRings.kicks[i].fd)
            XCTAssertEqual(kernel.calls[UInt32(i)], device.vhostRings.calls[i].fd, "no irqfd under tcg: Keel relays")
        }
        // A notify write (trapped under tcg) signals the ring's kick.
        drv.kick(1)
        XCTAssertEqual(device.vhostRings.kicks[1].consume(), 1)
        XCTAssertEqual(device.vhostRings.kicks[0].consume(), 0)
        // The event queue is Keel's: its buffers are held, the kernel hears nothing.
        kernel.requests.removeAll()
        drv.kick(2)
        XCTAssertEqual(kernel.requests, [])
        // The kernel's call on ring 1 raises queue 1's vector (data 0x42).
        msi.messages.removeAll()
        var one: UInt64 = 1
        _ = write(kernel.calls[1]!, &one, 8)
        loop.stop()
        loop.run()
        XCTAssertEqual(msi.messages.map(\.1), [0x42])
        // Reset: vsock stops first, then each ring's base; the next start begins at 0 again.
        kernel.bases = [0: 5, 1: 9]
        kernel.requests.removeAll()
        drv.setStatus(0)
        XCTAssertEqual(kernel.requests, ["SET_RUNNING 0", "GET_VRING_BASE 0", "GET_VRING_BASE 1"])
        XCTAssertFalse(device.started)
        XCTAssertEqual(dev.status, 0)
    }

    /// Under kvm: the notify address signals the kick itself (ioeventfd) and the kernel is
    /// given the vector's irqfd as its call; the event queue's notify stays Keel's.
    func testKVMKicksAndCallsBypassKeel() throws {
        let kernel = FakeVhostKernel(offered: Self.vsockOffer)
        let accelerator = KVMLikeAccelerator()
        let (device, dev, drv) = try makeVsock(kernel, accelerator: accelerator)
        try start(drv)
        let kickFDs = accelerator.ioEvents.map(\.fd)
        XCTAssertEqual(kickFDs.count, 3)
        XCTAssertEqual(Array(kickFDs.prefix(2)), device.vhostRings.kicks.map(\.fd))
        XCTAssertEqual(accelerator.ioEvents.map(\.address), (0..<3).compactMap { dev.notifyAddress(queue: $0) })
        for i in 0..<2 {
            let irqfd = try XCTUnwrap(dev.interruptEventFD(queue: i))
            XCTAssertEqual(kernel.calls[UInt32(i)], irqfd.fd)
            XCTAssertEqual(accelerator.routes[irqfd.fd], 0x41 + UInt32(i))
        }
        // Masking queue 0's vector (1) withdraws its route: the kernel is told to call Keel.
        kernel.requests.removeAll()
        mmio.out(drv.msixTable + 16 + 12, width: 4, 1)
        XCTAssertEqual(kernel.requests, ["SET_VRING_CALL 0"])
        XCTAssertEqual(kernel.calls[0], device.vhostRings.calls[0].fd)
    }

    /// A request the kernel refuses at DRIVER_OK is one line; the device stays quiet and a later
    /// reset still works.
    func testStartFailureIsOneLine() throws {
        let kernel = FakeVhostKernel(offered: Self.vsockOffer)
        let (device, _, drv) = try makeVsock(kernel)
        var lines: [String] = []
        device.log = { lines.append($0) }
        kernel.failing = CKEEL_VHOST_SET_MEM_TABLE
        try start(drv)
        XCTAssertEqual(lines, ["cannot start: fake-vhost-vsock: VHOST_SET_MEM_TABLE (1 regions): Bad address"])
        XCTAssertFalse(device.started)
        XCTAssertFalse(device.vhostRings.anyRunning)
        kernel.failing = nil
        kernel.requests.removeAll()
        drv.setStatus(0)
        XCTAssertEqual(kernel.requests, [], "nothing was running")
    }

    func testDeviceNeedsVersion1() throws {
        let kernel = FakeVhostKernel(offered: 1 << 28)
        XCTAssertThrowsError(try makeVsock(kernel)) { XCTAssertTrue("\($0)".contains("does not offer VIRTIO_F_VERSION_1"), "\($0)") }
    }
}

/// virtio-net-pci over vhost-net against the fake kernel, with a tap stand-in without a vnet
/// header (so vhost adds it: VHOST_NET_F_VIRTIO_NET_HDR): rings 0 and 1 go to the kernel with
/// the tap as their backend, the control queue stays with Keel.
final class VhostKernelNetTests: XCTestCase {
    /// drivers/vhost/net.c's VHOST_NET_FEATURES (6.x): VHOST_FEATURES, VIRTIO_NET_HDR, MRG_RXBUF,
    /// ACCESS_PLATFORM, RING_RESET.
    static let netOffer: UInt64 = (1 << 24) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 32) | (1 << 15) | (1 << 33) | (1 << 40)

    func testHandoverAttachesTheTapAndKeepsTheControlQueue() throws {
        let memory = try makeGuestMemory()
        let mmio = Bus(name: "mmio")
        let bridge = PCIHostBridge(pio: Bus(name: "pio"), mmio: mmio)
        try bridge.attach(ecamBase: 0xE000_0000, busCount: 1)
        let kernel = FakeVhostKernel(offered: Self.netOffer)
        let tapFD = open("/dev/null", O_RDWR)
        let tap = try TapBackend(fd: tapFD, ownsFD: true, name: "faketap", vnetHeader: false)
        let vhost = VhostKernelFD(adopting: open("/dev/null", O_RDWR), path: "fake-vhost-net", ioctl: kernel.ioctl)
        let nic = try VhostKernelDevice.net(tap: tap, vhost: vhost, mac: [0x52, 0x54, 0, 1, 2, 3], queueSize: 256,
                                            memory: memory, loop: try EventLoop())
        let dev = VirtioPCIDevice(device: nic, memory: memory, msiController: RecordingMSIController())
        let slot = try bridge.plug(dev)
        try bridge.assignResources(io: 0xC000..<0x10000, memory32: 0xC000_0000..<0xE000_0000, memory64: 0..<0)
        let drv = TestVirtioPCIDriver(bridge: bridge, mmio: mmio, slot: slot)
        drv.findCapabilities()
        var offered: UInt64 = 0
        XCTAssertTrue(drv.negotiate { offered = $0; return $0 })
        XCTAssertEqual(offered, VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mergeableRxBuffers
            | VirtioNetFeature.controlQueue | VirtioNetFeature.controlMACAddress | VhostKernelDeviceTests.ringBits,
            "no offloads without a vnet header; MQ, IOTLB, logging never")
        XCTAssertEqual((0..<6).map { UInt8(mmio.inp(drv.deviceCfg + UInt64($0), width: 1)) }, [0x52, 0x54, 0, 1, 2, 3])
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 6, width: 2), 1, "link up")
        drv.enableMSIX(vectors: 4)
        try drv.setUpQueues(memory: memory, count: 3, msix: true)
        kernel.requests.removeAll()
        drv.setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK | Virtio.statusDriverOK)
        let vhostBits = VirtioNetFeature.mergeableRxBuffers | VhostKernelDeviceTests.ringBits | VhostFeature.netVirtioNetHeader
        XCTAssertEqual(kernel.requests, ["SET_FEATURES 0x\(String(vhostBits, radix: 16))", "SET_MEM_TABLE 1"]
            + (0..<2).flatMap { ["SET_VRING_NUM \($0) 256", "SET_VRING_BASE \($0) 0", "SET_VRING_ADDR \($0)", "SET_VRING_ERR \($0)", "SET_VRING_CALL \($0)", "SET_VRING_KICK \($0)"] }
            + ["NET_SET_BACKEND 0 \(tapFD)", "NET_SET_BACKEND 1 \(tapFD)"])
        XCTAssertEqual(kernel.addresses[1]?.desc_user_addr, UInt64(UInt(bitPattern: memory.hostPointer(drv.queues[1].desc, length: 1))))
        // The control queue is Keel's: MAC_ADDR_SET changes the config space, the kernel hears nothing.
        kernel.requests.removeAll()
        let command = 0x90_0000 as UInt64
        try memory.write([1, 1, 0x52, 0x54, 0, 9, 9, 9], at: command)
        _ = try drv.queues[2].add([.init(address: command, length: 8, writable: false), .init(address: command + 16, length: 1, writable: true)])
        drv.kick(2)
        XCTAssertEqual(try drv.queues[2].harvest().count, 1)
        XCTAssertEqual(try memory.load(UInt8.self, at: command + 16), 0, "VIRTIO_NET_OK")
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 5, width: 1), 9)
        XCTAssertEqual(kernel.requests, [])
        // Reset: the tap is detached before the bases are asked.
        kernel.requests.removeAll()
        drv.setStatus(0)
        XCTAssertEqual(kernel.requests, ["NET_SET_BACKEND 0 -1", "NET_SET_BACKEND 1 -1", "GET_VRING_BASE 0", "GET_VRING_BASE 1"])
        XCTAssertEqual(mmio.inp(drv.deviceCfg + 5, width: 1), 3, "the -device MAC again")
    }
}

extension VhostKernelDeviceTests {
    /// QMP stop (QEMU's vm_stop): vsock stops and each ring's base is read; cont starts the
    /// device again with the rings resuming at those bases.
    func testStopAndContStopAndRestartTheKernelRings() throws {
        let kernel = FakeVhostKernel(offered: Self.vsockOffer)
        let (device, dev, drv) = try makeVsock(kernel)
        try start(drv)
        kernel.bases = [0: 5, 1: 9]
        kernel.requests.removeAll()
        dev.setQueuesPaused(true)
        XCTAssertEqual(kernel.requests, ["SET_RUNNING 0", "GET_VRING_BASE 0", "GET_VRING_BASE 1"])
        XCTAssertFalse(device.started)
        kernel.requests.removeAll()
        dev.setQueuesPaused(false)
        XCTAssertTrue(device.started)
        XCTAssertEqual(kernel.requests.filter { $0.hasPrefix("SET_VRING_BASE") }, ["SET_VRING_BASE 0 5", "SET_VRING_BASE 1 9"])
        XCTAssertEqual(kernel.requests.last, "SET_RUNNING 1")
    }
}
