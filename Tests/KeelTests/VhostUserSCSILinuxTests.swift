import Foundation
import XCTest

/// `keel vhost-user-scsi` as the back-end of a real front-end: QEMU's vhost-user-scsi-pci under
/// -accel tcg with shared memfd RAM, booting the default guest. Linux's virtio_scsi and sd drive
/// Keel's SCSI target in another process: /dev/sda appears with the image's size and Keel's
/// INQUIRY strings, and data crosses byte-identical both ways.
/// (`swift test --filter VirtioLinuxTests/testVhostUserSCSI`)
extension VirtioLinuxTests {
    func testVhostUserSCSIBackendUnderQEMUFrontEnd() throws {
        let keel = try TCGLinuxBootTests.keel()
        guard keel.release else { throw TCGLinuxShellTests.NoReleaseKeel() }
        guard let qemu = KeelRunner.which("qemu-system-x86_64") else {
            return XCTFail("qemu-system-x86_64 is not installed (scripts/install-dependencies.sh installs it)")
        }
        let (disk, data) = try makeDisk("vus.img", bytes: 2 << 20, seed: 21)
        let socket = "/tmp/keel-vus-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: keel.path)
        p.arguments = ["vhost-user-scsi", "--socket-path=\(socket)", "--blk-file=\(disk.path)", "--format=raw", "--serial=KEEL-VU"]
        let stderrPipe = Pipe()
        p.standardError = stderrPipe
        try p.run()
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(20)
        while access(socket, F_OK) != 0 && Date() < deadline && p.isRunning { usleep(50_000) }
        XCTAssertEqual(access(socket, F_OK), 0, "the back-end never listened at \(socket)")

        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
                            "-chardev", "socket,id=vus,path=\(socket)", "-device", "vhost-user-scsi-pci,chardev=vus"]
        let pattern = "keel-guest-wrote-this-over-vhost-user-scsi"
        let commands = [
            "for i in $(seq 60); do [ -e /sys/block/sda ] && break; sleep 1; done",
            "cd /sys/block/sda",
            "echo sda:$(cat size):$(cat device/vendor):$(cat device/model):$(cat ro)",
            "echo sn=$(tail -c +5 device/vpd_pg80)",
            "echo a=$(dd if=/dev/sda bs=4096 skip=64 count=4 2>/dev/null|md5sum)",
            "printf '\(pattern)' > /tmp/p",
            "dd if=/tmp/p of=/dev/sda bs=512 seek=40 conv=notrunc,fsync; echo wa=$?",
            "poweroff -f",
        ]
        let runner = KeelRunner(emulator: .qemu(binary: qemu, accel: "tcg"))
        let r = try runner.run(o, timeout: 300, input: Data((commands.joined(separator: "\n") + "\n").utf8), inputAfter: "keel# ")
        let context = "\n" + r.stdout.suffix(4000) + "\n" + r.stderr.suffix(2000)
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)")
        let lines = r.lines
        XCTAssertTrue(lines.contains("sda:4096:KEEL :KEEL HARDDISK :0"), context)
        XCTAssertTrue(lines.contains("sn=KEEL-VU"), context)
        XCTAssertTrue(lines.contains("a=\(try md5(data[(256 << 10)..<((256 << 10) + 16384)])) -"), context)
        XCTAssertTrue(lines.contains("wa=0"), context)

        p.terminate()
        p.waitUntilExit()
        var expected = data
        expected.replaceSubrange(40 * 512..<(40 * 512 + pattern.utf8.count), with: Data(pattern.utf8))
        XCTAssertEqual(try Data(contentsOf: disk), expected, "the image must hold exactly the guest's write")
        let log = String(decoding: stderrPipe.fileHandleForReading.availableData, as: UTF8.self)
        XCTAssertTrue(log.contains("listening on"), log)
    }
}
