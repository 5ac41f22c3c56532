import Block
import Glibc

/// `keel img`: qemu-img's create, info, check, convert and resize, with qemu-img's option
/// spelling and exit codes. Errors are one line on stderr: "keel img: <what>".
public enum KeelImg {
    public static func main(_ args: [String]) -> Int32 {
        guard let command = args.first else { usage(); return 1 }
        let rest = Array(args.dropFirst())
        do {
            switch command {
            case "create": return try create(rest)
            case "info": return try info(rest)
            case "check": return try check(rest)
            case "convert": return try convert(rest)
            case "resize": return try resize(rest)
            case "x-crash-writer": return try CrashWriter.run(rest)
            case "-h", "--help", "help": usage(); return 0
            default: throw ImgError("unknown command '\(command)' (create, info, check, convert, resize)")
            }
        } catch let e as ImgError {
            fail(e.message); return 1
        } catch let e as BlockError {
            fail(e.message); return 1
        } catch {
            fail("\(error)"); return 1
        }
    }

    static func usage() {
        print("""
        usage: keel img create [-f fmt] [-b backing_file [-F backing_fmt]] [-o options] [-q] filename [size]
               keel img info [-f fmt] [--output human|json] filename
               keel img check [-f fmt] [-r leaks|all] [--output human|json] [-q] filename
               keel img convert [-f fmt] [-O output_fmt] [-o options] [-t cache] [-p] [-q] filename output_filename
               keel img resize [-f fmt] [--shrink] [-q] filename [+|-]size
        """)
    }

    static func fail(_ message: String) {
        var line = "keel img: \(message)\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

struct ImgError: Error {
    let message: String
    init(_ m: String) { message = m }
}

/// getopt-style parsing: `-x value`, `-xvalue`, `--long value`, `--long=value`, flags, positionals.
struct ImgArgs {
    var options: [String: [String]] = [:]
    var flags: Set<String> = []
    var positional: [String] = []

    init(_ args: [String], valued: Set<String>, flags known: Set<String>) throws {
        var i = 0
        while i < args.count {
            let a = args[i]
            i += 1
            if a == "--" { positional += args[i...]; break }
            guard a.hasPrefix("-"), a.count > 1, !a.dropFirst().allSatisfy({ $0.isNumber }) || a.hasPrefix("--") else {
                positional.append(a); continue
            }
            var name = a.hasPrefix("--") ? String(a.dropFirst(2)) : String(a.dropFirst())
            var inline: String? = nil
            if a.hasPrefix("--"), let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...]); name = String(name[..<eq])
            } else if !a.hasPrefix("--"), name.count > 1, valued.contains(String(name.prefix(1))) {
                inline = String(name.dropFirst()); name = String(name.prefix(1))
            }
            if known.contains(name) && inline == nil { flags.insert(name); continue }
            guard valued.contains(name) else { throw ImgError("unrecognized option '\(a)'") }
            let value: String
            if let v = inline { value = v } else {
                guard i < args.count else { throw ImgError("option '\(a)' needs a value") }
                value = args[i]; i += 1
            }
            options[name, default: []].append(value)
        }
    }

    func value(_ name: String) -> String? { options[name]?.last }
    func has(_ name: String) -> Bool { flags.contains(name) }

    /// -o a=b,c=d (repeatable), as a dictionary.
    func creationOptions() throws -> [String: String] {
        var out: [String: String] = [:]
        for group in options["o"] ?? [] {
            for item in group.split(separator: ",") where !item.isEmpty {
                let parts = item.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { throw ImgError("invalid option '\(item)' (expected name=value)") }
                out[String(parts[0])] = String(parts[1])
            }
        }
        return out
    }
}

/// qemu-img's sizes: bytes, or a number with a k/K/M/G/T/P/E suffix (powers of 1024).
func parseSize(_ text: String) throws -> UInt64 {
    var digits = Substring(text)
    var shift: UInt64 = 0
    if let last = digits.last, !last.isNumber {
        switch last {
        case "b", "B": shift = 0
        case "k", "K": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        case "T", "t": shift = 40
        case "P", "p": shift = 50
        case "E", "e": shift = 60
        default: throw ImgError("invalid size '\(text)': unknown suffix '\(last)'")
        }
        digits = digits.dropLast()
    }
    // Fractions like 1.5G are allowed by qemu-img.
    let parts = digits.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
    guard let whole = UInt64(parts[0]) else { throw ImgError("invalid size '\(text)'") }
    var value = whole
    let (scaled, o) = whole.multipliedReportingOverflow(by: UInt64(1) << shift)
    guard !o else { throw ImgError("size '\(text)' is too large") }
    value = scaled
    if parts.count == 2 {
        guard !parts[1].isEmpty, parts[1].count <= 9, let frac = UInt64(parts[1]) else { throw ImgError("invalid size '\(text)'") }
        var den: UInt64 = 1
        for _ in 0..<parts[1].count { den *= 10 }
        value += frac * (UInt64(1) << shift) / den
    }
    return value
}

func parseFormat(_ s: String?) throws -> ImageFormat? {
    guard let s else { return nil }
    guard let f = ImageFormat(rawValue: s) else { throw ImgError("unknown or unsupported format '\(s)' (raw, qcow2)") }
    return f
}

func parseCache(_ s: String?, default d: CacheMode) throws -> CacheMode {
    guard let s else { return d }
    guard let c = CacheMode(rawValue: s) else { throw ImgError("invalid cache mode '\(s)'") }
    return c
}

/// qemu's size_to_str: three significant digits and a binary prefix, "196 KiB", "1.5 GiB".
func humanSize(_ v: UInt64) -> String {
    let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    var i = 0
    while i < 6 && Double(v) >= 1000.0 * Double(UInt64(1) << UInt64(10 * i)) { i += 1 }
    return format("%0.3g", Double(v) / Double(UInt64(1) << UInt64(10 * i))) + " \(suffixes[i])B"
}

func format(_ f: String, _ v: Double) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([v]) { vsnprintf(&buf, 64, f, $0) }
    return String(cString: buf)
}

func output(_ s: String) {
    var s = s
    s.withUTF8 { p in
        var done = 0
        while done < p.count {
            let n = Glibc.write(1, p.baseAddress! + done, p.count - done)
            if n <= 0 { return }
            done += n
        }
    }
}

/// The space a file takes on disk (st_blocks), as qemu-img's actual-size.
func allocatedBytes(_ path: String) -> UInt64 {
    var st = stat()
    guard stat(path, &st) == 0 else { return 0 }
    return UInt64(st.st_blocks) * 512
}
