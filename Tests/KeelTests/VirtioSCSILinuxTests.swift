import Foundation
import XCTest

/// Debian's stock kernel drives Keel's virtio-scsi under -accel tcg: virtio_scsi, scsi_mod and
/// sd_mod find the scsi-hd disks, and a shell on the serial console checks what sd made of
/// INQUIRY, READ CAPACITY, MODE SENSE and the VPD pages, then moves data both ways
/// (`swift test --filter VirtioLinuxTests/testSCSI`).
extension VirtioLinuxTests {
    /// Three LUNs on two targets: sizes, INQUIRY strings, cache and provisioning modes in sysfs;
    /// host data read in the guest; guest writes (fsync: SYNCHRONIZE CACHE) in the host files byte
    /// for byte; the read-only LUN (MODE SENSE's WP) refuses writes and its file is unchanged;
    /// a discard (UNMAP) leaves zeroes in the file.
    func testSCSIDisksInquiryCapacityDataAndReadOnly() throws {
        let (a, aData) = try makeDisk("a.img", bytes: 1 << 20, seed: 11)
        let (b, bData) = try makeDisk("b.img", bytes: 3 << 20, seed: 12)
        let (c, cData) = try makeDisk("c.img", bytes: 1 << 20, seed: 13)
        let extra = [
            "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", "file=\(a.path),if=none,id=d0,format=raw",
            "-device", "scsi-hd,drive=d0,bus=scsi0.0,scsi-id=0,lun=0,serial=KEEL-SA",
            "-drive", "file=\(b.path),if=none,id=d1,format=raw",
            "-device", "scsi-hd,drive=d1,bus=scsi0.0,scsi-id=2,lun=3",
            "-drive", "file=\(c.path),if=none,id=d2,format=raw,readonly=on",
            "-device", "scsi-hd,drive=d2,bus=scsi0.0,scsi-id=0,lun=1",
        ]
        let pattern = "keel-guest-wrote-this-over-scsi-0123456789"
        let commands = [
            // The SCSI scan is asynchronous: wait for the three disks.
            "for i in $(seq 60); do [ $(ls /sys/block | grep -c sd) = 3 ] && break; sleep 1; done",
            "cd /sys/class/scsi_disk",
            "for d in *; do s=$d/device; echo $d:$(cat $s/block/*/size):$(cat $s/vendor):$(cat $s/model):$(cat $s/rev):$(cat $s/block/*/ro):$(cat $d/cache_type):$(cat $d/provisioning_mode); done",
            "A=/dev/$(ls *:0:0:0/device/block); B=/dev/$(ls *:0:2:3/device/block); C=/dev/$(ls *:0:0:1/device/block)",
            "echo sa=$(tail -c +5 *:0:0:0/device/vpd_pg80)",
            "echo fua=$(cat *:0:0:0/FUA)",
            "echo a=$(dd if=$A bs=512 count=8 2>/dev/null | md5sum)",
            "echo b=$(dd if=$B bs=4096 skip=256 count=4 2>/dev/null|md5sum)",
            "printf '\(pattern)' > /tmp/p",
            "dd if=/tmp/p of=$A bs=512 seek=16 conv=notrunc,fsync; echo wa=$?",
            "dd if=/dev/zero bs=4096 count=16 | tr '\\000' K > /tmp/k",
            "dd if=/tmp/k of=$B bs=4096 seek=100 conv=notrunc,fsync; echo wb=$?",
            "echo rb=$(dd if=$B bs=4096 skip=100 count=16 2>/dev/null|md5sum)",
            "dd if=/tmp/p of=$C conv=notrunc,fsync; echo wc=$?",
            // UNMAP: sd's discard goes out as UNMAP, the raw file gets a hole that reads as zeroes.
            "echo dmax=$(cat /sys/block/${B#/dev/}/queue/discard_max_bytes)",
            "blkdiscard -o 2097152 -l 65536 $B; echo dc=$?",
            "echo dz=$(dd if=$B bs=65536 skip=32 count=1 2>/dev/null|md5sum)",
        ]
        let r = try runShell(commands, extra: extra)
        let lines = r.lines
        // Unquoted $(cat) splits the space-padded INQUIRY strings; echo joins them with one space.
        let context = "\n" + r.stdout.suffix(5000)
        XCTAssertTrue(lines.contains { $0.hasSuffix(":0:0:0:2048:KEEL :KEEL HARDDISK :1.0 :0:write back:unmap") }, context)
        XCTAssertTrue(lines.contains { $0.hasSuffix(":0:2:3:6144:KEEL :KEEL HARDDISK :1.0 :0:write back:unmap") }, context)
        XCTAssertTrue(lines.contains { $0.contains(":0:0:1:2048:KEEL :KEEL HARDDISK :1.0 :1:") }, context)
        XCTAssertTrue(lines.contains("sa=KEEL-SA"), context)
        XCTAssertTrue(lines.contains("fua=1"), "MODE SENSE's DPOFUA: sd sends FUA writes:\(context)")
        XCTAssertTrue(lines.contains("a=\(try md5(aData.prefix(4096))) -"), context)
        XCTAssertTrue(lines.contains("b=\(try md5(bData[(1 << 20)..<((1 << 20) + 16384)])) -"), context)
        XCTAssertTrue(lines.contains("wa=0"), context)
        XCTAssertTrue(lines.contains("wb=0"), context)
        XCTAssertTrue(lines.contains("rb=\(try md5(Data(repeating: UInt8(ascii: "K"), count: 65_536))) -"), context)
        XCTAssertTrue(lines.contains("wc=1"), "a write to the read-only LUN must fail:\(context)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("dmax=") && $0 != "dmax=0" }, context)
        XCTAssertTrue(lines.contains("dc=0"), context)
        XCTAssertTrue(lines.contains("dz=\(try md5(Data(count: 65_536))) -"), context)

        var aExpected = aData
        aExpected.replaceSubrange(8192..<(8192 + pattern.utf8.count), with: Data(pattern.utf8))
        XCTAssertEqual(try Data(contentsOf: a), aExpected, "LUN 0's host file must hold exactly the guest's write")
        var bExpected = bData
        bExpected.replaceSubrange(409_600..<(409_600 + 65_536), with: Data(repeating: UInt8(ascii: "K"), count: 65_536))
        bExpected.replaceSubrange((2 << 20)..<((2 << 20) + 65_536), with: Data(count: 65_536))
        XCTAssertEqual(try Data(contentsOf: b), bExpected, "target 2 LUN 3's host file must hold exactly the guest's write")
        XCTAssertEqual(try Data(contentsOf: c), cData, "the read-only LUN's file must be unchanged")
    }

    /// The controller on an iothread with two request queues, its LUN a qcow2 image made by
    /// `keel img create`: sd sees the size, data written with fsync reads back, and after
    /// power-off the image holds it (read back with `keel img convert` to raw).
    func testSCSIOnIOThreadWithQcow2LUN() throws {
        let keel = try TCGLinuxBootTests.keel()
        let image = scratch.appendingPathComponent("q.qcow2"), raw = scratch.appendingPathComponent("q.raw")
        let create = try KeelRunner.runCommand(executable: keel.path, arguments: ["img", "create", "-f", "qcow2", image.path, "4M"], timeout: 30)
        XCTAssertEqual(create.status, 0, create.stderr)
        let extra = ["-object", "iothread,id=io0",
                     "-device", "virtio-scsi-pci,id=scsi0,num_queues=2,iothread=io0",
                     "-drive", "file=\(image.path),if=none,id=q0,format=qcow2",
                     "-device", "scsi-hd,drive=q0,bus=scsi0.0"]
        let pattern = "keel-qcow2-lun-on-an-iothread"
        let commands = [
            "for i in $(seq 60); do [ -e /sys/block/sda ] && break; sleep 1; done",
            "echo sz=$(cat /sys/block/sda/size)",
            "echo z=$(dd if=/dev/sda bs=4096 count=1 skip=100 2>/dev/null|md5sum)",
            "printf '\(pattern)' > /tmp/p",
            "dd if=/tmp/p of=/dev/sda bs=512 seek=3000 conv=notrunc,fsync; echo wq=$?",
            "echo 3 > /proc/sys/vm/drop_caches",
            "echo rq=$(dd if=/dev/sda bs=512 skip=3000 count=1 2>/dev/null | head -c \(pattern.utf8.count))",
        ]
        let r = try runShell(commands, extra: extra)
        let lines = r.lines
        let context = "\n" + r.stdout.suffix(4000)
        // (Linux uses min(num_queues, CPUs) request queues: one here, so queue 3 stays idle.)
        XCTAssertTrue(lines.contains("sz=8192"), context)
        XCTAssertTrue(lines.contains("z=\(try md5(Data(count: 4096))) -"), context)
        XCTAssertTrue(lines.contains("wq=0"), context)
        XCTAssertTrue(lines.contains("rq=\(pattern)"), context)
        let convert = try KeelRunner.runCommand(executable: keel.path, arguments: ["img", "convert", "-O", "raw", image.path, raw.path], timeout: 60)
        XCTAssertEqual(convert.status, 0, convert.stderr)
        let bytes = try Data(contentsOf: raw)
        XCTAssertEqual(bytes.count, 4 << 20)
        XCTAssertEqual(bytes[(3000 * 512)..<(3000 * 512 + pattern.utf8.count)], Data(pattern.utf8), "the qcow2 image must hold the guest's write")
    }
}
