import Foundation
import XCTest

/// Debian's kernel under -accel tcg on disks served by an iothread, through io_uring and with
/// O_DIRECT on the host (cache=none), and QMP stop/cont pausing the disk. Host files that need
/// O_DIRECT live in the build directory (on the real disk, as before Linux 6.6 tmpfs had none).
final class VirtioIOThreadLinuxTests: XCTestCase {
    var guest: DefaultGuest!
    var runner: KeelRunner { guest.runner }
    var scratch: URL { guest.scratch }
    var onDisk: URL!

    override func setUpWithError() throws {
        guest = try DefaultGuest(scratchPrefix: "keel-iothread-linux")
        onDisk = PackagePaths.root.appendingPathComponent(".build/keel-iothread-linux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: onDisk, withIntermediateDirectories: true)
        setenv("KEEL_DEBUG_VIRTIO", "1", 1)
    }

    override func tearDownWithError() throws {
        unsetenv("KEEL_DEBUG_VIRTIO")
        guest?.removeScratch()
        if let onDisk { try? FileManager.default.removeItem(at: onDisk) }
    }

    func options(_ extra: [String]) -> MachineOptions { guest.options(extra) }

    func makeDisk(_ url: URL, bytes: Int, seed: UInt8) throws -> Data {
        let data = DefaultGuest.pattern(bytes: bytes, seed: seed)
        try data.write(to: url)
        return data
    }

    func md5(_ data: Data) throws -> String { try guest.md5(data) }

    /// KEEL_DEBUG_VIRTIO's line for virtio-pci device `index`.
    func statistics(_ r: RunResult, device index: Int) -> String {
        r.stderr.split(separator: "\n").first { $0.contains("virtio-pci \(index) (type 2)") }.map(String.init) ?? ""
    }

    /// Three disks: an iothread with aio=threads, an iothread with aio=io_uring and cache=none,
    /// and the main loop with cache=none. Host data reads back in the guest (O_DIRECT reads on
    /// the guest side too), the guest's writes (page cache + fsync, and O_DIRECT) land byte for
    /// byte in the host files, and the iothread handled its disks' requests.
    func testIOThreadIOUringAndDirectIO() throws {
        let a = scratch.appendingPathComponent("a.img"), b = onDisk.appendingPathComponent("b.img")
        let c = onDisk.appendingPathComponent("c.img")
        let aData = try makeDisk(a, bytes: 2 << 20, seed: 11)
        let bData = try makeDisk(b, bytes: 4 << 20, seed: 12)
        let cData = try makeDisk(c, bytes: 2 << 20, seed: 13)
        let extra = [
            "-object", "iothread,id=io0",
            "-drive", "file=\(a.path),if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0,serial=IO-A,iothread=io0",
            "-drive", "file=\(b.path),if=none,id=d1,format=raw,aio=io_uring,cache=none",
            "-device", "virtio-blk-pci,drive=d1,serial=IO-B,iothread=io0",
            "-drive", "file=\(c.path),if=none,id=d2,format=raw,cache=none",
            "-device", "virtio-blk-pci,drive=d2,serial=IO-C",
        ]
        let commands = [
            "cd /sys/block",
            "for d in vd?; do echo $d:$(cat $d/size):$(cat $d/serial); done",
            "echo a=$(dd if=/dev/vda bs=4096 count=4 2>/dev/null|md5sum)",
            "echo b=$(dd if=/dev/vdb bs=1M count=2 iflag=direct 2>/dev/null|md5sum)",
            "echo c=$(dd if=/dev/vdc bs=64k count=8 iflag=direct 2>/dev/null|md5sum)",
            "dd if=/dev/zero bs=4096 count=64 | tr '\\000' Q > /tmp/q",
            "dd if=/tmp/q of=/dev/vda bs=4096 seek=8 conv=notrunc,fsync; echo wa=$?",
            "dd if=/tmp/q of=/dev/vdb bs=64k seek=40 oflag=direct; echo wb=$?",
            "dd if=/tmp/q of=/dev/vdc bs=4096 seek=3 oflag=direct conv=fsync; echo wc=$?",
            "echo rb=$(dd if=/dev/vdb bs=64k skip=40 count=4 iflag=direct|md5sum)",
            "sync",
        ]
        let input = (commands + ["poweroff -f"]).joined(separator: "\n") + "\n"
        let r = try runner.run(options(extra), timeout: 300, input: Data(input.utf8), inputAfter: "keel# ", inputLineDelay: 1.5)
        let context = "\n" + r.stdout.suffix(4000) + "\n" + r.stderr.suffix(2000)
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)")
        XCTAssertEqual(r.status, 0, context)
        let lines = r.lines
        XCTAssertTrue(lines.contains("vda:4096:IO-A"), context)
        XCTAssertTrue(lines.contains("vdb:8192:IO-B"), context)
        XCTAssertTrue(lines.contains("vdc:4096:IO-C"), context)
        XCTAssertTrue(lines.contains("a=\(try md5(aData.prefix(16384))) -"), context)
        XCTAssertTrue(lines.contains("b=\(try md5(bData.prefix(2 << 20))) -"), context)
        XCTAssertTrue(lines.contains("c=\(try md5(cData.prefix(8 << 16))) -"), context)
        XCTAssertTrue(lines.contains("wa=0"), context)
        XCTAssertTrue(lines.contains("wb=0"), context)
        XCTAssertTrue(lines.contains("wc=0"), context)
        let q = Data(repeating: UInt8(ascii: "Q"), count: 262_144)
        XCTAssertTrue(lines.contains("rb=\(try md5(q)) -"), context)

        var aExpected = aData; aExpected.replaceSubrange(32768..<(32768 + q.count), with: q)
        var bExpected = bData; bExpected.replaceSubrange(2_621_440..<(2_621_440 + q.count), with: q)
        var cExpected = cData; cExpected.replaceSubrange(12288..<(12288 + q.count), with: q)
        XCTAssertEqual(try Data(contentsOf: a), aExpected, "vda's host file must hold exactly the guest's write")
        XCTAssertEqual(try Data(contentsOf: b), bExpected, "vdb's host file must hold exactly the guest's O_DIRECT write")
        XCTAssertEqual(try Data(contentsOf: c), cExpected, "vdc's host file must hold exactly the guest's O_DIRECT write")

        for i in 0..<2 {
            let s = statistics(r, device: i)
            XCTAssertTrue(s.contains("notify thread 'iothread io0'"), "disk \(i) was not served by the iothread: \(s)\(context)")
        }
        let ring = statistics(r, device: 1)
        for i in 0..<3 { print(statistics(r, device: i)) }
        guard let ops = ring.components(separatedBy: "io_uring operations ").dropFirst().first.flatMap({ Int($0.prefix { $0.isNumber }) }) else {
            return XCTFail("no io_uring count for vdb: \(ring)")
        }
        // Linux's direct I/O buffers are page-aligned: the 1 MiB and 64 KiB transfers go to the ring.
        XCTAssertGreaterThanOrEqual(ops, 8, ring)
        XCTAssertTrue(statistics(r, device: 2).contains("notify thread 'keel'") || statistics(r, device: 2).contains("CPU"),
                      "the main-loop disk: \(statistics(r, device: 2))")
    }

