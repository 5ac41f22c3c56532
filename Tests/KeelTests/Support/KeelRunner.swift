import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a finished command left behind.
struct RunResult: Sendable {
    var stdout: String
    var stderr: String
    /// Exit status, or 128 + signal number if a signal ended the process.
    var status: Int32
    var timedOut: Bool
    var launched: Date
    var finished: Date

    /// Guest console lines with carriage returns and terminal escapes removed.
    var lines: [String] { RunResult.consoleLines(stdout) }

    static func consoleLines(_ text: String) -> [String] {
        text.replacingOccurrences(of: "\r", with: "")
            .split(separator: "\n", omittingEmptySubsequences: false)
            .map { line in
                // SeaBIOS (under QEMU) prints escapes and "Booting from ROM.." without a newline.
                var s = String(line)
                if let range = s.range(of: "Booting from ROM..") { s = String(s[range.upperBound...]) }
                return s
            }
    }
}

/// How the guest's COM1 is attached on the host.
enum SerialBackend: Sendable {
    /// The default with -nographic: the process's stdin/stdout.
    case stdio
    case file(String)
    /// `unix:PATH,server=on,wait=off`: the emulator listens, the test connects.
    case unixServer(String)
}

/// The machine for one guest run, spelled as Keel's command line.
struct MachineOptions: Sendable {
    var kernel: URL
    var smp = 1
    var memoryMiB = 64
    var append: String?
    var initrd: URL?
    var noReboot = true
    var testdev = false
    var serial: SerialBackend = .stdio
    /// -M for Keel (QEMU runs keep `pc`).
    var machine: String?
    /// Appended as is (devices, drives, chardevs).
    var extraArguments: [String] = []
}

/// Which program runs the guests: Keel with the kvm accelerator (the default), or QEMU with tcg
/// (KEEL_TEST_EMULATOR=qemu) or kvm (KEEL_TEST_EMULATOR=qemu-kvm) to prove the guests and the
/// harness against the reference machine.
enum Emulator: Sendable {
    case keel(binary: String)
    case qemu(binary: String, accel: String)

    var name: String {
        switch self {
        case .keel: return "keel"
        case .qemu(_, let accel): return "qemu -accel \(accel)"
        }
    }
    var isQEMU: Bool { if case .qemu = self { return true } else { return false } }
}

enum KeelRunnerError: Error, CustomStringConvertible {
    case missingBinary(String, hint: String)
    case launchFailed(String, String)

    var description: String {
        switch self {
        case .missingBinary(let path, let hint): return "emulator binary not found at \(path): \(hint)"
        case .launchFailed(let path, let why): return "could not start \(path): \(why)"
        }
    }
}

/// Runs commands with a timeout, optional stdin and captured output; knows how to spell a guest
/// run for Keel and for QEMU.
final class KeelRunner: Sendable {
    let emulator: Emulator
    /// Keel's accelerator for the runs (`-accel`); QEMU runs keep theirs.
    let keelAccel: String

    init(emulator: Emulator, keelAccel: String = "kvm") { self.emulator = emulator; self.keelAccel = keelAccel }

    /// KEEL_TEST_EMULATOR, lower-cased ("" when unset).
    static var requestedEmulator: String {
        ProcessInfo.processInfo.environment["KEEL_TEST_EMULATOR"]?.lowercased() ?? ""
    }

    /// The runner the tests use, chosen by the environment:
    /// KEEL_TEST_EMULATOR=qemu → qemu-system-x86_64 (or KEEL_QEMU_BINARY) -accel tcg;
    /// KEEL_TEST_EMULATOR=qemu-kvm → the same with -accel kvm;
    /// otherwise KEEL_BINARY or <package root>/.build/debug/keel with -accel kvm.
    static func fromEnvironment(keelAccel: String = "kvm") throws -> KeelRunner {
        let env = ProcessInfo.processInfo.environment
        let requested = requestedEmulator
        if requested == "qemu" || requested == "qemu-kvm" {
            let qemu = env["KEEL_QEMU_BINARY"] ?? "qemu-system-x86_64"
            guard let resolved = which(qemu) else {
                throw KeelRunnerError.missingBinary(qemu, hint: "install qemu-system-x86 or set KEEL_QEMU_BINARY")
            }
            return KeelRunner(emulator: .qemu(binary: resolved, accel: requested == "qemu" ? "tcg" : "kvm"))
        }
        let keel = env["KEEL_BINARY"] ?? PackagePaths.root.appendingPathComponent(".build/debug/keel").path
        guard FileManager.default.isExecutableFile(atPath: keel) else {
            throw KeelRunnerError.missingBinary(keel, hint: "run `swift build` first or set KEEL_BINARY")
        }
        return KeelRunner(emulator: .keel(binary: keel), keelAccel: keelAccel)
    }

