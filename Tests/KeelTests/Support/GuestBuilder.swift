import Foundation

/// Where the package lives, found from this file's path (Tests/KeelTests/Support/…).
enum PackagePaths {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // KeelTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()
}

/// One test guest: its sources (relative to the package root) and the image it becomes.
struct GuestRecipe: Sendable {
    enum Format: Sendable {
        /// An ELF with a XEN_ELFNOTE_PHYS32_ENTRY note, booted through PVH.
        case pvhELF
        /// A bzImage: the real-mode part assembled from `setup`, then the linked image as the
        /// protected-mode part (Linux boot protocol).
        case bzImage(setup: String)
    }

    let name: String
    let sources: [String]
    let format: Format

    static let guestDirectory = "Tests/KeelTests/Guests"
    static let runtimeDirectory = "\(guestDirectory)/runtime"
    static let runtimeSources = ["\(runtimeDirectory)/entry.gS", "\(runtimeDirectory)/rt.gc"]
    static let linkerScript = "\(runtimeDirectory)/guest.ld"
    static let runtimeHeader = "\(runtimeDirectory)/rt.h"

    static func pvh(_ name: String, _ files: String...) -> GuestRecipe {
        GuestRecipe(name: name, sources: runtimeSources + files.map { "\(guestDirectory)/\($0)" }, format: .pvhELF)
    }

    static let hello = pvh("hello", "hello.gc")
    static let longModePVH = pvh("longmode", "longmode.gc")
    static let pioMMIO = pvh("pio-mmio", "pio-mmio.gc")
    static let smp = pvh("smp", "smp.gc", "smp-trampoline.gS")
    static let rtc = pvh("rtc", "rtc.gc")
    static let poweroff = pvh("poweroff", "poweroff.gc")
    static let reboot = pvh("reboot", "reboot.gc")
    static let serialEcho = pvh("serial-echo", "serial-echo.gc")
    static let ticker = pvh("ticker", "ticker.gc")
    static let powerButton = pvh("pwrbtn", "pwrbtn.gc")
    static let lapicTimer = pvh("lapic-timer", "lapic-timer.gc")
    static let linux64 = GuestRecipe(
        name: "linux64",
        sources: ["\(guestDirectory)/linux64-head.gS"] + runtimeSources + ["\(guestDirectory)/linux64.gc"],
        format: .bzImage(setup: "\(guestDirectory)/linux64-setup.gS"))
    static let pioLoop = GuestRecipe(
        name: "pio-loop", sources: runtimeSources + ["bench/guests/pio-loop.gc"], format: .pvhELF)

    static let all: [GuestRecipe] = [
        hello, longModePVH, pioMMIO, smp, rtc, poweroff, reboot, serialEcho, ticker, powerButton, lapicTimer, linux64, pioLoop,
    ]
}

enum GuestBuildError: Error, CustomStringConvertible {
    case missingSource(String)
    case toolFailed(command: String, status: Int32, output: String)
    case badSetup(String)

    var description: String {
        switch self {
        case .missingSource(let path): return "guest source not found: \(path)"
        case .toolFailed(let command, let status, let output): return "`\(command)` failed (status \(status)):\n\(output)"
        case .badSetup(let why): return "bzImage setup part is malformed: \(why)"
        }
    }
}

/// Builds test guests with the host's gcc/ld/objcopy into `<root>/.build/test-guests`. Images
/// are keyed by a hash of every input, so a source change rebuilds and a test run builds each
/// guest at most once.
final class GuestBuilder: @unchecked Sendable {
    static let shared = GuestBuilder(packageRoot: PackagePaths.root)

    static let compileFlags = [
        "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie", "-static", "-mno-red-zone",
        "-mgeneral-regs-only", "-O2", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
        "-fno-builtin", "-Wall", "-Wextra", "-Wno-unused-parameter",
    ]
    static let linkFlags = [
        "-nostdlib", "-static", "-no-pie", "-Wl,-z,max-page-size=0x1000", "-Wl,--build-id=none",
        "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments",
    ]

    let packageRoot: URL
    let cacheDirectory: URL
    private let lock = NSLock()
    private var built: [String: URL] = [:]

    init(packageRoot: URL) {
        self.packageRoot = packageRoot
        self.cacheDirectory = packageRoot.appendingPathComponent(".build/test-guests", isDirectory: true)
    }

    /// The bootable image for `recipe`, building it if its inputs changed.
    func image(for recipe: GuestRecipe) throws -> URL {
        lock.lock()
        defer { lock.unlock() }
        if let url = built[recipe.name] { return url }
        let url = try buildLocked(recipe)
        built[recipe.name] = url
        return url
    }

    private func path(_ relative: String) -> URL { packageRoot.appendingPathComponent(relative) }

    private func inputs(of recipe: GuestRecipe) -> [String] {
        var files = recipe.sources + [GuestRecipe.linkerScript, GuestRecipe.runtimeHeader]
        if case .bzImage(let setup) = recipe.format { files.append(setup) }
        return files
    }