    /// A host file where O_DIRECT cannot open with cache=none: a one-line error naming the file
    /// and cache=none. (tmpfs has O_DIRECT since Linux 6.6; procfs files still refuse it.)
    func testCacheNoneWithoutDirectIOFailsWithAClearError() throws {
        let r = try runner.run(options(["-drive", "file=/proc/version,if=virtio,format=raw,readonly=on,cache=none"]), timeout: 30)
        XCTAssertEqual(r.status, 1, r.stderr)
        let message = r.stderr.split(separator: "\n").filter { $0.hasPrefix("keel: ") }
        XCTAssertEqual(message.count, 1, r.stderr)
        XCTAssertTrue(message.first?.contains("/proc/version") == true, r.stderr)
        XCTAssertTrue(message.first?.contains("cache=none") == true, r.stderr)
    }

    /// QMP stop pauses the disk with the vCPUs: a guest loop writing an incrementing counter to
    /// sector 0 (fsync each time) makes the host file change; after stop it stays the same;
    /// after cont it moves again. The disk is on an iothread.
    func testStopPausesTheDiskAndContResumesIt() throws {
        let disk = onDisk.appendingPathComponent("counter.img")
        _ = try makeDisk(disk, bytes: 1 << 20, seed: 5)
        let qmp = "/tmp/keel-stop-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(qmp) }
        let extra = [
            "-object", "iothread,id=io0",
            "-drive", "file=\(disk.path),if=none,id=d0,format=raw,cache=none",
            "-device", "virtio-blk-pci,drive=d0,iothread=io0",
            "-qmp", "unix:\(qmp),server=on,wait=off",
        ]
        let commands = [
            "i=0",
            "w() { i=$((i+1)); printf %08d $i|dd of=/dev/vda conv=sync,fsync; }",
            "while :; do w 2>/dev/null; done",
        ]
        func counter() -> Int {
            guard let h = try? FileHandle(forReadingFrom: disk) else { return -1 }
            defer { try? h.close() }
            let d = (try? h.read(upToCount: 8)) ?? Data()
            return Int(String(decoding: d, as: UTF8.self)) ?? -1
        }
        func waitForCounter(above v: Int, timeout: TimeInterval) -> Int {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let c = counter()
                if c > v { return c }
                Thread.sleep(forTimeInterval: 0.1)
            }
            return counter()
        }
        var log: [String] = []
        var replies = ""
        let input = commands.joined(separator: "\n") + "\n"
        let r = try runner.run(options(extra), timeout: 300, input: Data(input.utf8), inputAfter: "keel# ", inputLineDelay: 1.5) {
            let client = try UnixSocketClient(path: qmp, timeout: 120)
            replies += client.receive(until: "\"QMP\"", timeout: 30)
            try client.send(Data("{\"execute\":\"qmp_capabilities\"}\n".utf8))
            replies += client.receive(until: "return", timeout: 30)
            let running = waitForCounter(above: 3, timeout: 180)
            log.append("running: \(running)")
            try client.send(Data("{\"execute\":\"stop\"}\n".utf8))
            replies += client.receive(until: "STOP", timeout: 30)
            Thread.sleep(forTimeInterval: 0.3)
            let stopped = counter()
            Thread.sleep(forTimeInterval: 2)
            let later = counter()
            log.append("stopped: \(stopped) -> \(later)")
            try client.send(Data("{\"execute\":\"cont\"}\n".utf8))
            replies += client.receive(until: "RESUME", timeout: 30)
            let resumed = waitForCounter(above: later + 2, timeout: 60)
            log.append("resumed: \(resumed)")
            try client.send(Data("{\"execute\":\"quit\"}\n".utf8))
            replies += client.receive(until: "SHUTDOWN", timeout: 30)
        }
        let context = "\n\(log)\n\(replies)\n" + r.stdout.suffix(2000) + "\n" + r.stderr.suffix(1000)
        print("stop/cont counter: \(log)")
        XCTAssertFalse(r.timedOut, context)
        XCTAssertEqual(log.count, 3, context)
        guard log.count == 3 else { return }
        let numbers = log.map { $0.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) } }
        XCTAssertGreaterThan(numbers[0].first ?? -1, 3, "the guest's writes never reached the disk\(context)")
        XCTAssertEqual(numbers[1].first, numbers[1].last, "the disk changed while the machine was stopped\(context)")
        XCTAssertGreaterThan(numbers[2].first ?? -1, (numbers[1].last ?? 0) + 2, "the disk did not move after cont\(context)")
        XCTAssertTrue(statistics(r, device: 0).contains("notify thread 'iothread io0'"), statistics(r, device: 0))
    }
}
