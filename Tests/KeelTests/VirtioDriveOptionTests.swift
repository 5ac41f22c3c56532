import Foundation
@testable import KeelKit
import Machine
import XCTest

/// -drive and virtio-blk-pci options that reach the Block backends and the kvm fast paths.
final class VirtioDriveOptionTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func testFormatIsProbedWhenNotGiven() throws {
        let c = try configuration(["-drive", "file=/d.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"])
        XCTAssertNil(c.drives.first?.format)
        XCTAssertNoThrow(try c.validate())
        let q = try configuration(["-drive", "file=/d.img,if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0"])
        XCTAssertEqual(q.drives.first?.format, "qcow2")
        let bad = try configuration(["-drive", "file=/d.img,if=none,id=d0,format=vmdk", "-device", "virtio-blk-pci,drive=d0"])
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("format=vmdk"), "\($0)") }
    }

    func testIOEventFDProperty() throws {
        let on = try configuration(["-drive", "file=/d.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"])
        guard case .virtioBlock(let b)? = on.pciDevices.first else { return XCTFail("no virtio-blk") }
        XCTAssertTrue(b.ioeventfd)
        let off = try configuration(["-drive", "file=/d.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,ioeventfd=off"])
        guard case .virtioBlock(let o)? = off.pciDevices.first else { return XCTFail("no virtio-blk") }
        XCTAssertFalse(o.ioeventfd)
        XCTAssertThrowsError(try configuration(["-drive", "file=/d.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,ioeventfd=maybe"]))
    }

    /// A drive that cannot be opened is a one-line error naming the file, before anything runs.
    func testMissingOrCorruptImageIsAClearError() throws {
        let runner = KeelRunner(emulator: .keel(binary: PackagePaths.root.appendingPathComponent(".build/debug/keel").path), keelAccel: "tcg")
        guard FileManager.default.isExecutableFile(atPath: runner.binary) else { throw XCTSkip("run `swift build` first") }
        let kernel = try GuestBuilder.shared.image(for: .hello)
        let missing = "/nonexistent/keel-disk.img"
        let r = try KeelRunner.runCommand(executable: runner.binary, arguments: [
            "-accel", "tcg", "-kernel", kernel.path, "-nographic", "-drive", "file=\(missing),if=virtio"], timeout: 30)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.hasPrefix("keel: -drive file=\(missing): "), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)

        let bogus = FileManager.default.temporaryDirectory.appendingPathComponent("keel-bogus-\(UUID().uuidString).qcow2")
        defer { try? FileManager.default.removeItem(at: bogus) }
        var header = Data("QFI\u{fb}".utf8)
        header.append(Data(repeating: 0xff, count: 1020))
        try header.write(to: bogus)
        let q = try KeelRunner.runCommand(executable: runner.binary, arguments: [
            "-accel", "tcg", "-kernel", kernel.path, "-nographic", "-drive", "file=\(bogus.path),if=virtio,format=qcow2"], timeout: 30)
        XCTAssertEqual(q.status, 1)
        XCTAssertTrue(q.stderr.hasPrefix("keel: -drive file=\(bogus.path): "), q.stderr)
    }
}
