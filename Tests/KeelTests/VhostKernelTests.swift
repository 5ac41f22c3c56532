@testable import Devices
@testable import KeelKit
import Foundation
@testable import Machine
import Loop
import Memory
import Net
import XCTest

/// The vhost-kernel pieces that run without /dev/vhost-net or /dev/vhost-vsock: the memory
/// table, ring translation, features, config space, the ioctl layer's errors and the options.
final class VhostKernelTests: XCTestCase {
    // MARK: memory table

    /// 5 GiB on the PC: 3 GiB below the PCI hole and 2 GiB from 4 GiB, two regions at Keel's
    /// own mappings, laid out as struct vhost_memory.
    func testMemoryTableFollowsThePCSplit() throws {
        let map = PCMemoryMap(ramSize: 5 * PCMemoryMap.gibibyte)
        let memory = try GuestMemory(layout: map.ramRegions)
        let table = VhostMemoryRegion.regions(of: memory)
        XCTAssertEqual(table.count, 2)
        XCTAssertEqual(table[0].guestAddress, 0)
        XCTAssertEqual(table[0].size, 3 << 30)
        XCTAssertEqual(table[1].guestAddress, 4 << 30)
        XCTAssertEqual(table[1].size, 2 << 30)
        XCTAssertEqual(table[1].mmapOffset, 3 << 30)
        XCTAssertEqual(table[0].userAddress, UInt64(UInt(bitPattern: memory.hostPointer(0, length: 1))))
        XCTAssertEqual(table[1].userAddress, UInt64(UInt(bitPattern: memory.hostPointer(4 << 30, length: 1))))

        let bytes = VhostKernelFD.memoryTableBytes(table)
        XCTAssertEqual(bytes.count, 8 + 2 * 32)
        func le64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[o + $1]) << (8 * UInt64($1)) } }
        XCTAssertEqual(Array(bytes[0..<8]), [2, 0, 0, 0, 0, 0, 0, 0], "nregions 2, padding 0")
        for (i, r) in table.enumerated() {
            let o = 8 + 32 * i
            XCTAssertEqual(le64(o), r.guestAddress)
            XCTAssertEqual(le64(o + 8), r.size)
            XCTAssertEqual(le64(o + 16), r.userAddress)
            XCTAssertEqual(le64(o + 24), 0, "flags_padding")
        }
    }

    // MARK: ring addresses

    func testRingTranslationStaysInsideOneRegion() throws {
        let memory = try GuestMemory(layout: [(0, 1 << 20), (4 << 30, 1 << 20)])
        let ok = VhostVringAddress.translate(index: 1, size: 256, descriptorTable: 0x1000, driverArea: 0x2000, deviceArea: 0x3000, memory: memory)
        XCTAssertEqual(ok?.index, 1)
        XCTAssertEqual(ok?.descriptor, UInt64(UInt(bitPattern: memory.hostPointer(0x1000, length: 1))))
        XCTAssertEqual(ok?.available, UInt64(UInt(bitPattern: memory.hostPointer(0x2000, length: 1))))
        XCTAssertEqual(ok?.used, UInt64(UInt(bitPattern: memory.hostPointer(0x3000, length: 1))))
        let high = VhostVringAddress.translate(index: 0, size: 256, descriptorTable: (4 << 30) + 0x1000, driverArea: (4 << 30) + 0x2000,
                                               deviceArea: (4 << 30) + 0x3000, memory: memory)
        XCTAssertEqual(high?.descriptor, UInt64(UInt(bitPattern: memory.hostPointer((4 << 30) + 0x1000, length: 1))))

        let end: UInt64 = 1 << 20
        // (descriptor, available, used) the guest may write: each fails somewhere.
        let bad: [(UInt64, UInt64, UInt64)] = [
            (end - 16 * 255, 0x2000, 0x3000),           // the table runs past low RAM
            (0x1000, end - 6 - 2 * 255, 0x3000),        // the available ring does
            (0x1000, 0x2000, end - 6 - 8 * 255),        // the used ring does
            (3 << 30, 0x2000, 0x3000),                  // the PCI hole
            (0x1000, 0x2000, UInt64.max - 8),           // wraps around
            ((4 << 30) - 0x800, 0x2000, 0x3000),        // starts in no region
        ]
        for (d, a, u) in bad {
            XCTAssertNil(VhostVringAddress.translate(index: 0, size: 256, descriptorTable: d, driverArea: a, deviceArea: u, memory: memory),
                         "desc 0x\(String(d, radix: 16)) avail 0x\(String(a, radix: 16)) used 0x\(String(u, radix: 16))")
        }
        XCTAssertNil(VhostVringAddress.translate(index: 0, size: 0, descriptorTable: 0x1000, driverArea: 0x2000, deviceArea: 0x3000, memory: memory))
        XCTAssertNotNil(VhostVringAddress.translate(index: 0, size: 32768, descriptorTable: 0, driverArea: 0x80000, deviceArea: 0x90000, memory: memory))
    }

    // MARK: features

    /// drivers/vhost/net.c's VHOST_NET_FEATURES on a 6.x kernel (with VIRTIO_F_RING_RESET).
    static let vhostNetOffer: UInt64 = (1 << 24) | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 15) | (1 << 26) | (1 << 32) | (1 << 33) | (1 << 40)

    func testSetFeaturesIsTheDriversAckOfTheKernelsOffer() {
        let driver = Virtio.featureVersion1 | Virtio.featureEventIndex | VirtioNetFeature.mergeableRxBuffers | VirtioNetFeature.checksum
            | VirtioNetFeature.guestTSO4 | VirtioNetFeature.mac | VirtioNetFeature.controlQueue
        let f = VhostKernelDevice.vhostFeatures(driver: driver, kernel: Self.vhostNetOffer, backend: 0)
        XCTAssertEqual(f, Virtio.featureVersion1 | Virtio.featureEventIndex | VirtioNetFeature.mergeableRxBuffers,
                       "the tap's offloads, MAC and control queue are not vhost's")
        // A tap without a vnet header: vhost adds it. Logging and IOTLB never go down.
        let g = VhostKernelDevice.vhostFeatures(driver: driver | VhostFeature.logAll | VhostFeature.accessPlatform,
                                                kernel: Self.vhostNetOffer, backend: VhostFeature.netVirtioNetHeader)
        XCTAssertEqual(g, f | VhostFeature.netVirtioNetHeader)
        XCTAssertEqual(VhostFeature.netVirtioNetHeader, 1 << 27)
        XCTAssertEqual(VhostFeature.logAll, 1 << 26)
    }

    func testNetDeviceFeaturesComeFromTheTapAndTheKernel() {
        let all: NetOffloads = [.checksum, .tso4, .tso6, .tsoECN, .ufo]
        let f = VhostKernelDevice.netDeviceFeatures(kernel: Self.vhostNetOffer, tapOffloads: all, tapHeaderLength: 12)
        for bit in [VirtioNetFeature.mac, VirtioNetFeature.status, VirtioNetFeature.mergeableRxBuffers, VirtioNetFeature.checksum,
                    VirtioNetFeature.guestChecksum, VirtioNetFeature.hostTSO4, VirtioNetFeature.guestTSO6, VirtioNetFeature.hostUFO] {
            XCTAssertNotEqual(f & bit, 0, "bit \(bit.trailingZeroBitCount)")
        }
        let noHeader = VhostKernelDevice.netDeviceFeatures(kernel: Self.vhostNetOffer, tapOffloads: all, tapHeaderLength: 0)
        XCTAssertEqual(noHeader, VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mergeableRxBuffers)
        let oldKernel = VhostKernelDevice.netDeviceFeatures(kernel: Virtio.featureVersion1, tapOffloads: [], tapHeaderLength: 12)
        XCTAssertEqual(oldKernel, VirtioNetFeature.mac | VirtioNetFeature.status, "no MRG_RXBUF unless vhost has it")
    }

    // MARK: config spaces

    func testNetConfigHasMACLinkUpAndOnePair() {
        let c = VhostKernelDevice.netConfig(mac: [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF])
        XCTAssertEqual(c, [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF, 1, 0, 1, 0, 0, 0])
    }

    func testVsockConfigReadsAsLE64GuestCID() {
        let config = VhostKernelDevice.vsockConfig(guestCID: 0x1_2345_6789)
        func read(_ offset: Int, _ width: Int) -> UInt64 {
            var v: UInt64 = 0xDEAD
            withUnsafeMutableBytes(of: &v) { readConfigBytes(config, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<width])) }
            return width == 8 ? v : v & ((1 << (8 * UInt64(width))) - 1)
        }
        XCTAssertEqual(read(0, 8), 0x1_2345_6789)
        XCTAssertEqual(read(0, 4), 0x2345_6789)
        XCTAssertEqual(read(4, 4), 1)
        XCTAssertEqual(read(2, 2), 0x2345)
        XCTAssertEqual(read(7, 1), 0)
        XCTAssertEqual(read(8, 4), 0, "past the config space")
        XCTAssertEqual(read(Int.max - 2, 4), 0, "no overflow trap")
        XCTAssertEqual(read(-4, 4), 0)
    }

    // MARK: the ioctl layer

    func testOpenErrorsSayWhy() {
        XCTAssertThrowsError(try VhostKernelFD(path: "/dev/keel-no-such-vhost")) {
            XCTAssertEqual("\($0)", "/dev/keel-no-such-vhost is not available on this host")
        }
        XCTAssertThrowsError(try VhostKernelFD(path: "/")) { XCTAssertEqual("\($0)", "cannot open /: Is a directory") }
    }

    /// A descriptor that is not a vhost device: every request fails with the call and errno, and
    /// building a device on it fails cleanly.
    func testRequestsOnANonVhostFDFailWithTheirName() throws {
        let null = open("/dev/null", O_RDWR)
        XCTAssertGreaterThanOrEqual(null, 0)
        let v = VhostKernelFD(adopting: null, path: "/dev/null")
        XCTAssertThrowsError(try v.features()) {
            XCTAssertEqual("\($0)", "/dev/null: VHOST_GET_FEATURES: Inappropriate ioctl for device")
        }
        XCTAssertThrowsError(try v.setVringNum(1, 256)) { XCTAssertTrue("\($0)".contains("VHOST_SET_VRING_NUM 1 256"), "\($0)") }
        XCTAssertThrowsError(try v.setNetBackend(0, fd: -1)) { XCTAssertTrue("\($0)".contains("VHOST_NET_SET_BACKEND 0"), "\($0)") }
        XCTAssertThrowsError(try v.setVsockGuestCID(3)) { XCTAssertTrue("\($0)".contains("VHOST_VSOCK_SET_GUEST_CID 3"), "\($0)") }
        let loop = try EventLoop()
        let memory = try GuestMemory(layout: [(0, 1 << 20)])
        XCTAssertThrowsError(try VhostKernelDevice.vsock(vhost: v, guestCID: 3, memory: memory, loop: loop)) {
            XCTAssertTrue("\($0)".contains("VHOST_GET_FEATURES"), "\($0)")
        }
        XCTAssertThrowsError(try VhostKernelDevice.vsock(vhost: v, guestCID: 2, memory: memory, loop: loop)) {
            XCTAssertEqual("\($0)", "guest-cid=2 is not from 3 to 4294967294")
        }
    }

    // MARK: command line and configuration

    func parse(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args); return "no error" } catch { return "\(error)" }
    }

    func testGuestCIDIsCheckedAndNamed() throws {
        XCTAssertEqual(error(["-device", "vhost-vsock-pci,guest-cid=2"]), "-device vhost-vsock-pci: guest-cid=2: must be from 3 to 4294967294")
        XCTAssertEqual(error(["-device", "vhost-vsock-pci,guest-cid=4294967295"]),
                       "-device vhost-vsock-pci: guest-cid=4294967295: must be from 3 to 4294967294")
        XCTAssertEqual(error(["-device", "vhost-vsock-pci,guest-cid=-3"]), "-device vhost-vsock-pci: guest-cid=-3: not a number")
        XCTAssertEqual(error(["-device", "vhost-vsock-pci"]), "-device vhost-vsock-pci: guest-cid= is required (3 or more)")
        XCTAssertTrue(error(["-device", "vhost-vsock-pci,guest-cid=3,bogus=1"]).contains("bogus"))
        // With the fd handed over, the node is not needed.
        let c = try parse(["-device", "vhost-vsock-pci,guest-cid=4294967294,vhostfd=9,id=v0"])
        XCTAssertEqual(c.pciDevices, [.vhostVsock(VhostVsockConfiguration(guestCID: 4294967294, vhostFD: 9))])
        XCTAssertNoThrow(try c.validate())
        // The Swift API's configuration is checked the same way.
        var api = MachineConfiguration()
        api.kernelPath = "/k"
        api.pciDevices = [.vhostVsock(VhostVsockConfiguration(guestCID: 1))]
        XCTAssertThrowsError(try api.validate()) { XCTAssertTrue("\($0)".contains("guest-cid=1: must be from 3"), "\($0)") }
        api.pciDevices = [.vhostVsock(VhostVsockConfiguration(guestCID: 7)), .vhostVsock(VhostVsockConfiguration(guestCID: 7))]
        XCTAssertThrowsError(try api.validate()) { XCTAssertTrue("\($0)".contains("guest-cid=7"), "\($0)") }
    }

    func testTapVhostOptions() throws {
        let c = try parse(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=on,vhostfd=7", "-device", "virtio-net-pci,netdev=n0"])
        var t = TapNetdevConfiguration(ifname: "tap0")
        t.vhost = true
        t.vhostFDs = [7]
        XCTAssertEqual(c.netdevs, [NetdevConfiguration(id: "n0", backend: .tap(t))])
        XCTAssertNoThrow(try c.validate())
        // vhost=off wins over an fd (QEMU's rule); vhostforce=on alone turns it on.
        let off = try parse(["-netdev", "tap,id=n0,ifname=tap0,vhost=off,vhostfd=7", "-device", "virtio-net-pci,netdev=n0"])
        guard case .tap(let o) = off.netdevs.first?.backend else { return XCTFail("no tap") }
        XCTAssertFalse(o.vhost)
        let forced = error(["-netdev", "tap,id=n0,ifname=tap0,vhostforce=on", "-device", "virtio-net-pci,netdev=n0"])
        if access("/dev/vhost-net", F_OK) != 0 {
            XCTAssertEqual(forced, "-netdev tap,vhost=on: /dev/vhost-net is not available on this host")
        } else {
            XCTAssertEqual(forced, "no error")
        }
        let mq = try parse(["-netdev", "tap,id=n0,ifname=tap0,vhost=on,queues=2,vhostfds=7:8", "-device", "virtio-net-pci,netdev=n0"])
        XCTAssertThrowsError(try mq.validate()) { XCTAssertTrue("\($0)".contains("queues=2: Keel's vhost-net takes 1 queue pair"), "\($0)") }
        XCTAssertTrue(error(["-netdev", "tap,id=n0,vhost=on,vhostfd=x"]).contains("vhostfd=x"))
    }

    /// Building the machine: a node that exists but cannot be opened is one line with the errno text.
    func testOpenFailureAtBuildTimeIsOneLine() {
        XCTAssertThrowsError(try openVhostKernel("/", fd: nil, option: "-device vhost-vsock-pci,guest-cid=3")) {
            XCTAssertEqual("\($0)", "-device vhost-vsock-pci,guest-cid=3: cannot open /: Is a directory")
        }
        XCTAssertThrowsError(try openVhostKernel("/dev/keel-no-such-vhost", fd: nil, option: "-netdev tap,id=n0,vhost=on")) {
            XCTAssertEqual("\($0)", "-netdev tap,id=n0,vhost=on: /dev/keel-no-such-vhost is not available on this host")
        }
    }
}
