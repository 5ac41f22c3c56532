import Foundation
import XCTest

/// `keel vhost-user-scsi` as the back-end of a real front-end, booting the default guest under
/// tcg with shared memfd RAM: Keel's own `-device vhost-user-scsi-pci` and QEMU's. Linux's
/// virtio_scsi and sd drive Keel's SCSI target in another process: /dev/sda appears with the
/// image's size and Keel's INQUIRY strings and serial, and data crosses byte-identical both ways.
/// (`swift test --filter VirtioLinuxTests/testVhostUserSCSI`)
extension VirtioLinuxTests {
    func testVhostUserSCSIKeelFrontEndKeelBackEnd() throws {
        try checkVhostUserSCSI(frontEnd: runner)
    }

    func testVhostUserSCSIQEMUFrontEndKeelBackEnd() throws {
        guard let qemu = KeelRunner.which("qemu-system-x86_64") else {
            return XCTFail("qemu-system-x86_64 is not installed (scripts/install-dependencies.sh installs it)")
        }
        try checkVhostUserSCSI(frontEnd: KeelRunner(emulator: .qemu(binary: qemu, accel: "tcg")))
    }

    func checkVhostUserSCSI(frontEnd: KeelRunner, file: StaticString = #filePath, line: UInt = #line) throws {
        let keel = try TCGLinuxBootTests.keel()
        let (disk, data) = try makeDisk("vus.img", bytes: 2 << 20, seed: 21)
        let socket = "/tmp/keel-vus-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: keel.path)
        p.arguments = ["vhost-user-scsi", "--socket-path=\(socket)", "--blk-file=\(disk.path)", "--format=raw", "--serial=KEEL-VU"]
        let log = scratch.appendingPathComponent("backend.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: log)
        try p.run()
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(20)
        while access(socket, F_OK) != 0 && Date() < deadline && p.isRunning { usleep(50_000) }
        XCTAssertEqual(access(socket, F_OK), 0, "the back-end never listened at \(socket)", file: file, line: line)

        var o = options(["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
                         "-chardev", "socket,id=vus,path=\(socket)", "-device", "vhost-user-scsi-pci,chardev=vus"])
        o.memoryMiB = 512
        let pattern = "keel-guest-wrote-this-over-vhost-user-scsi"
        let commands = [
            "for i in $(seq 60); do [ -e /sys/block/sda ] && break; sleep 1; done",
            "cd /sys/block/sda",
            "echo sda:$(cat size):$(cat device/vendor):$(cat device/model):$(cat ro)",
            "echo sn=$(tail -c +5 device/vpd_pg80)",
            "echo a=$(dd if=/dev/sda bs=4096 skip=64 count=4 2>/dev/null|md5sum)",
            "printf '\(pattern)' > /tmp/p",
            "dd if=/tmp/p of=/dev/sda bs=512 seek=40 conv=notrunc,fsync; echo wa=$?",
            "echo ra=$(dd if=/dev/sda bs=512 skip=40 count=1 2>/dev/null | head -c 42)",
            "poweroff -f",
        ]
        let r = try frontEnd.run(o, timeout: 300, input: Data((commands.joined(separator: "\n") + "\n").utf8), inputAfter: "keel# ")
        let context = "\n" + r.stdout.suffix(4000) + "\n" + r.stderr.suffix(2000) + "\nback-end: " + ((try? String(contentsOf: log)) ?? "")
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)", file: file, line: line)
        let lines = r.lines
        XCTAssertTrue(lines.contains("sda:4096:KEEL :KEEL HARDDISK :0"), context, file: file, line: line)
        XCTAssertTrue(lines.contains("sn=KEEL-VU"), context, file: file, line: line)
        XCTAssertTrue(lines.contains("a=\(try md5(data[(256 << 10)..<((256 << 10) + 16384)])) -"), context, file: file, line: line)
        XCTAssertTrue(lines.contains("wa=0"), context, file: file, line: line)
        XCTAssertTrue(lines.contains("ra=\(pattern)"), context, file: file, line: line)

        p.terminate()
        p.waitUntilExit()
        var expected = data
        expected.replaceSubrange(40 * 512..<(40 * 512 + pattern.utf8.count), with: Data(pattern.utf8))
        XCTAssertEqual(try Data(contentsOf: disk), expected, "the image must hold exactly the guest's write", file: file, line: line)
        XCTAssertTrue(((try? String(contentsOf: log)) ?? "").contains("serving at \(socket) (1 LUN)"), context, file: file, line: line)
    }
}
