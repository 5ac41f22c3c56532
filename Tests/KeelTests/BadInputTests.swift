import Foundation
import KVM
import XCTest

/// Bad host input ends Keel at once with one line naming the problem and status 1.
final class BadInputTests: XCTestCase {
    static var keel: String {
        ProcessInfo.processInfo.environment["KEEL_BINARY"] ?? PackagePaths.root.appendingPathComponent(".build/debug/keel").path
    }

    func run(_ args: [String]) throws -> RunResult {
        try KeelRunner.runCommand(executable: Self.keel, arguments: args, timeout: 30)
    }

    /// Runs keel expecting failure; returns its single error line.
    func failure(_ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try run(args)
        XCTAssertEqual(r.status, 1, "exit status", file: file, line: line)
        XCTAssertEqual(r.stdout, "", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "expected one error line, got: \(r.stderr)", file: file, line: line)
        return lines.first.map(String.init) ?? ""
    }

    func tempFile(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "keel-bad-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testMissingKernel() throws {
        XCTAssertEqual(try failure(["-accel", "kvm", "-kernel", "/nonexistent/vmlinuz"]),
                       "keel: kernel /nonexistent/vmlinuz: No such file or directory")
    }

    func testMissingInitrd() throws {
        let k = try tempFile(Array(repeating: 0, count: 4096))
        XCTAssertEqual(try failure(["-accel", "kvm", "-kernel", k, "-initrd", "/nonexistent/initrd"]),
                       "keel: initrd /nonexistent/initrd: No such file or directory")
    }

    func testNonLinuxAndTruncatedImages() throws {
        let garbage = try tempFile(Array("this is not a kernel at all\n".utf8))
        XCTAssertEqual(try failure(["-accel", "kvm", "-kernel", garbage]), "keel: kernel \(garbage): not a Linux bzImage or PVH ELF kernel")
        // A bzImage setup header that promises more setup sectors than the file has.
        var bz = [UInt8](repeating: 0, count: 0x260)
        bz[0x1F1] = 30                                  // setup_sects
        bz[0x1FE] = 0x55; bz[0x1FF] = 0xAA
        bz[0x200] = 0xEB; bz[0x201] = 0x6A               // jmp over a full 2.15 header
        bz.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        bz[0x206] = 0x0F; bz[0x207] = 0x02              // protocol 2.15
        bz[0x236] = 1                                   // XLF_KERNEL_64
        let truncated = try tempFile(bz)
        let line = try failure(["-accel", "kvm", "-kernel", truncated])
        XCTAssertTrue(line.hasPrefix("keel: kernel \(truncated): "), line)
        XCTAssertTrue(line.contains("truncated"), line)
    }

    func testImpossibleMachines() throws {
        let k = try tempFile(Array(repeating: 0, count: 16))
        XCTAssertEqual(try failure(["-smp", "0", "-kernel", k]), "keel: -smp 0: at least one CPU is needed")
        XCTAssertTrue(try failure(["-accel", "kvm", "-m", "100T", "-kernel", k]).hasPrefix("keel: -m 104857600M: more than this host's "))
        XCTAssertEqual(try failure(["-device", "virtio-gpu", "-kernel", k]), "keel: -device virtio-gpu: unknown device type 'virtio-gpu' (see -device help)")
        XCTAssertEqual(try failure(["-bogus"]), "keel: -bogus: unknown option (see -help)")
        XCTAssertEqual(try failure(["-accel", "kvm"]), "keel: no kernel given (use -kernel FILE)")
    }

    func testTCGRejectsAKernelThatIsNeitherFormat() throws {
        let k = try tempFile(Array(repeating: 0, count: 16))
        XCTAssertEqual(try failure(["-accel", "tcg", "-kernel", k]), "keel: kernel \(k): not a Linux bzImage or PVH ELF kernel")
    }

    func testELFWithoutPVHNote() throws {
        let elf = PackagePaths.root.appendingPathComponent(".build/debug/keel").path
        XCTAssertEqual(try failure(["-accel", "kvm", "-kernel", elf]), "keel: kernel \(elf): not a Linux bzImage or PVH ELF kernel")
    }

    func testHelpAndVersion() throws {
        let h = try run(["-help"])
        XCTAssertEqual(h.status, 0)
        XCTAssertTrue(h.stdout.contains("-kernel FILE"))
        let v = try run(["--version"])
        XCTAssertEqual(v.status, 0)
        XCTAssertTrue(v.stdout.hasPrefix("Keel version "))
    }

    func testKVMDeviceErrorsNameTheProblem() {
        XCTAssertThrowsError(try KVMSystem(path: "/nonexistent/kvm")) { e in
            XCTAssertEqual("\(e)", "cannot open /nonexistent/kvm: No such file or directory (no KVM on this host; use -accel tcg)")
        }
        XCTAssertEqual("\(KVMError.missingCapability("KVM_CAP_IRQFD"))", "KVM lacks the capability Keel needs: KVM_CAP_IRQFD")
    }
}
