import Block
import Foundation
import XCTest

enum PackagePaths {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var keel: String {
        ProcessInfo.processInfo.environment["KEEL_BINARY"] ?? root.appendingPathComponent(".build/debug/keel").path
    }
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion (stdout and stderr captured).
@discardableResult
func run(_ program: String, _ args: [String], cwd: String? = nil) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program.hasPrefix("/") ? program : "/usr/bin/" + program)
    p.arguments = args
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Drain stderr on another thread: a child filling both pipes would otherwise block forever.
    final class Box: @unchecked Sendable { var data = Data() }
    let e = Box()
    let drained = DispatchSemaphore(value: 0)
    DispatchQueue.global().async { e.data = err.fileHandleForReading.readDataToEndOfFile(); drained.signal() }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    drained.wait()
    p.waitUntilExit()
    return RunResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e.data, as: UTF8.self))
}

/// Runs a program that must succeed.
@discardableResult
func must(_ program: String, _ args: [String], cwd: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    let r = try run(program, args, cwd: cwd)
    XCTAssertEqual(r.status, 0, "\(program) \(args.joined(separator: " ")) failed: \(r.stderr)\(r.stdout)", file: file, line: line)
    return r.stdout
}

func keel(_ args: [String], cwd: String? = nil) throws -> RunResult { try run(PackagePaths.keel, ["img"] + args, cwd: cwd) }

/// A fresh directory under the system temp directory, removed by the test's teardown.
func scratchDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-block-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The whole device's bytes through Keel.
func readAll(_ dev: BlockDevice, file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(dev.size))
    var failure: Error?
    out.withUnsafeMutableBytes { p in
        let chunk = 1 << 20
        var off = 0
        while off < p.count {
            let n = min(chunk, p.count - off)
            do { try dev.read(into: UnsafeMutableRawBufferPointer(rebasing: p[off..<(off + n)]), at: UInt64(off)) } catch { failure = error; return }
            off += n
        }
    }
    if let failure { throw failure }
    return out
}

func readFileBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

/// Index of the first differing byte, for readable failures.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if a == b { return nil }
    if a.count != b.count { return min(a.count, b.count) }
    return zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset
}

func writeBytes(_ dev: BlockDevice, _ bytes: [UInt8], at offset: UInt64) throws {
    var failure: Error?
    bytes.withUnsafeBytes { p in do { try dev.write(p, at: offset) } catch { failure = error } }
    if let failure { throw failure }
}

func openRW(_ path: String, _ format: ImageFormat? = nil) throws -> BlockDevice {
    try openImage(path: path, options: ImageOpenOptions(format: format, readOnly: false))
}

func openRO(_ path: String, _ format: ImageFormat? = nil) throws -> BlockDevice {
    try openImage(path: path, options: ImageOpenOptions(format: format, readOnly: true))
}

/// qemu-img check must report a clean image: no errors, no leaks (exit 0).
func assertQemuCheckClean(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let r = try run("qemu-img", ["check", path])
    XCTAssertEqual(r.status, 0, "qemu-img check \(path): \(r.stdout)\(r.stderr)", file: file, line: line)
}

/// What qemu-img reads: the image converted to raw.
func qemuRaw(_ path: String, in dir: String) throws -> [UInt8] {
    let out = dir + "/qemu-view-\(UUID().uuidString).raw"
    try must("qemu-img", ["convert", "-O", "raw", path, out])
    defer { try? FileManager.default.removeItem(atPath: out) }
    return try readFileBytes(out)
}
