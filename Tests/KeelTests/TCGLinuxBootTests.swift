import Foundation
import XCTest

/// Debian's stock cloud kernel (the default guest) under `keel -accel tcg`, from the bzImage (its
/// own decompressor runs under tcg) and from the PVH vmlinux, with `keel.init=poweroff`. Always:
/// the banner and the x87/SSE state through FXSAVE (CPUID fpu/fxsr/sse/sse2 passed the kernel's
/// checks), and no unexpected #UD on the way. With a current release build of keel (~10× faster
/// than the debug one): the start of /init; and when the CPU has its local APIC (the tcg
/// interrupt controllers: timer tick, serial IRQ) the initramfs marker and poweroff with status 0.
final class TCGLinuxBootTests: XCTestCase {
    struct Keel {
        let path: String
        let release: Bool
    }

    /// The release keel when it is newer than every source file (a stale one would test old
    /// code); the debug keel that `swift build --build-tests` made otherwise.
    static func keel() throws -> Keel {
        let root = PackagePaths.root
        let release = root.appendingPathComponent(".build/release/keel").path
        let debug = root.appendingPathComponent(".build/debug/keel").path
        let fm = FileManager.default
        func mtime(_ path: String) -> Date? { (try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date }
        var newestSource = mtime(root.appendingPathComponent("Package.swift").path) ?? .distantPast
        if let e = fm.enumerator(atPath: root.appendingPathComponent("Sources").path) {
            for case let rel as String in e {
                if let t = mtime(root.appendingPathComponent("Sources").appendingPathComponent(rel).path), t > newestSource { newestSource = t }
            }
        }
        if fm.isExecutableFile(atPath: release), let t = mtime(release), t >= newestSource {
            return Keel(path: release, release: true)
        }
        guard fm.isExecutableFile(atPath: debug) else { throw XCTSkip("no keel binary: run `swift build` first") }
        return Keel(path: debug, release: false)
    }

    struct Boot {
        var console: String, stderr: String, seconds: Double
        /// keel's exit status when it ended by itself (the guest powered off), else nil.
        var status: Int32?
    }

    /// Boots `kernel` until `done(console, exited)` holds (or `timeout`), then stops keel.
    func boot(kernel: String, timeout: TimeInterval, keel: Keel, done: (String, Bool) -> Bool) throws -> Boot {
        let root = PackagePaths.root
        let fetch = try KeelRunner.runCommand(executable: root.appendingPathComponent("scripts/fetch-default-guest.sh").path,
                                              arguments: [], timeout: 600)
        XCTAssertEqual(fetch.status, 0, "fetch-default-guest.sh failed: \(fetch.stderr)")
        let guest = root.appendingPathComponent("guest")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: keel.path)
        process.arguments = ["-accel", "tcg", "-m", "512", "-kernel", guest.appendingPathComponent(kernel).path,
                             "-initrd", guest.appendingPathComponent("initrd.img").path,
                             "-append", "console=ttyS0 earlyprintk=serial,ttyS0,115200 keel.init=poweroff",
                             "-nographic", "-no-reboot"]
        var environment = ProcessInfo.processInfo.environment
        environment["KEEL_TCG_TRACE_UD"] = "1"
        process.environment = environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let capture = Capture()
        out.fileHandleForReading.readabilityHandler = { h in capture.append(h.availableData, stdout: true) }
        err.fileHandleForReading.readabilityHandler = { h in capture.append(h.availableData, stdout: false) }
        let start = Date()
        try process.run()
        func text() -> String { capture.text().console }
        while Date().timeIntervalSince(start) < timeout {
            let exited = !process.isRunning
            if done(text(), exited) || exited { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        let seconds = Date().timeIntervalSince(start)
        let exitedByItself = !process.isRunning
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        err.fileHandleForReading.readabilityHandler = nil
        Thread.sleep(forTimeInterval: 0.2)
        let (console, errors) = capture.text()
        return Boot(console: console, stderr: errors, seconds: seconds, status: exitedByItself ? process.terminationStatus : nil)
    }

    final class Capture: @unchecked Sendable {
        private let lock = NSLock()
        private var console = Data(), errors = Data()

        func append(_ d: Data, stdout: Bool) {
            lock.lock(); defer { lock.unlock() }
            if stdout { console.append(d) } else { errors.append(d) }
        }

        func text() -> (console: String, stderr: String) {
            lock.lock(); defer { lock.unlock() }
            return (String(decoding: console, as: UTF8.self), String(decoding: errors, as: UTF8.self))
        }
    }

    func check(kernel: String) throws {
        let keel = try Self.keel()
        let early = ["Linux version 6.1", "x86/fpu: x87 FPU will use FXSAVE"]
        let r = try boot(kernel: kernel, timeout: keel.release ? 150 : 110, keel: keel) { console, exited in
            guard early.allSatisfy({ console.contains($0) }) else { return false }
            return keel.release ? exited : true
        }
        var expected = early
        if keel.release { expected += ["Run /init as init process", "KEEL-GUEST-READY", "reboot: Power down"] }
        let where_ = "[\(kernel), \(keel.release ? "release" : "debug") keel, \(Int(r.seconds)) s]"
        for line in expected {
            XCTAssertTrue(r.console.contains(line), "\(where_) missing \"\(line)\" in:\n\(r.console.suffix(4000))\n--- stderr ---\n\(r.stderr.suffix(2000))")
        }
        XCTAssertFalse(r.console.contains("No local APIC present"), "\(where_) the tcg board must have local APICs")
        // Keel's CPU says, through IA32_ARCH_CAPABILITIES, that it is not affected by Meltdown or MDS.
        XCTAssertFalse(r.console.contains("page tables isolation: enabled"), "\(where_) Linux turned on PTI")
        XCTAssertFalse(r.console.contains("MDS: Vulnerable"), "\(where_) Linux thinks the CPU has MDS")
        if keel.release {
            XCTAssertEqual(r.status, 0, "\(where_) the guest's poweroff must end keel with status 0:\n\(r.console.suffix(2000))")
        }
        XCTAssertFalse(r.console.contains("invalid opcode"), "\(where_) kernel oops on #UD:\n\(r.console.suffix(4000))")
        XCTAssertFalse(r.console.contains("Kernel panic"), "\(where_) kernel panic:\n\(r.console.suffix(4000))")
        XCTAssertFalse(r.console.contains("no FPU found"), "\(where_) the kernel rejected the x87 FPU")
        XCTAssertFalse(r.stderr.contains("#UD at"), "\(where_) unimplemented instruction:\n\(r.stderr.suffix(2000))")
    }

    func testBzImageBootsToInitUnderTCG() throws { try check(kernel: "vmlinuz") }
    func testPVHVmlinuxBootsToInitUnderTCG() throws { try check(kernel: "vmlinux") }
}
