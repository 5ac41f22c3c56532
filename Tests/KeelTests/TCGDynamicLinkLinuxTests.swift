import Foundation
import XCTest

/// A dynamically linked Debian program under -accel tcg: the host's /usr/bin/env, /bin/true and
/// /bin/false with their ld.so and libc.so.6 go into the default guest's initramfs. glibc's loader
/// checks the x86-64 baseline (CMOV, CX8, FPU, FXSR, MMX, SSE, SSE2, SYSCALL) before it runs
/// anything, and libc's own start-up code then runs under the tcg CPU.
final class TCGDynamicLinkLinuxTests: XCTestCase {
    /// Host files (symlinks followed) and the name each gets at the initramfs root.
    static let hostFiles: [(path: String, name: String)] = [
        ("/lib64/ld-linux-x86-64.so.2", "ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "libc.so.6"),
        ("/usr/bin/env", "dyn-env"),
        ("/bin/true", "dyn-true"),
        ("/bin/false", "dyn-false"),
    ]

    func testDynamicallyLinkedDebianProgramsRun() throws {
        for f in Self.hostFiles where !FileManager.default.fileExists(atPath: f.path) {
            throw XCTSkip("\(f.path) is absent on this host: no glibc program to copy into the guest")
        }
        let guest = try DefaultGuest(scratchPrefix: "keel-dynlink")
        defer { guest.removeScratch() }
        let files = try Self.hostFiles.map { (name: $0.name, contents: try Data(contentsOf: URL(fileURLWithPath: $0.path))) }
        let initrd = try guest.initramfs(adding: files)
        // The programs' PT_INTERP and the loader's default search path name these directories.
        let r = try guest.runShell([
            "mkdir -p /lib64 /lib/x86_64-linux-gnu",
            "mv /ld-linux-x86-64.so.2 /lib64/ && mv /libc.so.6 /lib/x86_64-linux-gnu/",
            "grep -o -w -m1 mmx /proc/cpuinfo",
            "/dyn-env -i KEEL_DYN=$((6*7)) 2>&1",
            "/dyn-true; echo true-status=$?",
            "/dyn-false; echo false-status=$?",
        ], extra: [], initrd: initrd)
        let lines = r.lines.map { $0.trimmingCharacters(in: .whitespaces) }
        let tail = r.stdout.suffix(3000)
        XCTAssertTrue(lines.contains("mmx"), "the guest kernel must see MMX in CPUID:\n\(tail)")
        XCTAssertTrue(lines.contains("KEEL_DYN=42"), "env (dynamically linked) did not print its environment:\n\(tail)")
        XCTAssertTrue(lines.contains("true-status=0"), "/bin/true must exit 0:\n\(tail)")
        XCTAssertTrue(lines.contains("false-status=1"), "/bin/false must exit 1:\n\(tail)")
    }
}
