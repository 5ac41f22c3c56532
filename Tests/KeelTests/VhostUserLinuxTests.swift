import Foundation
import XCTest

/// vhost-user-blk with Debian's kernel under tcg: Keel's front-end against qemu-storage-daemon
/// and against Keel's own back-end (`keel vhost-user-blk`), and QEMU's front-end against Keel's
/// back-end. The guest reads host data and writes its own; both must match byte for byte.
final class VhostUserLinuxTests: XCTestCase {
    var keel: String!
    let guest = PackagePaths.root.appendingPathComponent("guest")
    var scratch: URL!
    var backends: [Process] = []

    override func setUpWithError() throws {
        let k = try TCGLinuxBootTests.keel()
        guard k.release else { throw TCGLinuxShellTests.NoReleaseKeel() }
        keel = k.path
        let fetch = try KeelRunner.runCommand(executable: PackagePaths.root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        // Socket paths must stay under 108 bytes.
        scratch = URL(fileURLWithPath: "/tmp/keel-vhu-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for p in backends where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
    }

    // MARK: helpers

    func makeDisk(bytes: Int, seed: UInt8, name: String = "disk.img") throws -> (URL, Data) {
        var data = Data(count: bytes)
        var x = UInt32(seed) &* 2654435761 | 1
        for i in 0..<bytes { x ^= x << 13; x ^= x >> 17; x ^= x << 5; data[i] = UInt8(truncatingIfNeeded: x) }
        let url = scratch.appendingPathComponent(name)
        try data.write(to: url)
        return (url, data)
    }

    func md5(_ data: Data) throws -> String {
        let file = scratch.appendingPathComponent("md5-input")
        try data.write(to: file)
        let r = try KeelRunner.runCommand(executable: "/usr/bin/md5sum", arguments: [file.path], timeout: 30)
        return String(r.stdout.prefix(32))
    }

    /// Starts a back-end process and waits for its socket.
    @discardableResult
    func startBackend(_ executable: String, _ arguments: [String], socket: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.standardOutput = FileHandle.nullDevice
        let log = scratch.appendingPathComponent("backend-\(backends.count).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: log)
        try p.run()
        backends.append(p)
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) {
            guard Date() < deadline, p.isRunning else { throw XCTSkip("back-end \(executable) did not create \(socket): \((try? String(contentsOf: log)) ?? "")") }
            usleep(50_000)
        }
        return p
    }

    func keelBackend(_ socket: String, _ disk: URL) throws -> Process {
        try startBackend(keel, ["vhost-user-blk", "--socket-path=\(socket)", "--blk-file=\(disk.path)"], socket: socket)
    }

    static let pattern = "keel-vhost-user-wrote-this-0123456789"
    /// Size, a read of host data, a write flushed to the host file.
    static let commands = [
        "echo sz=$(cat /sys/block/vda/size)",
        "echo a=$(dd if=/dev/vda bs=512 count=8 2>/dev/null | md5sum)",
        "printf '\(pattern)' > /tmp/p",
        "dd if=/tmp/p of=/dev/vda bs=512 seek=16 conv=notrunc,fsync; echo wa=$?",
    ]

    func checkData(_ r: RunResult, disk: URL, original: Data, file: StaticString = #filePath, line: UInt = #line) throws {
        let context = "\n" + r.stdout.suffix(3000) + "\n" + r.stderr.suffix(1500)
        XCTAssertFalse(r.timedOut, "the guest did not power off:\(context)", file: file, line: line)
        XCTAssertTrue(r.lines.contains("sz=\(original.count / 512)"), context, file: file, line: line)
        XCTAssertTrue(r.lines.contains("a=\(try md5(original.prefix(4096))) -"), context, file: file, line: line)
        XCTAssertTrue(r.lines.contains("wa=0"), context, file: file, line: line)
        var expected = original
        expected.replaceSubrange(8192..<(8192 + Self.pattern.utf8.count), with: Data(Self.pattern.utf8))
        XCTAssertEqual(try Data(contentsOf: disk), expected, "the host file must hold exactly the guest's write", file: file, line: line)
    }

    func guestOptions(_ extra: [String]) -> MachineOptions {
        var o = MachineOptions(kernel: guest.appendingPathComponent("vmlinuz"))
        o.initrd = guest.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = extra
        return o
    }

    func boot(_ runner: KeelRunner, _ extra: [String], commands: [String], timeout: TimeInterval = 240,
              whileRunning: (() throws -> Void)? = nil) throws -> RunResult {
        let input = (commands + ["poweroff -f"]).joined(separator: "\n") + "\n"
        return try runner.run(guestOptions(extra), timeout: timeout, input: Data(input.utf8), inputAfter: "keel# ", whileRunning: whileRunning)
    }

    func vhostArguments(socket: String, reconnect: Int? = nil) -> [String] {
        ["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
         "-chardev", "socket,id=c0,path=\(socket)" + (reconnect.map { ",reconnect=\($0)" } ?? ""),
         "-device", "vhost-user-blk-pci,chardev=c0"]
    }

    // MARK: tests

    func testKeelFrontendWithQEMUStorageDaemon() throws {
        let qsd = "/usr/bin/qemu-storage-daemon"
        guard FileManager.default.isExecutableFile(atPath: qsd) else { throw XCTSkip("qemu-storage-daemon is not installed (Debian's qemu-system-common)") }
        let (disk, data) = try makeDisk(bytes: 2 << 20, seed: 7)
        let socket = scratch.appendingPathComponent("qsd.sock").path
        try startBackend(qsd, ["--blockdev", "driver=file,node-name=f,filename=\(disk.path)",
                               "--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=\(socket),writable=on"], socket: socket)
        let r = try boot(KeelRunner(emulator: .keel(binary: keel), keelAccel: "tcg"), vhostArguments(socket: socket), commands: Self.commands)
        try checkData(r, disk: disk, original: data)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testQEMUFrontendWithKeelBackend() throws {
        guard let qemu = ["/usr/bin/qemu-system-x86_64"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("qemu-system-x86_64 is not installed")
        }
        let (disk, data) = try makeDisk(bytes: 2 << 20, seed: 8)
        let socket = scratch.appendingPathComponent("keel.sock").path
        try keelBackend(socket, disk)
        let r = try boot(KeelRunner(emulator: .qemu(binary: qemu, accel: "tcg")), vhostArguments(socket: socket), commands: Self.commands)
        try checkData(r, disk: disk, original: data)
    }

    func testKeelFrontendWithKeelBackend() throws {
        let (disk, data) = try makeDisk(bytes: 2 << 20, seed: 9)
        let socket = scratch.appendingPathComponent("keel.sock").path
        try keelBackend(socket, disk)
        let r = try boot(KeelRunner(emulator: .keel(binary: keel), keelAccel: "tcg"), vhostArguments(socket: socket), commands: Self.commands)
        try checkData(r, disk: disk, original: data)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// Keel's front-end listens (`server=on,wait=off`, as QEMU users write it) and Keel's back-end
    /// connects (`--client`); the back-end is killed after the guest's first write and a new one
    /// connects: Keel accepts it without reconnect= and the guest's later I/O completes.
    func testFrontendServerOnBackendConnectsAndReconnects() throws {
        let (disk, data) = try makeDisk(bytes: 2 << 20, seed: 12)
        let socket = scratch.appendingPathComponent("keel-listens.sock").path
        let arguments = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem",
                         "-chardev", "socket,id=c0,path=\(socket),server=on,wait=off",
                         "-device", "vhost-user-blk-pci,chardev=c0"]
        // Keel creates the socket and waits in accept for the back-end's connection.
        try restartBackendWhileGuestRuns(disk: disk, data: data, fill: "Q", arguments: arguments, firstBackend: nil) {
            try self.startBackend(self.keel, ["vhost-user-blk", "--socket-path=\(socket)", "--client", "--blk-file=\(disk.path)"], socket: socket)
        }
    }

    /// The back-end is killed (SIGKILL) after the guest's first write and started again; Keel
    /// reconnects (reconnect=1) and the guest's later reads and writes complete.
    func testBackendKilledAndRestartedWhileGuestRuns() throws {
        let (disk, data) = try makeDisk(bytes: 2 << 20, seed: 10)
        let socket = scratch.appendingPathComponent("keel.sock").path
        let first = try keelBackend(socket, disk)
        try restartBackendWhileGuestRuns(disk: disk, data: data, fill: "K", arguments: vhostArguments(socket: socket, reconnect: 1),
                                         firstBackend: first) { try self.keelBackend(socket, disk) }
    }

    /// Boots with `arguments`; once the guest's first write reaches `disk`, SIGKILLs the first
    /// back-end (`firstBackend`, or the first `startBackend` made while the guest boots) and
    /// starts another; the guest's later read and `fill` write must complete through it.
    func restartBackendWhileGuestRuns(disk: URL, data: Data, fill: Character, arguments: [String], firstBackend: Process?,
                                      startBackend: @escaping () throws -> Process) throws {
        let commands = Self.commands + [
            "sleep 6",
            "echo b=$(dd if=/dev/vda bs=4096 skip=64 count=4 2>/dev/null | md5sum)",
            "dd if=/dev/zero bs=4096 count=4 | tr '\\000' \(fill) > /tmp/fill",
            "dd if=/tmp/fill of=/dev/vda bs=4096 seek=100 conv=notrunc,fsync; echo wb=$?",
        ]
        let marker = Data(Self.pattern.utf8)
        let r = try boot(KeelRunner(emulator: .keel(binary: keel), keelAccel: "tcg"), arguments, commands: commands) {
            let first = try firstBackend ?? startBackend()
            // The guest's first write reaching the file says the guest is in its sleep.
            let deadline = Date().addingTimeInterval(180)
            while Date() < deadline {
                if let d = try? Data(contentsOf: disk), d[8192..<(8192 + marker.count)] == marker { break }
                usleep(100_000)
            }
            kill(first.processIdentifier, SIGKILL)
            first.waitUntilExit()
            usleep(500_000)
            _ = try startBackend()
        }
        try checkData(r, disk: disk, original: {
            var d = data
            d.replaceSubrange(409_600..<(409_600 + 16384), with: Data(repeating: fill.asciiValue ?? 0, count: 16384))
            return d
        }())
        let context = "\n" + r.stdout.suffix(3000) + "\n" + r.stderr.suffix(1500)
        XCTAssertTrue(r.lines.contains("b=\(try md5(data[262_144..<(262_144 + 16384)])) -"), context)
        XCTAssertTrue(r.lines.contains("wb=0"), context)
        XCTAssertTrue(r.stderr.contains("back-end reconnected"), context)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    /// The back-end is killed while a 16 MiB write is under way; the guest's dd succeeds and the
    /// disk holds every byte. (Whether a request was inside the dead back-end at that instant is
    /// luck here; DevicesTests' VhostUserTests kills a connection with requests in flight and
    /// one finished out of order, which only the inflight region survives.)
    func testBackendKilledMidWriteLosesNothing() throws {
        let size = 32 << 20
        let (disk, data) = try makeDisk(bytes: size, seed: 11)
        let socket = scratch.appendingPathComponent("keel.sock").path
        let first = try keelBackend(socket, disk)
        let commands = [
            "dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr '\\000' Z > /tmp/z",
            "echo ready",
            "dd if=/tmp/z of=/dev/vda bs=65536 seek=64 oflag=direct 2>/dev/null; echo wz=$?",
            "sync; echo 3 > /proc/sys/vm/drop_caches",
            "echo z=$(dd if=/dev/vda bs=65536 skip=64 count=256 2>/dev/null | md5sum)",
        ]
        var killedAfter = -1
        let r = try boot(KeelRunner(emulator: .keel(binary: keel), keelAccel: "tcg"), vhostArguments(socket: socket, reconnect: 1),
                         commands: commands) {
            // Kill as soon as the write has begun but well before it ends.
            let h = try FileHandle(forReadingFrom: disk)
            defer { try? h.close() }
            let deadline = Date().addingTimeInterval(180)
            while Date() < deadline {
                try h.seek(toOffset: UInt64(4 << 20) + 65536)
                if let b = try h.read(upToCount: 1), b.first == UInt8(ascii: "Z") { break }
                usleep(5_000)
            }
            try h.seek(toOffset: UInt64(4 << 20) + (16 << 20) - 1)
            killedAfter = (try h.read(upToCount: 1))?.first == UInt8(ascii: "Z") ? 1 : 0
            kill(first.processIdentifier, SIGKILL)
            first.waitUntilExit()
            usleep(300_000)
            try self.keelBackend(socket, disk)
        }
        let context = "\n" + r.stdout.suffix(3000) + "\n" + r.stderr.suffix(1500)
        XCTAssertFalse(r.timedOut, context)
        XCTAssertEqual(killedAfter, 0, "the kill must land mid-write\(context)")
        var expected = data
        expected.replaceSubrange((4 << 20)..<(20 << 20), with: Data(repeating: UInt8(ascii: "Z"), count: 16 << 20))
        XCTAssertTrue(r.lines.contains("wz=0"), context)
        XCTAssertTrue(r.lines.contains("z=\(try md5(Data(repeating: UInt8(ascii: "Z"), count: 16 << 20))) -"), context)
        XCTAssertTrue(r.stderr.contains("back-end reconnected"), context)
        XCTAssertTrue(try Data(contentsOf: disk) == expected, "the disk must hold the whole write and nothing else")
        XCTAssertEqual(r.status, 0, r.stderr)
    }
}