    static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Keel's command line for `options` (QEMU's, with -accel tcg, under KEEL_TEST_EMULATOR=qemu).
    func arguments(for options: MachineOptions) -> [String] {
        var args: [String]
        switch emulator {
        case .keel: args = ["-accel", keelAccel] + (options.machine.map { ["-M", $0] } ?? [])
        case .qemu(_, let accel): args = ["-accel", accel, "-M", "pc", "-nic", "none"]
        }
        args += ["-m", "\(options.memoryMiB)", "-smp", "\(options.smp)", "-kernel", options.kernel.path]
        if let initrd = options.initrd { args += ["-initrd", initrd.path] }
        if let append = options.append { args += ["-append", append] }
        args.append("-nographic")
        if options.noReboot { args.append("-no-reboot") }
        args += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        if options.testdev { args += ["-device", "pc-testdev"] }
        switch options.serial {
        case .stdio: break
        case .file(let path): args += ["-serial", "file:\(path)"]
        case .unixServer(let path): args += ["-serial", "unix:\(path),server=on,wait=off"]
        }
        args += options.extraArguments
        return args
    }

    var binary: String {
        switch emulator {
        case .keel(let path), .qemu(let path, _): return path
        }
    }

    /// Boots a guest. `input` goes to stdin once stdout contains `inputAfter` (or at once);
    /// `whileRunning` runs on the calling thread while the guest runs; `watch` does the same and
    /// can read the output so far and signal the process (to kill it at a given console line).
    /// `inputLineDelay` sends the input a line at a time with that pause after each line.
    func run(_ options: MachineOptions, timeout: TimeInterval = 60, input: Data? = nil,
             inputAfter: String? = nil, inputLineDelay: TimeInterval? = nil,
             whileRunning: (() throws -> Void)? = nil,
             watch: ((RunningProcess) throws -> Void)? = nil) throws -> RunResult {
        try Self.runCommand(executable: binary, arguments: arguments(for: options), timeout: timeout,
                            input: input, inputAfter: inputAfter, inputLineDelay: inputLineDelay,
                            whileRunning: whileRunning, watch: watch)
    }

    /// Runs `executable` with `arguments`, killing it after `timeout` seconds.
    static func runCommand(executable: String, arguments: [String], timeout: TimeInterval,
                           environment: [String: String] = [:], input: Data? = nil, inputAfter: String? = nil, inputLineDelay: TimeInterval? = nil,
                           whileRunning: (() throws -> Void)? = nil,
                           watch: ((RunningProcess) throws -> Void)? = nil) throws -> RunResult {
        ignoreSIGPIPE
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let stdinPipe = Pipe(), stdoutPipe = Pipe(), stderrPipe = Pipe()
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe

        let state = CaptureState(input: input, trigger: inputAfter, lineDelay: inputLineDelay, stdin: stdinPipe.fileHandleForWriting)
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        let launched = Date()
        do {
            try process.run()
        } catch {
            throw KeelRunnerError.launchFailed(executable, "\(error)")
        }
        let readers = DispatchGroup()
        for (handle, isStdout) in [(stdoutPipe.fileHandleForReading, true), (stderrPipe.fileHandleForReading, false)] {
            readers.enter()
            Thread.detachNewThread {
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    state.append(chunk, toStdout: isStdout)
                }
                if isStdout { state.stdoutEnded() }
                readers.leave()
            }
        }
        if inputAfter == nil { state.sendInputIfDue() }

        var bodyError: Error?
        if let whileRunning {
            do { try whileRunning() } catch { bodyError = error }
        }
        if let watch, bodyError == nil {
            do { try watch(RunningProcess(pid: process.processIdentifier, state: state)) } catch { bodyError = error }
        }
        var timedOut = false
        if exited.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            process.terminate()
            if exited.wait(timeout: .now() + 3) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                exited.wait()
            }
        }
        let finished = Date()
        state.closeInput()
        _ = readers.wait(timeout: .now() + 5)
        if let bodyError { throw bodyError }
        let status: Int32 = process.terminationReason == .uncaughtSignal
            ? 128 + process.terminationStatus : process.terminationStatus
        let (out, err) = state.output()
        return RunResult(stdout: out, stderr: err, status: status, timedOut: timedOut,
                         launched: launched, finished: finished)
    }

    private static let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()
}

