import Foundation
import XCTest

/// The default guest (Debian's kernel + the project's initramfs, `keel.init=shell`) run by the
/// release keel under -accel tcg, as the Linux-driver tests use it: the machine's options, a shell
/// session that types commands, scratch files and host tools.
struct DefaultGuest {
    let runner: KeelRunner
    let directory = PackagePaths.root.appendingPathComponent("guest")
    let scratch: URL

    /// Needs a current release keel (the debug build is ~10x slower) and fetches the guest.
    init(scratchPrefix: String) throws {
        let keel = try TCGLinuxBootTests.keel()
        guard keel.release else { throw TCGLinuxShellTests.NoReleaseKeel() }
        let fetch = try KeelRunner.runCommand(executable: PackagePaths.root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        runner = KeelRunner(emulator: .keel(binary: keel.path), keelAccel: "tcg")
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("\(scratchPrefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    func removeScratch() { try? FileManager.default.removeItem(at: scratch) }

    /// `initrd`: another initramfs than the default one (see `initramfs(adding:)`).
    func options(_ extra: [String], initrd: URL? = nil) -> MachineOptions {
        var o = MachineOptions(kernel: directory.appendingPathComponent("vmlinuz"))
        o.initrd = initrd ?? directory.appendingPathComponent("initrd.img")
        o.memoryMiB = 512
        o.append = "console=ttyS0 keel.init=shell"
        o.extraArguments = extra
        return o
    }

    /// Runs `commands` in the guest shell, then `poweroff -f`, and checks that the guest powered off.
    func runShell(_ commands: [String], extra: [String], initrd: URL? = nil, timeout: TimeInterval = 240,
                  whileRunning: (() throws -> Void)? = nil) throws -> RunResult {
        let input = (commands + ["poweroff -f"]).joined(separator: "\n") + "\n"
        let r = try runner.run(options(extra, initrd: initrd), timeout: timeout, input: Data(input.utf8), inputAfter: "keel# ",
                               whileRunning: whileRunning)
        XCTAssertFalse(r.timedOut, "the guest did not power off:\n\(r.stdout.suffix(3000))")
        XCTAssertTrue(r.stdout.contains("KEEL-GUEST-READY"), r.stdout.suffix(3000).description)
        XCTAssertEqual(r.status, 0, "poweroff must end keel with status 0:\n\(r.stdout.suffix(2000))\n\(r.stderr)")
        return r
    }

    /// Types `commands` at the prompt and hands the running keel to `watch` (which usually kills
    /// it at some console line); no poweroff is typed.
    func runShellWatching(_ commands: [String], extra: [String], initrd: URL? = nil, timeout: TimeInterval = 240,
                          watch: @escaping (RunningProcess) throws -> Void) throws -> RunResult {
        let input = commands.joined(separator: "\n") + "\n"
        return try runner.run(options(extra, initrd: initrd), timeout: timeout, input: Data(input.utf8), inputAfter: "keel# ",
                              watch: watch)
    }

    /// The default initramfs followed by a second newc archive holding `files` (name at the
    /// root → contents, executable): the kernel unpacks concatenated archives in order.
    func initramfs(adding files: [(name: String, contents: Data)], as name: String = "initrd-extra.img") throws -> URL {
        var archive = Data()
        func member(_ name: String, mode: UInt32, _ contents: Data, inode: Int) {
            let nameBytes = Data(name.utf8) + Data([0])
            let fields: [UInt32] = [UInt32(inode), mode, 0, 0, 1, 0, UInt32(contents.count), 0, 0, 0, 0, UInt32(nameBytes.count), 0]
            archive += Data(("070701" + fields.map { String(format: "%08X", $0) }.joined()).utf8)
            archive += nameBytes
            archive += Data(count: (4 - archive.count % 4) % 4)
            archive += contents
            archive += Data(count: (4 - archive.count % 4) % 4)
        }
        for (i, f) in files.enumerated() { member(f.name, mode: 0o100755, f.contents, inode: 900_000 + i) }
        member("TRAILER!!!", mode: 0, Data(), inode: 0)
        let url = scratch.appendingPathComponent(name)
        try (try Data(contentsOf: directory.appendingPathComponent("initrd.img")) + archive).write(to: url)
        return url
    }

    /// A file of `bytes` xorshift bytes (a different stream per seed).
    func makeDisk(_ name: String, bytes: Int, seed: UInt8) throws -> (URL, Data) {
        let data = Self.pattern(bytes: bytes, seed: seed)
        let url = scratch.appendingPathComponent(name)
        try data.write(to: url)
        return (url, data)
    }

    static func pattern(bytes: Int, seed: UInt8) -> Data {
        var bytesOut = [UInt8](repeating: 0, count: bytes)
        var x = UInt32(seed) &* 2654435761 | 1
        bytesOut.withUnsafeMutableBufferPointer { p in
            for i in p.indices {
                x ^= x << 13; x ^= x >> 17; x ^= x << 5
                p[i] = UInt8(truncatingIfNeeded: x)
            }
        }
        return Data(bytesOut)
    }

    func md5(_ data: Data) throws -> String {
        let file = scratch.appendingPathComponent("md5-input")
        try data.write(to: file)
        let r = try KeelRunner.runCommand(executable: "/usr/bin/md5sum", arguments: [file.path], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        return String(r.stdout.prefix(32))
    }
}
