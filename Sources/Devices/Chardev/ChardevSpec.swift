/// What backs a character device on the host, as written in QEMU's `-serial` option.
public enum ChardevSpec: Equatable, Sendable, CustomStringConvertible {
    case stdio
    /// Output written to a file (created or truncated); no input.
    case file(path: String)
    /// `server == false`: connect to a listening socket. `server == true`: listen at `path`;
    /// `wait` blocks startup until the first client connects.
    case unixSocket(path: String, server: Bool, wait: Bool)
    /// `-serial null`: the device exists, its output is discarded.
    case null
    /// `-serial none`: QEMU creates no serial device at all. `openChardev` treats it as null.
    /// (Not named `none`, which would collide with `Optional.none`.)
    case disabled

    public var description: String {
        switch self {
        case .stdio: return "stdio"
        case .file(let p): return "file:\(p)"
        case .unixSocket(let p, let server, let wait):
            return "unix:\(p)" + (server ? ",server=on" + (wait ? "" : ",wait=off") : "")
        case .null: return "null"
        case .disabled: return "none"
        }
    }

    /// Parses QEMU's `-serial` syntax: `stdio`, `null`, `none`, `file:PATH`,
    /// `unix:PATH[,server=on|off][,wait=on|off]` (and the legacy flags `server`, `nowait`).
    /// A `mon:` prefix is accepted and ignored here; see `parseSerialWithMonitor`.
    public static func parseSerial(_ s: String) throws -> ChardevSpec {
        try parseSerialWithMonitor(s).spec
    }

    /// As `parseSerial`, also telling whether the value had QEMU's `mon:` prefix (multiplex the
    /// monitor with this chardev, i.e. enable the Ctrl-A escapes).
    public static func parseSerialWithMonitor(_ s: String) throws -> (spec: ChardevSpec, monitor: Bool) {
        func fail(_ why: String) -> ChardevError { ChardevError("-serial \(s): \(why)") }
        var text = Substring(s)
        var monitor = false
        if text.hasPrefix("mon:") {
            monitor = true
            text = text.dropFirst(4)
        }
        let (kind, rest): (Substring, Substring?) = {
            guard let colon = text.firstIndex(of: ":") else { return (text, nil) }
            return (text[..<colon], text[text.index(after: colon)...])
        }()
        switch kind {
        case "stdio", "null", "none":
            if rest != nil { throw fail("'\(kind)' takes no argument") }
            if kind == "none" && monitor { throw fail("'mon:' needs a backend") }
            return (kind == "stdio" ? .stdio : kind == "null" ? .null : .disabled, monitor)
        case "file":
            guard let path = rest, !path.isEmpty else { throw fail("missing file path") }
            return (.file(path: String(path)), monitor)
        case "unix":
            guard let rest = rest else { throw fail("missing socket path") }
            var parts = rest.split(separator: ",", omittingEmptySubsequences: false)
            let path = parts.isEmpty ? "" : String(parts.removeFirst())
            if path.isEmpty { throw fail("missing socket path") }
            if path.utf8.count >= 108 { throw fail("socket path is longer than 107 bytes") }
            var server: Bool?
            var wait: Bool?
            for p in parts {
                let kv = p.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = kv[0]
                let value: Bool
                if kv.count == 2 {
                    guard let b = parseBool(kv[1]) else { throw fail("invalid value '\(kv[1])' for '\(key)'") }
                    value = b
                } else {
                    value = true
                }
                switch key {
                case "server": server = value
                case "wait": wait = value
                case "nowait" where kv.count == 1: wait = false
                default: throw fail("unsupported option '\(p)'")
                }
            }
            let isServer = server ?? false
            if !isServer && wait != nil { throw fail("'wait' is only valid with server=on") }
            return (.unixSocket(path: path, server: isServer, wait: wait ?? true), monitor)
        default:
            throw fail("unsupported backend '\(kind)' (supported: stdio, null, none, file:PATH, unix:PATH[,server=on][,wait=off])")
        }
    }

    private static func parseBool(_ s: Substring) -> Bool? {
        switch s {
        case "on", "yes", "true": return true
        case "off", "no", "false": return false
        default: return nil
        }
    }
}