/// A command while it runs, as `watch` sees it.
struct RunningProcess {
    let pid: Int32
    fileprivate let state: CaptureState

    /// stdout so far.
    var output: String { state.output().0 }

    /// Waits until stdout so far satisfies `condition`; false on timeout.
    func waitForOutput(timeout: TimeInterval, until condition: (String) -> Bool) -> Bool {
        state.waitForStdout(deadline: Date().addingTimeInterval(timeout), until: condition)
    }

    func waitForOutput(containing text: String, timeout: TimeInterval) -> Bool {
        waitForOutput(timeout: timeout) { $0.contains(text) }
    }

    func signal(_ number: Int32) { kill(pid, number) }
}

/// Output collected by the reader threads, and the stdin that waits for a trigger.
private final class CaptureState: @unchecked Sendable {
    private let lock = NSCondition()
    private var stdout = Data()
    private var stderr = Data()
    private var input: Data?
    private let trigger: String?
    private let lineDelay: TimeInterval?
    private let stdin: FileHandle
    private var inputClosed = false

    init(input: Data?, trigger: String?, lineDelay: TimeInterval?, stdin: FileHandle) {
        self.input = input
        self.trigger = trigger
        self.lineDelay = lineDelay
        self.stdin = stdin
    }

    func append(_ chunk: Data, toStdout: Bool) {
        lock.lock()
        if toStdout { stdout.append(chunk) } else { stderr.append(chunk) }
        lock.broadcast()
        lock.unlock()
        if toStdout { sendInputIfDue() }
    }

    func sendInputIfDue() {
        lock.lock()
        defer { lock.unlock() }
        guard let pending = input, !inputClosed else { return }
        if let trigger, !String(decoding: stdout, as: UTF8.self).contains(trigger) { return }
        input = nil
        guard let lineDelay else {
            try? stdin.write(contentsOf: pending)
            return
        }
        let lines = pending.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        Thread.detachNewThread { [self] in
            for (i, line) in lines.enumerated() where i < lines.count - 1 || !line.isEmpty {
                lock.lock()
                if !inputClosed { try? stdin.write(contentsOf: line + Data(i < lines.count - 1 ? [UInt8(ascii: "\n")] : [])) }
                let closed = inputClosed
                lock.unlock()
                if closed { return }
                Thread.sleep(forTimeInterval: lineDelay)
            }
        }
    }

    func closeInput() {
        lock.lock()
        defer { lock.unlock() }
        if !inputClosed {
            inputClosed = true
            try? stdin.close()
        }
    }

    private var stdoutClosed = false

    func stdoutEnded() {
        lock.lock()
        stdoutClosed = true
        lock.broadcast()
        lock.unlock()
    }

    /// False at the deadline or once stdout has ended without the condition holding.
    func waitForStdout(deadline: Date, until condition: (String) -> Bool) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        while !condition(String(decoding: stdout, as: UTF8.self)) {
            if stdoutClosed || !lock.wait(until: deadline) { return condition(String(decoding: stdout, as: UTF8.self)) }
        }
        return true
    }

    func output() -> (String, String) {
        lock.lock()
        defer { lock.unlock() }
        return (String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}
