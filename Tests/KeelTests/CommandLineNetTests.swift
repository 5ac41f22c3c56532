@testable import KeelKit
import Machine
import XCTest

final class CommandLineNetTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args); return "no error" } catch { return "\(error)" }
    }

    func testNetdevTapWithDevice() throws {
        let c = try configuration(["-netdev", "tap,id=n0,ifname=tap7,script=no,downscript=no,queues=4",
                                   "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:ef,mq=on,vectors=10"])
        var t = TapNetdevConfiguration(ifname: "tap7")
        t.queues = 4
        XCTAssertEqual(c.netdevs, [NetdevConfiguration(id: "n0", backend: .tap(t))])
        var v = VirtioNetConfiguration(netdev: "n0", mac: [0x52, 0x54, 0, 0xAB, 0xCD, 0xEF])
        v.multiqueue = true; v.vectors = 10
        XCTAssertEqual(c.pciDevices, [.virtioNet(v)])
        XCTAssertNoThrow(try c.validate())
    }

    func testDefaultMACsCountUpAsQEMUs() throws {
        let c = try configuration(["-netdev", "tap,id=a,fd=3", "-netdev", "tap,id=b,fds=4:5",
                                   "-device", "virtio-net-pci,netdev=a", "-nic", "tap,ifname=t2,model=virtio-net-pci",
                                   "-device", "virtio-net-pci,netdev=b,mac=02:00:00:00:00:01"])
        let macs = c.pciDevices.compactMap { d -> [UInt8]? in if case .virtioNet(let v) = d { return v.mac } else { return nil } }
        XCTAssertEqual(macs, [[0x52, 0x54, 0, 0x12, 0x34, 0x56], [0x52, 0x54, 0, 0x12, 0x34, 0x57], [2, 0, 0, 0, 0, 1]])
        guard case .tap(let b) = c.netdevs[1].backend else { return XCTFail("tap") }
        XCTAssertEqual(b.fds, [4, 5])
        XCTAssertEqual(b.queues, 2)
        XCTAssertEqual(c.netdevs.count, 3, "-nic adds its own netdev")
        XCTAssertNoThrow(try c.validate())
    }

    func testNicShorthandAndNone() throws {
        let c = try configuration(["-nic", "user,hostfwd=tcp::5555-:22,hostfwd=udp:127.0.0.1:6000-10.0.2.15:53,net=10.0.9.0/24,restrict=on,mac=52:54:00:00:00:09"])
        guard case .user(let u) = c.netdevs.first?.backend else { return XCTFail("user netdev") }
        XCTAssertEqual(u.network, "10.0.9.0/24")
        XCTAssertTrue(u.restrict)
        XCTAssertEqual(u.hostForwards, [HostForward(transport: .tcp, hostAddress: "", hostPort: 5555, guestAddress: "", guestPort: 22),
                                        HostForward(transport: .udp, hostAddress: "127.0.0.1", hostPort: 6000, guestAddress: "10.0.2.15", guestPort: 53)])
        guard case .virtioNet(let v) = c.pciDevices.first else { return XCTFail("NIC") }
        XCTAssertEqual(v.netdev, c.netdevs.first?.id)
        XCTAssertEqual(v.mac, [0x52, 0x54, 0, 0, 0, 9])
        XCTAssertEqual(try configuration(["-nic", "none"]).pciDevices, [])
    }

    func testSocketStreamAndDgram() throws {
        let c = try configuration(["-netdev", "socket,id=s0,listen=:1234", "-netdev", "socket,id=s1,connect=127.0.0.1:1234",
                                   "-netdev", "stream,id=s2,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=4000",
                                   "-netdev", "stream,id=s3,server=off,addr.type=unix,addr.path=/tmp/k.sock",
                                   "-netdev", "dgram,id=s4,local.type=inet,local.host=127.0.0.1,local.port=5000,remote.type=inet,remote.host=127.0.0.1,remote.port=5001"])
        XCTAssertEqual(c.netdevs.map(\.backend), [
            .socket(.init(mode: .listen(.init(host: "", port: 1234)))),
            .socket(.init(mode: .connect(.init(host: "127.0.0.1", port: 1234)))),
            .stream(.init(server: true, address: .inet(.init(host: "127.0.0.1", port: 4000)))),
            .stream(.init(server: false, address: .unix(path: "/tmp/k.sock"))),
            .dgram(.init(local: .inet(.init(host: "127.0.0.1", port: 5000)), remote: .inet(.init(host: "127.0.0.1", port: 5001)))),
        ])
    }

    func testBadValuesAreNamed() throws {
        XCTAssertTrue(error(["-netdev", "tap,ifname=t"]).contains("id= is required"))
        XCTAssertTrue(error(["-netdev", "bridge,id=b"]).contains("'bridge' is not supported"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,script=/etc/qemu-ifup"]).contains("script=/etc/qemu-ifup"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,downscript=/bin/x"]).contains("downscript=/bin/x"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,vhost=on"]).contains("/dev/vhost-net is not available"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,queues=0"]).contains("queues=0"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,fd=x"]).contains("fd=x"))
        XCTAssertTrue(error(["-netdev", "tap,id=t,colour=blue"]).contains("colour"))
        XCTAssertTrue(error(["-nic", "tap,model=e1000"]).contains("model=e1000"))
        XCTAssertTrue(error(["-device", "virtio-net-pci"]).contains("netdev= is required"))
        XCTAssertTrue(error(["-device", "virtio-net-pci,netdev=n,mac=01:00:5e:00:00:01"]).contains("multicast"))
        XCTAssertTrue(error(["-device", "virtio-net-pci,netdev=n,mac=52:54:00:12:34"]).contains("mac=52:54:00:12:34"))
        XCTAssertTrue(error(["-netdev", "user,id=u,hostfwd=tcp::x-:22"]).contains("hostfwd=tcp::x-:22"))
        XCTAssertTrue(error(["-netdev", "socket,id=s,listen=:1,connect=h:2"]).contains("exactly one"))
        XCTAssertTrue(error(["-netdev", "stream,id=s,addr.type=vsock"]).contains("addr.type=vsock"))
        let missing = try configuration(["-device", "virtio-net-pci,netdev=nope"])
        XCTAssertThrowsError(try missing.validate()) { XCTAssertTrue("\($0)".contains("id=nope")) }
        let twice = try configuration(["-netdev", "tap,id=n", "-device", "virtio-net-pci,netdev=n", "-device", "virtio-net-pci,netdev=n"])
        XCTAssertThrowsError(try twice.validate()) { XCTAssertTrue("\($0)".contains("already in use")) }
        let dup = try configuration(["-netdev", "tap,id=n", "-netdev", "tap,id=n"])
        XCTAssertThrowsError(try dup.validate()) { XCTAssertTrue("\($0)".contains("duplicate")) }
    }
}
