import Foundation
import XCTest

/// Debian's stock kernel drives Keel's virtio-pci devices under -accel tcg (issue 5's Linux-driver
/// tests): the initramfs loads virtio_pci, virtio_blk, virtio_console and virtio-rng, and a shell
/// on the serial console runs the checks. These boots need the release keel.
final class VirtioLinuxTests: XCTestCase {
    var guest: DefaultGuest!

    override func setUpWithError() throws {
        guest = try DefaultGuest(scratchPrefix: "keel-virtio-linux")
    }

    override func tearDownWithError() throws {
        guest?.removeScratch()
    }

    func runShell(_ commands: [String], extra: [String], whileRunning: (() throws -> Void)? = nil) throws -> RunResult {
        try guest.runShell(commands, extra: extra, whileRunning: whileRunning)
    }

    func makeDisk(_ name: String, bytes: Int, seed: UInt8) throws -> (URL, Data) {
        try guest.makeDisk(name, bytes: bytes, seed: seed)
    }

    func md5(_ data: Data) throws -> String { try guest.md5(data) }
    var runner: KeelRunner { guest.runner }
    var scratch: URL { guest.scratch }
    func options(_ extra: [String]) -> MachineOptions { guest.options(extra) }

    /// Two disks and a read-only third: sizes and serials in sysfs, host data read in the guest,
    /// guest writes flushed into the host file byte for byte, and writes to the read-only disk
    /// refused.
    func testBlockDisksSizeSerialDataAndReadOnly() throws {
        let (a, aData) = try makeDisk("a.img", bytes: 1 << 20, seed: 1)
        let (b, bData) = try makeDisk("b.img", bytes: 3 << 20, seed: 2)
        let (c, cData) = try makeDisk("c.img", bytes: 1 << 20, seed: 3)
        let extra = [
            "-drive", "file=\(a.path),if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0,serial=KEEL-A",
            "-drive", "file=\(b.path),if=none,id=d1,format=raw",
            "-device", "virtio-blk-pci,drive=d1,serial=KEEL-B",
            "-drive", "file=\(c.path),if=none,id=d2,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=d2,serial=KEEL-RO",
        ]
        let pattern = "keel-guest-wrote-this-0123456789"
        // Lines stay under ~75 characters: Keel's serial input drops bytes of longer bursts.
        let commands = [
            "cd /sys/block",
            "for d in vd?; do echo $d:$(cat $d/size):$(cat $d/serial):$(cat $d/ro); done",
            "echo a=$(dd if=/dev/vda bs=512 count=8 2>/dev/null | md5sum)",
            "echo b=$(dd if=/dev/vdb bs=4096 skip=256 count=4 2>/dev/null|md5sum)",
            "printf '\(pattern)' > /tmp/p",
            "dd if=/tmp/p of=/dev/vda bs=512 seek=16 conv=notrunc,fsync; echo wa=$?",
            "dd if=/dev/zero bs=4096 count=16 | tr '\\000' K > /tmp/k",
            "dd if=/tmp/k of=/dev/vdb bs=4096 seek=100 conv=notrunc,fsync; echo wb=$?",
            "sync",
            "dd if=/tmp/p of=/dev/vdc conv=notrunc,fsync; echo wc=$?",
        ]
        let r = try runShell(commands, extra: extra)
        let lines = r.lines
        let context = "\n" + r.stdout.suffix(4000)
        XCTAssertTrue(lines.contains("vda:2048:KEEL-A:0"), context)
        XCTAssertTrue(lines.contains("vdb:6144:KEEL-B:0"), context)
        XCTAssertTrue(lines.contains("vdc:2048:KEEL-RO:1"), context)
        XCTAssertTrue(lines.contains("a=\(try md5(aData.prefix(4096))) -"), context)
        XCTAssertTrue(lines.contains("b=\(try md5(bData[(1 << 20)..<((1 << 20) + 16384)])) -"), context)
        XCTAssertTrue(lines.contains("wa=0"), context)
        XCTAssertTrue(lines.contains("wb=0"), context)
        XCTAssertTrue(lines.contains("wc=1"), "a write to the read-only disk must fail:\(context)")
        // Linux's block layer refuses writes to a read-only disk with EPERM.
        XCTAssertTrue(r.stdout.contains("dd: error writing '/dev/vdc': Operation not permitted"), context)

        var aExpected = aData
        aExpected.replaceSubrange(8192..<(8192 + pattern.utf8.count), with: Data(pattern.utf8))
        XCTAssertEqual(try Data(contentsOf: a), aExpected, "vda's host file must hold exactly the guest's write")
        var bExpected = bData
        bExpected.replaceSubrange(409_600..<(409_600 + 65_536), with: Data(repeating: UInt8(ascii: "K"), count: 65_536))
        XCTAssertEqual(try Data(contentsOf: b), bExpected, "vdb's host file must hold exactly the guest's write")
        XCTAssertEqual(try Data(contentsOf: c), cData, "the read-only disk's file must be unchanged")
    }

    /// virtio-rng is the current hw_random source and /dev/hwrng gives bytes.
    func testHWRNGGivesBytes() throws {
        let commands = [
            "cd /sys/class/misc/hw_random",
            "echo rng=$(cat rng_current)",
            "echo bytes=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null|od -An -tx1)",
        ]
        let r = try runShell(commands, extra: ["-device", "virtio-rng-pci"])
        let context = "\n" + r.stdout.suffix(3000)
        XCTAssertTrue(r.lines.contains { $0.hasPrefix("rng=virtio_rng") }, context)
        guard let line = r.lines.first(where: { $0.hasPrefix("bytes=") }) else { return XCTFail("no bytes= line:\(context)") }
        let bytes = line.dropFirst("bytes=".count).split(separator: " ")
        XCTAssertEqual(bytes.count, 16, "/dev/hwrng must give 16 bytes:\(context)")
        XCTAssertTrue(bytes.allSatisfy { $0.count == 2 && UInt8($0, radix: 16) != nil }, line)
        XCTAssertFalse(bytes.allSatisfy { $0 == "00" }, "16 zero bytes are not random: \(line)")
    }

    /// hvc0 (virtconsole on a unix-socket chardev) carries a line each way. The guest keeps hvc0
    /// open across both directions: the host's line is sent once the guest's has arrived.
    func testHVC0RoundTripOverAUnixSocket() throws {
        let socket = "/tmp/keel-vl-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }
        let extra = ["-device", "virtio-serial-pci", "-device", "virtconsole,chardev=c0",
                     "-chardev", "socket,id=c0,path=\(socket),server=on,wait=off"]
        let commands = ["exec 3<>/dev/hvc0; echo hello-hvc >&3; read line <&3; echo got:$line"]
        var hello = "", echoed = ""
        let r = try runShell(commands, extra: extra, whileRunning: {
            let client = try UnixSocketClient(path: socket, timeout: 30)
            hello = client.receive(until: "hello-hvc", timeout: 120)
            try client.send(Data("from-host\n".utf8))
            // The tty echoes what it reads; wait for it so the line has reached the guest.
            echoed = client.receive(until: "from-host", timeout: 60)
        })
        let context = "\n" + r.stdout.suffix(3000)
        XCTAssertTrue(hello.contains("hello-hvc"), "the guest's line did not reach the socket: \(hello.debugDescription)\(context)")
        XCTAssertTrue(r.lines.contains("got:from-host"), "the host's line did not reach the guest (echo: \(echoed.debugDescription)):\(context)")
    }
}
