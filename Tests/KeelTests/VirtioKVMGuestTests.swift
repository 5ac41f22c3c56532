import Foundation
import XCTest

extension GuestRecipe {
    static let virtioBlk = pvh("virtio-blk", "virtio-blk.gc")
}

/// Keel's virtio-blk under kvm, driven by the project's own guest driver (virtio-blk.gc): PCI
/// enumeration, the modern transport, MSI-X through the kernel's LAPICs, data on a real image
/// file, and a hostile driver. With ioeventfd (the default) the guest's notify writes must never
/// reach Keel as exits and the interrupts must leave through irqfds; KEEL_DEBUG_VIRTIO makes Keel
/// print how each device's notifications and interrupts travelled.
final class VirtioKVMGuestTests: XCTestCase {
    var runner: KeelRunner!
    var directory: URL!

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is absent: this host cannot run Keel's kvm accelerator")
        }
        runner = try KeelRunner.fromEnvironment()
        guard case .keel = runner.emulator else { throw XCTSkip("these runs read Keel's own virtio statistics") }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-virtio-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    static let diskSize = 2 << 20

    /// The pattern the guest checks: byte at offset o is (o >> 9) + 7 o.
    static func diskPattern() -> Data {
        Data((0..<diskSize).map { o in UInt8(truncatingIfNeeded: (o >> 9) &+ 7 &* o) })
    }

    /// What the guest writes to sectors 16-23: 3 o + 0x5a for disk offset o.
    static func guestPattern(_ range: Range<Int>) -> Data {
        Data(range.map { o in UInt8(truncatingIfNeeded: 3 &* o &+ 0x5a) })
    }

    func makeRawImage() throws -> URL {
        let url = directory.appendingPathComponent("disk.raw")
        try Self.diskPattern().write(to: url)
        return url
    }

    func keelImg(_ arguments: [String]) throws {
        let r = try KeelRunner.runCommand(executable: runner.binary, arguments: ["img"] + arguments, timeout: 60)
        XCTAssertEqual(r.status, 0, "keel img \(arguments.joined(separator: " ")): \(r.stdout)\(r.stderr)")
    }

    struct Statistics: Equatable {
        var trapped = 0, eventFD = 0, msiIoctl = 0, irqfd = 0
        /// The thread that handled the first notify, and how many notifies an iothread handled.
        var notifyThread = "", iothreadNotifies = 0
        /// aio=io_uring: operations that went through the ring.
        var ringOperations: Int?

        init(trapped: Int = 0, eventFD: Int = 0, msiIoctl: Int = 0, irqfd: Int = 0) {
            self.trapped = trapped; self.eventFD = eventFD; self.msiIoctl = msiIoctl; self.irqfd = irqfd
        }

        /// The four path counters only.
        static func == (a: Statistics, b: Statistics) -> Bool {
            (a.trapped, a.eventFD, a.msiIoctl, a.irqfd) == (b.trapped, b.eventFD, b.msiIoctl, b.irqfd)
        }
    }

    /// Boots the virtio-blk guest with the disk at `image`; returns the run and the statistics
    /// line Keel printed for the disk.
    func boot(image: URL, format: String, machine: String, append: String, device: String = "",
              drive: String = "", extra: [String] = [], whileRunning: (() throws -> Void)? = nil,
              watch: ((RunningProcess) throws -> Void)? = nil) throws -> (RunResult, Statistics?) {
        var o = MachineOptions(kernel: try GuestBuilder.shared.image(for: .virtioBlk))
        o.noReboot = whileRunning == nil && watch == nil
        o.machine = machine
        o.append = append
        let args = runner.arguments(for: o) + [
            "-drive", "file=\(image.path),if=none,id=d0,format=\(format)\(drive)",
            "-device", "virtio-blk-pci,drive=d0,serial=keel-disk-7\(device)",
        ] + extra
        let r = try KeelRunner.runCommand(executable: "/usr/bin/env",
                                          arguments: ["KEEL_DEBUG_VIRTIO=1", runner.binary] + args, timeout: 120,
                                          whileRunning: whileRunning, watch: watch)
        return (r, Self.statistics(r.stderr))
    }

    static func statistics(_ stderr: String) -> Statistics? {
        // "keel: virtio-pci 0 (type 2): notify trapped T eventfd E; msi ioctl M irqfd I; ..."
        guard let line = stderr.split(separator: "\n").first(where: { $0.contains("virtio-pci 0 (type 2)") }) else { return nil }
        let words = line.replacingOccurrences(of: ";", with: "").split(separator: " ").map(String.init)
        func after(_ a: String, _ b: String) -> Int? {
            guard let i = words.indices.first(where: { words[$0] == a && $0 + 2 < words.count && words[$0 + 1] == b }) else { return nil }
            return Int(words[i + 2])
        }
        guard let t = after("notify", "trapped"), let m = after("msi", "ioctl"),
              let e = words.firstIndex(of: "eventfd").flatMap({ Int(words[$0 + 1]) }),
              let i = words.firstIndex(of: "irqfd").flatMap({ Int(words[$0 + 1]) }) else { return nil }
        var s = Statistics(trapped: t, eventFD: e, msiIoctl: m, irqfd: i)
        if let open = line.range(of: "notify thread '"), let close = line[open.upperBound...].firstIndex(of: "'") {
            s.notifyThread = String(line[open.upperBound..<close])
        }
        s.iothreadNotifies = after("iothread", "notifies") ?? 0
        s.ringOperations = after("io_uring", "operations")
        return s
    }

    func requests(_ r: RunResult) -> Int? {
        guard let line = r.lines.first(where: { $0.hasPrefix("virtio-blk: ") && $0.contains(" requests, ") }) else { return nil }
        return Int(line.split(separator: " ")[1])
    }

    func assertPassed(_ r: RunResult, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, KVMGuestTestsStatus.pass, "\(r.stdout)\n\(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.lines.contains("virtio-blk: pass"), r.stdout, file: file, line: line)
    }

    func checkGuestWrites(_ raw: URL) throws {
        let disk = try Data(contentsOf: raw)
        XCTAssertEqual(disk.count, Self.diskSize)
        XCTAssertEqual(disk[16 * 512..<24 * 512], Self.guestPattern(16 * 512..<24 * 512), "sectors 16-23 are not what the guest wrote")
        XCTAssertEqual(disk[0..<16 * 512], Self.diskPattern()[0..<16 * 512], "the guest's write spilled before sector 16")
        XCTAssertEqual(disk[24 * 512..<disk.count], Self.diskPattern()[24 * 512..<disk.count], "the guest's write spilled past sector 23")
    }

    /// In-kernel irqchip, config mechanism #1, raw image: data both ways, one MSI-X per request,
    /// and not one notify exit or KVM_SIGNAL_MSI: everything went through ioeventfd and irqfd.
    func testBlockIOWithInKernelIRQChipThroughIOEventFDAndIRQFD() throws {
        let raw = try makeRawImage()
        let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=40")
        assertPassed(r)
        XCTAssertTrue(r.lines.contains { $0.hasPrefix("virtio-blk: capacity 4096 sectors,") }, r.stdout)
        XCTAssertTrue(r.lines.contains("virtio-blk: serial 'keel-disk-7'"), r.stdout)
        XCTAssertTrue(r.lines.contains("virtio-blk: wrote, flushed and read back 8 sectors ok"), r.stdout)
        try checkGuestWrites(raw)
        let n = try XCTUnwrap(requests(r), r.stdout)
        XCTAssertGreaterThanOrEqual(n, 46)
        let stats = try XCTUnwrap(s, "no statistics line from Keel:\n\(r.stderr)")
        XCTAssertEqual(stats.trapped, 0, "notify writes exited to Keel despite ioeventfd")
        XCTAssertGreaterThanOrEqual(stats.eventFD, 1)
        XCTAssertLessThanOrEqual(stats.eventFD, n)
        XCTAssertEqual(stats.msiIoctl, 0, "MSI-X went through KVM_SIGNAL_MSI instead of irqfd")
        XCTAssertEqual(stats.irqfd, n)
    }

    /// Split irqchip (microvm), ECAM from the MCFG, qcow2 image: same driver, same guarantees.
    func testBlockIOWithSplitIRQChipECAMAndQcow2() throws {
        let raw = try makeRawImage()
        let qcow2 = directory.appendingPathComponent("disk.qcow2")
        try keelImg(["convert", "-f", "raw", "-O", "qcow2", raw.path, qcow2.path])
        let (r, s) = try boot(image: qcow2, format: "qcow2", machine: "microvm", append: "ecam loops=10", drive: ",cache=none")
        assertPassed(r)
        XCTAssertTrue(r.lines.contains { $0.hasPrefix("virtio-blk: found at 00:") && $0.hasSuffix("(ECAM)") }, r.stdout)
        let back = directory.appendingPathComponent("back.raw")
        try keelImg(["convert", "-f", "qcow2", "-O", "raw", qcow2.path, back.path])
        try checkGuestWrites(back)
        let n = try XCTUnwrap(requests(r), r.stdout)
        let stats = try XCTUnwrap(s, r.stderr)
        XCTAssertEqual(stats.trapped, 0)
        XCTAssertEqual(stats.msiIoctl, 0)
        XCTAssertEqual(stats.irqfd, n)
    }

    /// ioeventfd=off: every notify exits and is counted, interrupts go by KVM_SIGNAL_MSI; the
    /// guest sees no difference.
    func testIOEventFDOffTrapsEveryNotify() throws {
        let raw = try makeRawImage()
        let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=10", device: ",ioeventfd=off")
        assertPassed(r)
        let n = try XCTUnwrap(requests(r), r.stdout)
        let stats = try XCTUnwrap(s, r.stderr)
        XCTAssertEqual(stats, Statistics(trapped: n, eventFD: 0, msiIoctl: n, irqfd: 0))
    }

    /// A machine reset (QMP system_reset) in the middle of a stream of requests: requests in
    /// flight finish before RAM is wiped, their completions do not reach the new boot's rings,
    /// and the rebuilt VM gets the ioeventfd/irqfd paths again.
    func testMachineResetDuringIORebindsTheEventFDs() throws {
        try machineResetDuringIO(iothread: false)
    }

    /// The same with the queue on an iothread: the reset reaches the device through it, the
    /// drain stops it taking requests, and the second boot's ioeventfds land on its loop again.
    func testMachineResetDuringIOWithIOThread() throws {
        try machineResetDuringIO(iothread: true)
    }

    func machineResetDuringIO(iothread: Bool) throws {
        let raw = try makeRawImage()
        let qmp = "/tmp/keel-vqmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(qmp) }
        var replies = ""
        let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=3000",
                              device: iothread ? ",iothread=io0" : "",
                              extra: ["-qmp", "unix:\(qmp),server=on,wait=off"] + (iothread ? ["-object", "iothread,id=io0"] : [])) { running in
            // The reset must land while the first boot's requests run: a loaded host may take
            // longer than the QMP handshake to get the guest there.
            XCTAssertTrue(running.waitForOutput(containing: "virtio-blk: found at", timeout: 60), "the first boot never found the disk")
            let client = try UnixSocketClient(path: qmp, timeout: 20)
            replies += client.receive(until: "\"QMP\"", timeout: 10)
            try client.send(Data("{\"execute\":\"qmp_capabilities\"}\n".utf8))
            replies += client.receive(until: "return", timeout: 10)
            Thread.sleep(forTimeInterval: 0.15)
            try client.send(Data("{\"execute\":\"system_reset\"}\n".utf8))
            replies += client.receive(until: "RESET", timeout: 10)
        }
        XCTAssertTrue(replies.contains("\"event\": \"RESET\""), replies)
        assertPassed(r)
        XCTAssertEqual(r.lines.filter { $0.hasPrefix("virtio-blk: found at") }.count, 2, "the guest did not start again:\n\(r.stdout)")
        try checkGuestWrites(raw)
        let stats = try XCTUnwrap(s, r.stderr)
        XCTAssertEqual(stats.trapped, 0)
        XCTAssertEqual(stats.msiIoctl, 0)
        // The second boot alone makes 3006 notifies (the reset may land before the first boot's
        // driver made any when the host is busy); with none trapped, all came by eventfd.
        XCTAssertGreaterThanOrEqual(stats.eventFD, 3006, "the second boot's notifies did not come through the eventfd\n\(r.stdout)\n\(r.stderr)")
        if iothread { XCTAssertEqual(stats.iothreadNotifies, stats.eventFD, r.stderr) }
    }

    /// -object iothread: the disk's queue runs on the thread "iothread io0" (every notify is
    /// handled there, arriving through the ioeventfd registered on its loop), interrupts leave
    /// through irqfds from that thread, and the data is right on both irqchips.
    func testIOThreadOwnsTheQueue() throws {
        for machine in ["pc", "microvm"] {
            let raw = try makeRawImage()
            let (r, s) = try boot(image: raw, format: "raw", machine: machine, append: "loops=40",
                                  device: ",iothread=io0", extra: ["-object", "iothread,id=io0"])
            assertPassed(r)
            XCTAssertTrue(r.lines.contains("virtio-blk: wrote, flushed and read back 8 sectors ok"), r.stdout)
            try checkGuestWrites(raw)
            let n = try XCTUnwrap(requests(r), r.stdout)
            let stats = try XCTUnwrap(s, r.stderr)
            XCTAssertEqual(stats.notifyThread, "iothread io0", "\(machine): \(r.stderr)")
            XCTAssertEqual(stats.trapped, 0, machine)
            XCTAssertGreaterThanOrEqual(stats.eventFD, 1, machine)
            XCTAssertEqual(stats.iothreadNotifies, stats.eventFD, "\(machine): every notify must be handled on the iothread")
            XCTAssertEqual(stats.msiIoctl, 0, machine)
            XCTAssertEqual(stats.irqfd, n, machine)
        }
    }

    /// QMP query-iothreads names the thread and its polling properties; /proc shows it as
    /// "iothread io0" and it spends CPU time while the guest streams requests.
    func testQueryIOThreadsAndTheThreadsCPUTime() throws {
        let raw = try makeRawImage()
        let qmp = "/tmp/keel-ioq-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(qmp) }
        var reply = "", comm = "", ticks = -1
        let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=30000", device: ",iothread=io0",
                              extra: ["-object", "iothread,id=io0,poll-max-ns=50000,poll-grow=3", "-qmp", "unix:\(qmp),server=on,wait=off"]) {
            let client = try UnixSocketClient(path: qmp, timeout: 20)
            _ = client.receive(until: "\"QMP\"", timeout: 10)
            try client.send(Data("{\"execute\":\"qmp_capabilities\"}\n".utf8))
            _ = client.receive(until: "return", timeout: 10)
            try client.send(Data("{\"execute\":\"query-iothreads\"}\n".utf8))
            reply = client.receive(until: "thread-id", timeout: 10)
            Thread.sleep(forTimeInterval: 1.5)
            guard let tid = reply.range(of: "\"thread-id\": ").map({ reply[$0.upperBound...].prefix { $0.isNumber } }) else { return }
            comm = (try? String(contentsOfFile: "/proc/\(tid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            // utime and stime: fields 14 and 15, after the parenthesised name.
            if let stat = try? String(contentsOfFile: "/proc/\(tid)/stat", encoding: .utf8),
               let close = stat.lastIndex(of: ")") {
                let f = stat[stat.index(after: close)...].split(separator: " ")
                if f.count > 13, let u = Int(f[11]), let k = Int(f[12]) { ticks = u + k }
            }
        }
        assertPassed(r)
        XCTAssertTrue(reply.contains("\"id\": \"io0\""), reply)
        XCTAssertTrue(reply.contains("\"poll-max-ns\": 50000") && reply.contains("\"poll-grow\": 3") && reply.contains("\"poll-shrink\": 0"),
                      "query-iothreads reports the polling properties: \(reply)")
        XCTAssertEqual(comm, "iothread io0", "the thread-id query-iothreads gave is not the iothread: \(reply)")
        XCTAssertGreaterThan(ticks, 0, "the iothread spent no CPU time while the guest streamed requests")
        let stats = try XCTUnwrap(s, r.stderr)
        XCTAssertEqual(stats.iothreadNotifies, stats.eventFD)
    }

    /// ioeventfd=off with an iothread: each trapped notify is posted from the vCPU to the
    /// iothread; interrupts without irqfd take the big lock (or go by the main loop).
    func testIOThreadWithTrappedNotifies() throws {
        let raw = try makeRawImage()
        let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=10",
                              device: ",iothread=io0,ioeventfd=off", extra: ["-object", "iothread,id=io0"])
        assertPassed(r)
        try checkGuestWrites(raw)
        let n = try XCTUnwrap(requests(r), r.stdout)
        let stats = try XCTUnwrap(s, r.stderr)
        XCTAssertEqual(stats.notifyThread, "iothread io0", r.stderr)
        XCTAssertEqual(stats.trapped, n)
        XCTAssertEqual(stats.iothreadNotifies, n)
        XCTAssertEqual(stats.msiIoctl, n)
    }

    /// aio=io_uring on a raw file, on the main loop and on an iothread, page cache and O_DIRECT
    /// (the image lives on the build directory's disk: tmpfs has no O_DIRECT): reads, writes and
    /// flushes go through the ring and the data is right.
    func testIOUringRawImage() throws {
        let onDisk = PackagePaths.root.appendingPathComponent(".build/keel-uring-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: onDisk, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: onDisk) }
        for (cache, iothread) in [("writeback", false), ("none", false), ("writeback", true), ("none", true)] {
            let raw = onDisk.appendingPathComponent("disk-\(cache)-\(iothread).raw")
            try Self.diskPattern().write(to: raw)
            let (r, s) = try boot(image: raw, format: "raw", machine: "pc", append: "loops=20",
                                  device: iothread ? ",iothread=io0" : "", drive: ",aio=io_uring,cache=\(cache)",
                                  extra: iothread ? ["-object", "iothread,id=io0"] : [])
            let what = "cache=\(cache) iothread=\(iothread)"
            assertPassed(r)
            XCTAssertTrue(r.lines.contains("virtio-blk: wrote, flushed and read back 8 sectors ok"), "\(what)\n\(r.stdout)")
            try checkGuestWrites(raw)
            let n = try XCTUnwrap(requests(r), r.stdout)
            let stats = try XCTUnwrap(s, r.stderr)
            let ops = try XCTUnwrap(stats.ringOperations, "\(what): no io_uring count in \(r.stderr)")
            // GET_ID is answered without I/O; every read, write and flush goes through the ring
            // (the guest's buffers are sector-aligned but O_DIRECT wants 4 KiB: those bounce).
            XCTAssertGreaterThan(ops, cache == "none" ? 0 : n / 2, "\(what): \(r.stderr)")
            XCTAssertEqual(stats.irqfd, n, what)
            if iothread { XCTAssertEqual(stats.notifyThread, "iothread io0", what) }
        }
    }

    /// qcow2 with aio=io_uring, on the main loop and on a polling iothread, O_DIRECT: reads and
    /// writes of allocated clusters go through the ring (the rest through the worker pool), the
    /// guest reads back what it wrote and the image checks clean.
    func testIOUringWithQcow2() throws {
        let onDisk = PackagePaths.root.appendingPathComponent(".build/keel-uring-q-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: onDisk, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: onDisk) }
        let raw = try makeRawImage()
        for iothread in [false, true] {
            let qcow2 = onDisk.appendingPathComponent("disk-\(iothread).qcow2")
            try keelImg(["convert", "-f", "raw", "-O", "qcow2", raw.path, qcow2.path])
            let (r, s) = try boot(image: qcow2, format: "qcow2", machine: "pc", append: "loops=20",
                                  device: iothread ? ",iothread=io0" : "", drive: ",aio=io_uring,cache=none",
                                  extra: iothread ? ["-object", "iothread,id=io0"] : [])
            assertPassed(r)
            XCTAssertTrue(r.lines.contains("virtio-blk: wrote, flushed and read back 8 sectors ok"), "iothread=\(iothread)\n\(r.stdout)")
            let ops = try XCTUnwrap(try XCTUnwrap(s, r.stderr).ringOperations, "no io_uring count in \(r.stderr)")
            XCTAssertGreaterThan(ops, 0, "iothread=\(iothread): \(r.stderr)")
            try keelImg(["check", qcow2.path])
        }
    }

    func testReadOnlyDriveRefusesWrites() throws {
        let raw = try makeRawImage()
        let (r, _) = try boot(image: raw, format: "raw", machine: "pc", append: "ro", drive: ",readonly=on")
        assertPassed(r)
        XCTAssertTrue(r.lines.contains("virtio-blk: write refused (read-only)"), r.stdout)
        XCTAssertEqual(try Data(contentsOf: raw), Self.diskPattern())
    }

    /// Malformed chains and rings: each puts the device in NEEDS_RESET (with a config
    /// interrupt), Keel keeps running, and a reset makes the device usable again.
    func testHostileDriverOnBothIRQChips() throws {
        try hostileDriver(iothread: false)
    }

    /// NEEDS_RESET and the driver's resets, with the queue on an iothread.
    func testHostileDriverWithIOThread() throws {
        try hostileDriver(iothread: true)
    }

    func hostileDriver(iothread: Bool) throws {
        for machine in ["pc", "microvm"] {
            let raw = try makeRawImage()
            let (r, s) = try boot(image: raw, format: "raw", machine: machine, append: "hostile",
                                  device: iothread ? ",iothread=io0" : "", extra: iothread ? ["-object", "iothread,id=io0"] : [])
            assertPassed(r)
            XCTAssertTrue(r.lines.contains("virtio-blk: hostile: 8 cases recovered"), "\(machine):\n\(r.stdout)")
            for what in ["descriptor loop", "buffer outside RAM", "oversized indirect table", "available index jump", "ring outside RAM"] {
                XCTAssertTrue(r.lines.contains("virtio-blk: hostile \(what) -> NEEDS_RESET, reset, works again"), "\(machine): \(what)\n\(r.stdout)")
            }
            XCTAssertTrue(r.lines.contains { $0.hasPrefix("virtio-blk: hostile queue sizes ignored") }, r.stdout)
            let stats = try XCTUnwrap(s, r.stderr)
            XCTAssertEqual(stats.trapped, 0, machine)
        }
    }
}
