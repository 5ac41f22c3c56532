import Foundation
import XCTest
@testable import Machine

/// Little-endian field readers and iasl plumbing shared by the ACPI tests.
extension Collection where Element == UInt8, Index == Int {
    func le<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, at offset: Int) -> T {
        var v: T = 0
        for i in 0..<(T.bitWidth / 8) { v |= T(self[startIndex + offset + i]) << (8 * i) }
        return v
    }
    func ascii(at offset: Int, count: Int) -> String {
        String(decoding: self[(startIndex + offset)..<(startIndex + offset + count)], as: UTF8.self)
    }
    var byteSum: UInt8 { reduce(0, &+) }
}

enum IASL {
    struct Result {
        let status: Int32
        let output: String
        let dsl: String
    }

    static func path(tool: String = "iasl") -> String? {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for d in dirs + ["/usr/bin", "/usr/local/bin"] {
            let p = "\(d)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }

    static func runTool(_ tool: String, _ args: [String], in dir: URL) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.currentDirectoryURL = dir
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }

    /// Writes `bytes` to `<dir>/<fileName>.dat`, runs `iasl <args> <file>` there and returns its
    /// status, output and the .dsl it produced. Fails the test if iasl is missing (CI installs it).
    static func run(_ args: [String], fileName: String, bytes: [UInt8], file: StaticString = #filePath,
                    line: UInt = #line) throws -> Result? {
        guard let iasl = path() else {
            XCTFail("iasl not found: install the acpica-tools package", file: file, line: line)
            return nil
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-acpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer {
            if ProcessInfo.processInfo.environment["KEEL_KEEP_ACPI"] == nil { try? FileManager.default.removeItem(at: dir) }
        }
        let input = dir.appendingPathComponent("\(fileName).dat")
        try Data(bytes).write(to: input)
        let r = try runTool(iasl, args + [input.lastPathComponent], in: dir)
        let dslURL = dir.appendingPathComponent("\(fileName).dsl")
        let dsl = (try? String(contentsOf: dslURL, encoding: .utf8)) ?? ""
        if let keep = ProcessInfo.processInfo.environment["KEEL_KEEP_ACPI"] {
            try? dsl.write(toFile: "\(keep)/\(fileName).dsl", atomically: true, encoding: .utf8)
            try? Data(bytes).write(to: URL(fileURLWithPath: "\(keep)/\(fileName).dat"))
        }
        return Result(status: r.status, output: r.output, dsl: dsl)
    }
}
