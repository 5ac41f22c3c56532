@testable import KeelKit
import Foundation
import Machine
import XCTest

/// `-netdev vhost-user`, `keel vhost-user-net`'s options and the vhost-kernel refusals.
final class VhostNetCommandLineTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args); return "no error" } catch { return "\(error)" }
    }

    static let shared = ["-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "memory-backend=mem"]

    func testNetdevVhostUserTakesItsSocketFromTheChardev() throws {
        let c = try configuration(Self.shared + ["-chardev", "socket,id=c0,path=/tmp/vu.sock", "-netdev", "vhost-user,id=n0,chardev=c0",
                                                 "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:ef"])
        var v = VhostUserNetdevConfiguration(chardev: "c0")
        v.path = "/tmp/vu.sock"
        XCTAssertEqual(c.netdevs, [NetdevConfiguration(id: "n0", backend: .vhostUser(v))])
        XCTAssertEqual(c.pciDevices, [.virtioNet(VirtioNetConfiguration(netdev: "n0", mac: [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF]))])
        XCTAssertNoThrow(try c.validate())
    }

    func testNetdevVhostUserErrorsNameTheValue() throws {
        XCTAssertTrue(error(Self.shared + ["-netdev", "vhost-user,id=n0"]).contains("chardev= is required"))
        XCTAssertTrue(error(Self.shared + ["-netdev", "vhost-user,id=n0,chardev=c9", "-device", "virtio-net-pci,netdev=n0"])
            .contains("no -chardev with id=c9"), error(Self.shared + ["-netdev", "vhost-user,id=n0,chardev=c9"]))
        XCTAssertTrue(error(Self.shared + ["-chardev", "socket,id=c0,path=/tmp/vu.sock", "-netdev", "vhost-user,id=n0,chardev=c0,queues=65"])
            .contains("queues=65"))
        XCTAssertTrue(error(Self.shared + ["-chardev", "socket,id=c0,path=/tmp/vu.sock", "-netdev", "vhost-user,id=n0,chardev=c0,queues=0"])
            .contains("queues=0"))
        // queues=N: N pairs; the NIC offers MQ with mq=on, as QEMU's.
        let mq = try configuration(Self.shared + ["-chardev", "socket,id=c0,path=/tmp/vu.sock", "-netdev", "vhost-user,id=n0,chardev=c0,queues=2",
                                                  "-device", "virtio-net-pci,netdev=n0,mq=on"])
        XCTAssertEqual(mq.netdevs.first?.queues, 2)
        guard case .virtioNet(let nic)? = mq.pciDevices.first else { return XCTFail("\(mq.pciDevices)") }
        XCTAssertTrue(nic.multiqueue)
        // vhost-user maps guest RAM in another process: QEMU's words without share=on.
        let c = try configuration(["-chardev", "socket,id=c0,path=/tmp/vu.sock", "-netdev", "vhost-user,id=n0,chardev=c0",
                                   "-device", "virtio-net-pci,netdev=n0"])
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("share=on"), "\($0)") }
    }

    func testBackendOptions() throws {
        let o = try VhostUserNetBackend.parse(["--socket-path=/tmp/s", "--tap", "tap3", "--queues=1", "--mac=02:00:00:00:00:01"])
        XCTAssertEqual(o.socketPath, "/tmp/s")
        XCTAssertEqual(o.tap, "tap3")
        XCTAssertEqual(o.mac, [2, 0, 0, 0, 0, 1])
        XCTAssertEqual(try VhostUserNetBackend.parse(["-s", "/tmp/s", "--tap=t", "--queues=4"]).queuePairs, 4)
        XCTAssertEqual(try o.endpointFlags.endpoint(), .listen("/tmp/s"))
        XCTAssertEqual(try VhostUserNetBackend.parse(["-s", "/tmp/c", "--client", "--tap=t"]).endpointFlags.endpoint(), .connect("/tmp/c"))
        XCTAssertEqual(try VhostUserNetBackend.parse(["--fd", "5", "--tap=t"]).endpointFlags.endpoint(), .connected(5))
        for (args, message) in [(["--tap=t"], "--socket-path=PATH (or --fd=N) is required"),
                                (["--fd=3", "--socket-path=/s", "--tap=t"], "--fd=3 and --socket-path/--client exclude each other"),
                                (["--fd=-1", "--tap=t"], "--fd=-1"), (["--socket-path=/s"], "--tap=IFNAME is required"),
                                (["--socket-path=/s", "--tap=t", "--queues=65"], "--queues=65"),
                                (["--socket-path=/s", "--tap=t", "--queues=0"], "--queues=0"),
                                (["--socket-path=/s", "--tap=t", "--mac=zz"], "--mac=zz"), (["--bogus"], "--bogus")] {
            XCTAssertThrowsError(try VhostUserNetBackend.parse(args)) { XCTAssertTrue("\($0)".contains(message), "\(args): \($0)") }
        }
    }

    /// Without the device nodes (this kind of host), one line each; with them, the options parse.
    func testVhostKernelRefusalsNameTheMissingDevice() throws {
        let net = error(["-netdev", "tap,id=n0,ifname=tap0,vhost=on", "-device", "virtio-net-pci,netdev=n0"])
        let vsock = error(["-device", "vhost-vsock-pci,guest-cid=3"])
        if access("/dev/vhost-net", F_OK) != 0 {
            XCTAssertEqual(net, "-netdev tap,vhost=on: /dev/vhost-net is not available on this host")
        } else {
            XCTAssertEqual(net, "no error")
        }
        if access("/dev/vhost-vsock", F_OK) != 0 {
            XCTAssertEqual(vsock, "-device vhost-vsock-pci: /dev/vhost-vsock is not available on this host")
        } else {
            XCTAssertEqual(vsock, "no error")
        }
    }

    /// The binary prints it as one line and exits 1 before touching the tap.
    func testVhostOnExitsWithOneLine() throws {
        guard access("/dev/vhost-net", F_OK) != 0 else { throw XCTSkip("/dev/vhost-net exists here: VhostKernelLinuxTests runs the data path") }
        let keel = try TCGLinuxBootTests.keel()
        let r = try KeelRunner.runCommand(executable: keel.path, arguments: ["-netdev", "tap,id=n0,ifname=tap0,vhost=on",
                                                                            "-device", "virtio-net-pci,netdev=n0"], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "keel: -netdev tap,vhost=on: /dev/vhost-net is not available on this host\n")
    }

    func testVhostVsockExitsWithOneLine() throws {
        guard access("/dev/vhost-vsock", F_OK) != 0 else { throw XCTSkip("/dev/vhost-vsock exists here: VhostKernelLinuxTests runs the data path") }
        let keel = try TCGLinuxBootTests.keel()
        let r = try KeelRunner.runCommand(executable: keel.path, arguments: ["-device", "vhost-vsock-pci,guest-cid=3"], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "keel: -device vhost-vsock-pci: /dev/vhost-vsock is not available on this host\n")
    }

    /// An fd handed over that is not a vhost device: building the machine fails in one line
    /// naming the option, the fd and the failed request, and keel exits 1 (runs on any host).
    func testVhostFDThatIsNotVhostIsOneLine() throws {
        let keel = try TCGLinuxBootTests.keel()
        let kernel = PackagePaths.root.appendingPathComponent("guest/vmlinuz").path
        guard FileManager.default.fileExists(atPath: kernel) else { throw XCTSkip("no default guest kernel (scripts/fetch-default-guest.sh)") }
        let r = try KeelRunner.runCommand(executable: "/bin/sh", arguments: ["-c", "exec \"$0\" -kernel \"$1\" -display none -device vhost-vsock-pci,guest-cid=3,vhostfd=5 5</dev/null",
                                                                       keel.path, kernel], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "keel: -device vhost-vsock-pci,guest-cid=3: /dev/vhost-vsock (vhostfd=5): VHOST_GET_FEATURES: Inappropriate ioctl for device\n")
    }
}
