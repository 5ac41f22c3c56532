@testable import KeelKit
import Machine
import XCTest

final class CommandLineSCSITests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args); return "no error" } catch { return "\(error)" }
    }

    func validationError(_ args: [String]) throws -> String {
        do { try configuration(args).validate(); return "no error" } catch { return "\(error)" }
    }

    func testControllerAndDisksAsQEMUSpellsThem() throws {
        let c = try configuration(["-device", "virtio-scsi-pci,id=scsi0,num_queues=2",
                                   "-device", "virtio-scsi-pci,id=scsi1",
                                   "-drive", "file=/a.img,if=none,id=d0", "-drive", "file=/b.img,if=none,id=d1,readonly=on",
                                   "-drive", "file=/c.img,if=none,id=d2",
                                   "-device", "scsi-hd,drive=d0,bus=scsi0.0,scsi-id=1,lun=2,serial=SN",
                                   "-device", "scsi-hd,drive=d1,bus=scsi0.0",
                                   "-device", "scsi-hd,drive=d2"])
        var s0 = VirtioSCSIConfiguration(id: "scsi0"); s0.queueCount = 2
        var a = VirtioSCSIConfiguration.Disk(drive: "d0"); a.target = 1; a.lun = 2; a.serial = "SN"
        s0.disks = [a, .init(drive: "d1")]
        var s1 = VirtioSCSIConfiguration(id: "scsi1")
        s1.disks = [.init(drive: "d2")]   // no bus=: the most recent controller
        XCTAssertEqual(c.pciDevices, [.virtioSCSI(s0), .virtioSCSI(s1)])
        XCTAssertNoThrow(try c.validate())
    }

    func testBadValuesAreNamed() throws {
        XCTAssertTrue(error(["-device", "scsi-hd,drive=d0"]).contains("no virtio-scsi-pci before it"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd,drive=d0,bus=t.0"]).contains("no SCSI bus t.0"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd"]).contains("drive= is required"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd,drive=d,scsi-id=256"]).contains("scsi-id"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd,drive=d,lun=16384"]).contains("lun"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s,num_queues=65"]).contains("num_queues"))
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,id=s", "-device", "virtio-scsi-pci,id=s"]).contains("id=s is already used"))
        let io = error(["-device", "virtio-scsi-pci,iothread=io9"])
        XCTAssertTrue(io.contains("iothread=io9"), io)
        XCTAssertTrue(error(["-device", "virtio-scsi-pci,wat=1"]).contains("wat"))
        XCTAssertTrue(try validationError(["-device", "virtio-scsi-pci,id=s", "-device", "scsi-hd,drive=nope"]).contains("id=nope"))
        XCTAssertTrue(try validationError(["-drive", "file=/a,if=virtio,id=d", "-device", "virtio-scsi-pci,id=s",
                                           "-device", "scsi-hd,drive=d"]).contains("needs if=none"))
        XCTAssertTrue(try validationError(["-drive", "file=/a,if=none,id=d", "-device", "virtio-blk-pci,drive=d", "-device", "virtio-scsi-pci,id=s",
                                           "-device", "scsi-hd,drive=d"]).contains("already in use"))
        XCTAssertTrue(try validationError(["-drive", "file=/a,if=none,id=d", "-drive", "file=/b,if=none,id=e", "-device", "virtio-scsi-pci,id=s",
                                           "-device", "scsi-hd,drive=d,scsi-id=3", "-device", "scsi-hd,drive=e,scsi-id=3"]).contains("already taken"))
    }

    func testVhostUserSCSIDevice() throws {
        let c = try configuration(["-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-machine", "memory-backend=mem",
                                   "-chardev", "socket,id=c0,path=/tmp/vus.sock", "-device", "vhost-user-scsi-pci,chardev=c0,num_queues=2"])
        guard case .vhostUserSCSI(let v) = c.pciDevices.first else { return XCTFail("\(c.pciDevices)") }
        XCTAssertEqual(v.path, "/tmp/vus.sock"); XCTAssertEqual(v.queueCount, 2); XCTAssertFalse(v.server)
        XCTAssertNoThrow(try c.validate())
        XCTAssertTrue(try validationError(["-chardev", "socket,id=c0,path=/tmp/vus.sock", "-device", "vhost-user-scsi-pci,chardev=c0"])
            .contains("share=on"))
        XCTAssertTrue(error(["-device", "vhost-user-scsi-pci"]).contains("chardev= is required"))
        XCTAssertTrue(error(["-device", "vhost-user-scsi-pci,chardev=zz"]).contains("no -chardev with id=zz"))
    }

    func testBackendOptions() throws {
        XCTAssertNil(try VhostUserSCSIMain.parse(["--help"]))
        let o = try XCTUnwrap(VhostUserSCSIMain.parse(["-s", "/tmp/s", "--blk-file=/a", "-b", "/b", "-r", "--num-queues=3", "--format=qcow2"]))
        XCTAssertEqual(o.socketPath, "/tmp/s"); XCTAssertEqual(o.files, ["/a", "/b"]); XCTAssertTrue(o.readOnly); XCTAssertEqual(o.queueCount, 3)
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["--blk-file=/a"])) { XCTAssertTrue("\($0)".contains("--socket-path")) }
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["--socket-path=/s"])) { XCTAssertTrue("\($0)".contains("--blk-file")) }
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["-s", "/s", "-b", "/a", "--num-queues=0"])) { XCTAssertTrue("\($0)".contains("--num-queues=0")) }
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["-s", "/s", "-b", "/a", "--format=vmdk"])) { XCTAssertTrue("\($0)".contains("vmdk")) }
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["-s", "/s", "-b", "/a", "--bogus"])) { XCTAssertTrue("\($0)".contains("--bogus")) }
        XCTAssertThrowsError(try VhostUserSCSIMain.parse(["-s"])) { XCTAssertTrue("\($0)".contains("needs a value")) }
    }
}