    private func buildLocked(_ recipe: GuestRecipe) throws -> URL {
        var hash = FNV1a()
        hash.add(recipe.name)
        hash.add((Self.compileFlags + Self.linkFlags).joined(separator: " "))
        for file in inputs(of: recipe) {
            guard let data = FileManager.default.contents(atPath: path(file).path) else {
                throw GuestBuildError.missingSource(path(file).path)
            }
            hash.add(file)
            hash.add(data)
        }
        let fileName: String
        switch recipe.format {
        case .pvhELF: fileName = "\(recipe.name).elf"
        case .bzImage: fileName = "\(recipe.name).bzImage"
        }
        let directory = cacheDirectory.appendingPathComponent("\(recipe.name)-\(hash.hex)", isDirectory: true)
        let output = directory.appendingPathComponent(fileName)
        if FileManager.default.fileExists(atPath: output.path) { return output }

        let work = cacheDirectory.appendingPathComponent(
            "tmp-\(recipe.name)-\(ProcessInfo.processInfo.processIdentifier)", isDirectory: true)
        try? FileManager.default.removeItem(at: work)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        var objects: [String] = []
        for (index, source) in recipe.sources.enumerated() {
            let object = work.appendingPathComponent("\(index)-\(path(source).deletingPathExtension().lastPathComponent).o").path
            try run(["gcc"] + Self.compileFlags + ["-I", path(GuestRecipe.runtimeDirectory).path, "-c", "-x",
                     Self.language(of: source), path(source).path, "-o", object])
            objects.append(object)
        }
        let elf = work.appendingPathComponent("\(recipe.name).elf").path
        try run(["gcc"] + Self.linkFlags + ["-Wl,-T,\(path(GuestRecipe.linkerScript).path)", "-o", elf] + objects)

        let product = work.appendingPathComponent(fileName)
        if case .bzImage(let setup) = recipe.format {
            try makeBzImage(setupSource: path(setup).path, kernelELF: elf, work: work, output: product)
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: output)
        try FileManager.default.moveItem(at: product, to: output)
        pruneStaleBuilds(of: recipe.name, keeping: directory.lastPathComponent)
        return output
    }

    /// Removes images of `name` built from older sources (`<name>-<16 hex digits>`).
    private func pruneStaleBuilds(of name: String, keeping current: String) {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: cacheDirectory.path)) ?? []
        for entry in entries where entry != current && entry.hasPrefix(name + "-") {
            let suffix = entry.dropFirst(name.count + 1)
            guard suffix.count == 16, suffix.allSatisfy({ $0.isHexDigit }) else { continue }
            try? FileManager.default.removeItem(at: cacheDirectory.appendingPathComponent(entry))
        }
    }

    /// bzImage = real-mode part ((setup_sects + 1) sectors) + protected-mode part, with
    /// syssize (0x1f4) giving the protected-mode size in 16-byte units.
    private func makeBzImage(setupSource: String, kernelELF: String, work: URL, output: URL) throws {
        let setupObject = work.appendingPathComponent("setup.o").path
        let setupELF = work.appendingPathComponent("setup.elf").path
        let setupBin = work.appendingPathComponent("setup.bin").path
        let kernelBin = work.appendingPathComponent("kernel.bin").path
        try run(["gcc", "-c", "-x", "assembler-with-cpp", setupSource, "-o", setupObject])
        try run(["ld", "-m", "elf_x86_64", "-Ttext=0", "--build-id=none", "-o", setupELF, setupObject])
        try run(["objcopy", "-O", "binary", "-j", ".text", setupELF, setupBin])
        try run(["objcopy", "-O", "binary", kernelELF, kernelBin])
        guard var setup = FileManager.default.contents(atPath: setupBin),
              let kernel = FileManager.default.contents(atPath: kernelBin)
        else { throw GuestBuildError.badSetup("objcopy produced no output") }
        guard setup.count > 0x206, setup[0x202..<0x206] == Data("HdrS".utf8) else {
            throw GuestBuildError.badSetup("no HdrS at 0x202")
        }
        let sectors = Int(setup[0x1f1] == 0 ? 4 : setup[0x1f1]) + 1
        guard setup.count == sectors * 512 else {
            throw GuestBuildError.badSetup("\(setup.count) bytes, expected \(sectors * 512) for setup_sects")
        }
        let syssize = UInt32((kernel.count + 15) / 16)
        for i in 0..<4 { setup[0x1f4 + i] = UInt8(truncatingIfNeeded: syssize >> (8 * UInt32(i))) }
        try (setup + kernel).write(to: output)
    }

    static func language(of source: String) -> String {
        source.hasSuffix(".gS") || source.hasSuffix(".S") ? "assembler-with-cpp" : "c"
    }

    private func run(_ command: [String]) throws {
        let result = try KeelRunner.runCommand(
            executable: "/usr/bin/env", arguments: command, timeout: 120)
        guard result.status == 0, !result.timedOut else {
            throw GuestBuildError.toolFailed(command: command.joined(separator: " "), status: result.status,
                                             output: result.stdout + result.stderr)
        }
    }
}

/// 64-bit FNV-1a: a cache key, not a security boundary.
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ data: Data) {
        for byte in data {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01b3
        }
        add(separator: 0xff)
    }
    mutating func add(_ string: String) { add(Data(string.utf8)) }
    private mutating func add(separator: UInt8) {
        value ^= UInt64(separator)
        value = value &* 0x0000_0100_0000_01b3
    }
    var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
