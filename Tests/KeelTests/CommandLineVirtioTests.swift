@testable import KeelKit
import Loop
import Machine
import XCTest

final class CommandLineVirtioTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args).self; return "no error" } catch { return "\(error)" }
    }

    func testDriveIfNoneWithDevice() throws {
        let c = try configuration(["-drive", "file=/d.img,if=none,id=d0,format=raw,cache=none,aio=io_uring,readonly=on",
                                   "-object", "iothread,id=io0",
                                   "-device", "virtio-blk-pci,drive=d0,num-queues=4,serial=SN1,iothread=io0",
                                   "-device", "virtio-rng-pci"])
        var d = DriveConfiguration(id: "d0", file: "/d.img")
        d.format = "raw"; d.interface = .none; d.cache = .none; d.aio = .io_uring; d.readOnly = true
        XCTAssertEqual(c.drives, [d])
        var b = VirtioBlockConfiguration(drive: "d0")
        b.queueCount = 4; b.serial = "SN1"; b.iothread = "io0"
        XCTAssertEqual(c.pciDevices, [.virtioBlock(b), .virtioRNG])
        XCTAssertNoThrow(try c.validate())
    }

    /// -object iothread's polling properties reach the configuration; bad values are named.
    func testIOThreadPollingProperties() throws {
        let c = try configuration(["-object", "iothread,id=io0,poll-max-ns=0", "-object", "iothread,id=io1,poll-max-ns=100000,poll-grow=4,poll-shrink=2",
                                   "-object", "iothread,id=io2"])
        XCTAssertEqual(c.iothreadPolling["io0"], PollParameters(maxNanoseconds: 0))
        XCTAssertEqual(c.iothreadPolling["io1"], PollParameters(maxNanoseconds: 100_000, grow: 4, shrink: 2))
        XCTAssertEqual(c.iothreadPolling["io2"], PollParameters(maxNanoseconds: 32768, grow: 0, shrink: 0))
        XCTAssertTrue(error(["-object", "iothread,id=io0,poll-max-ns=-1"]).contains("poll-max-ns=-1"))
        XCTAssertTrue(error(["-object", "iothread,id=io0,poll-grow=x"]).contains("poll-grow=x"))
    }

    func testDriveIfVirtioMakesItsOwnDevice() throws {
        let c = try configuration(["-drive", "file=/a.img,if=virtio", "-drive", "file=/b.img,if=virtio,id=b"])
        XCTAssertEqual(c.drives.map(\.id), ["drive0", "b"])
        XCTAssertEqual(c.pciDevices, [.virtioBlock(.init(drive: "drive0")), .virtioBlock(.init(drive: "b"))])
    }

    func testBadValuesAreNamed() throws {
        XCTAssertTrue(error(["-drive", "if=virtio"]).contains("no file="))
        XCTAssertTrue(error(["-drive", "file=/a,if=scsi"]).contains("if=scsi"))
        XCTAssertTrue(error(["-drive", "file=/a,cache=fast"]).contains("cache=fast"))
        XCTAssertTrue(error(["-device", "virtio-blk-pci"]).contains("drive= is required"))
        XCTAssertTrue(error(["-device", "virtio-blk-pci,drive=x,iothread=nope"]).contains("iothread=nope"))
        XCTAssertTrue(error(["-device", "virtio-blk-pci,drive=x,serial=012345678901234567890"]).contains("longer than 20"))
        XCTAssertTrue(error(["-object", "memory-backend-ram,id=m"]).contains("memory-backend-ram"))
        let c = try configuration(["-device", "virtio-blk-pci,drive=missing"])
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("id=missing")) }
        let twice = try configuration(["-drive", "file=/a,if=none,id=x", "-device", "virtio-blk-pci,drive=x", "-device", "virtio-blk-pci,drive=x"])
        XCTAssertThrowsError(try twice.validate()) { XCTAssertTrue("\($0)".contains("already in use")) }
    }
}
