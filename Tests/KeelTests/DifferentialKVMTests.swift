import Foundation
import XCTest

extension GuestRecipe {
    static let diffRunner = pvh("diff-runner", "diff-runner.gc")
}

/// The tcg CPU against the real CPU: one generated batch of user-mode cases (Support/
/// DiffCaseGenerator.swift) runs in the diff-runner guest once under `keel -accel kvm` (on PVM
/// guest ring 3 executes natively, so that run is the host CPU) and once under `keel -accel tcg`;
/// every case must leave the same registers, RFLAGS, xmm registers, MXCSR and data-region bytes,
/// or raise the same exception with the same error code, CR2 and RIP.
///
/// KEEL_TCG_DIFF_CASES=N runs N cases (default 3000), KEEL_TCG_DIFF_SEED=S another batch,
/// KEEL_TCG_DIFF_KEEP=/path/prefix keeps the batch (prefix.bin) and a listing (prefix.txt).
final class DifferentialKVMTests: XCTestCase {
    static var caseCount: Int { Int(ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_CASES"] ?? "") ?? 3000 }
    static var seed: UInt64 { UInt64(ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_SEED"] ?? "") ?? 0x6B65_656C_6466_6631 }

    /// RFLAGS bits left out of the comparison: IOPL, because PVM runs guest ring 3 at the host's
    /// IOPL and reports 0 in the trap frame although the guest's iretq asked for 3.
    static let rflagsIgnored: UInt64 = 0x3000

    /// One case's result line: "C index vector error cr2 rip rflags [changes…]".
    struct Outcome: Equatable {
        var fields: [String]
        init?(_ line: Substring) {
            let f = line.split(separator: " ").map(String.init)
            guard f.count >= 7, f[0] == "C", let flags = UInt64(f[6], radix: 16) else { return nil }
            fields = f
            fields[6] = String(flags & ~DifferentialKVMTests.rflagsIgnored, radix: 16)
        }
        var index: Int? { Int(fields[1], radix: 16) }
        var text: String { fields.joined(separator: " ") }
    }

    struct Run {
        var outcomes: [Int: Outcome] = [:]
        var result: RunResult
        var seconds: Double
    }

    func testEncoderSpellsKnownInstructions() {
        // add [rbx+8], rax; mov r9d, [rsp]; lea rax, [r13 + r12*4 - 0x200]; movdqa xmm9, [rsi]
        XCTAssertEqual(X86Encoder.encode(size: .q64, opcode: [0x01], reg: 0, rm: .mem(base: 3, index: nil, scale: 1, disp: 8, ripRelative: false)),
                       [0x48, 0x01, 0x43, 0x08])
        XCTAssertEqual(X86Encoder.encode(size: .d32, opcode: [0x8B], reg: 9, rm: .mem(base: 4, index: nil, scale: 1, disp: 0, ripRelative: false)),
                       [0x44, 0x8B, 0x0C, 0x24])
        XCTAssertEqual(X86Encoder.encode(size: .q64, opcode: [0x8D], reg: 0, rm: .mem(base: 13, index: 12, scale: 4, disp: -0x200, ripRelative: false)),
                       [0x4B, 0x8D, 0x84, 0xA5, 0x00, 0xFE, 0xFF, 0xFF])
        XCTAssertEqual(X86Encoder.encode(opcode: [0x0F, 0x6F], reg: 9, rm: .mem(base: 6, index: nil, scale: 1, disp: 0, ripRelative: false), legacyAfter: [0x66]),
                       [0x66, 0x44, 0x0F, 0x6F, 0x0E])
    }

    func testGeneratedCasesMatchTheHostCPU() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is absent: there is no real-CPU reference run without Keel's kvm accelerator")
        }
        let keel = try TCGLinuxBootTests.keel()
        let image = try GuestBuilder.shared.image(for: .diffRunner)
        var generator = DiffCaseGenerator(seed: Self.seed)
        let cases = generator.batch(count: Self.caseCount)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-diff-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let batchFile = directory.appendingPathComponent("cases.bin")
        try DiffCase.batch(cases, pristine: DiffCaseGenerator.pristine(seed: Self.seed)).write(to: batchFile)
        if let keep = ProcessInfo.processInfo.environment["KEEL_TCG_DIFF_KEEP"] {  // the batch and a listing, to rerun by hand
            try? FileManager.default.copyItem(at: batchFile, to: URL(fileURLWithPath: keep + ".bin"))
            try? cases.enumerated().map { "\(String($0.offset, radix: 16)) [\($0.element.label)] \($0.element.hex)" }
                .joined(separator: "\n").write(toFile: keep + ".txt", atomically: true, encoding: .utf8)
        }

        // The runs at once: they are independent processes. tcg twice: the interpreter alone, and
        // every block translated to host code from its first run (JIT/).
        var runs: [String: Result<Run, Error>] = [:]
        let lock = NSLock()
        let setups: [(name: String, accel: String, jit: String)] = [("kvm", "kvm", "on"), ("tcg", "tcg", "off"), ("tcg-jit", "tcg", "eager")]
        DispatchQueue.concurrentPerform(iterations: setups.count) { i in
            let setup = setups[i]
            let r = Result { try Self.run(keel: keel.path, accel: setup.accel, image: image, batch: batchFile, jit: setup.jit) }
            lock.lock(); runs[setup.name] = r; lock.unlock()
        }
        let kvm = try XCTUnwrap(runs["kvm"]).get(), tcg = try XCTUnwrap(runs["tcg"]).get()
        let translated = try XCTUnwrap(runs["tcg-jit"]).get()
        print("DifferentialKVMTests: \(cases.count) cases (seed \(Self.seed)), kvm \(String(format: "%.1f", kvm.seconds)) s, "
              + "tcg \(String(format: "%.1f", tcg.seconds)) s, tcg translated \(String(format: "%.1f", translated.seconds)) s "
              + "(\(keel.release ? "release" : "debug") keel)")
        for (name, run) in [("kvm", kvm), ("tcg", tcg), ("tcg-jit", translated)] {
            XCTAssertFalse(run.result.timedOut, "\(name) run timed out\n\(Self.tail(run.result))")
            XCTAssertEqual(run.result.status, KVMGuestTests.pass, "\(name) run did not finish the batch\n\(Self.tail(run.result))")
            let missing = (0..<cases.count).filter { run.outcomes[$0] == nil }
            XCTAssertEqual(missing.count, 0, "\(name) run did not report cases \(missing.prefix(10))\n"
                           + missing.prefix(3).map { "[\(cases[$0].label)] \(cases[$0].hex)" }.joined(separator: "\n"))
        }

        for (name, run) in [("tcg", tcg), ("tcg-jit", translated)] {
            var mismatches: [String] = []
            var families: [String: Int] = [:]
            for (i, c) in cases.enumerated() {
                guard let k = kvm.outcomes[i], let t = run.outcomes[i] else { continue }
                if k == t { continue }
                families[String(c.label.split(separator: " ")[0]), default: 0] += 1
                if mismatches.count < 25 { mismatches.append(Self.describe(c, kvm: k, tcg: t)) }
            }
            let total = families.values.reduce(0, +)
            XCTAssertEqual(total, 0, "\(name): \(total) of \(cases.count) cases differ (by family: \(families.sorted { $0.key < $1.key }))\n"
                           + mismatches.joined(separator: "\n"))
        }
    }

    static func run(keel: String, accel: String, image: URL, batch: URL, jit: String) throws -> Run {
        let args = ["-accel", accel, "-m", "64", "-kernel", image.path, "-initrd", batch.path, "-nographic", "-no-reboot",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        let start = Date()
        let r = try KeelRunner.runCommand(executable: keel, arguments: args, timeout: 120, environment: ["KEEL_TCG_JIT": jit])
        var run = Run(result: r, seconds: Date().timeIntervalSince(start))
        for line in r.lines {
            if let o = Outcome(Substring(line)), let i = o.index { run.outcomes[i] = o }
        }
        return run
    }

    static func tail(_ r: RunResult) -> String {
        "status \(r.status)\n--- stdout (end) ---\n\(r.stdout.suffix(1500))\n--- stderr ---\n\(r.stderr.suffix(1500))"
    }

    static let registerNames = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

    static func describe(_ c: DiffCase, kvm: Outcome, tcg: Outcome) -> String {
        let regs = c.regs.enumerated().map { "\(registerNames[$0.offset])=\(String($0.element, radix: 16))" }.joined(separator: " ")
        var s = "[\(c.label)] \(c.hex)\n  in:  \(regs) rflags=\(String(c.rflags, radix: 16))"
        if !c.patches.isEmpty { s += " patches=\(c.patches.map { "\(String($0.offset, radix: 16)):\($0.bytes.map { String(format: "%02x", $0) }.joined())" })" }
        s += "\n  kvm: \(kvm.text)\n  tcg: \(tcg.text)"
        return s
    }
}
