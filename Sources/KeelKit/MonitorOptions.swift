import Machine

/// QEMU's monitor options: `-qmp`, `-qmp-pretty`, `-monitor`, `-chardev socket|stdio`, `-mon`.
/// Chardevs are collected first and `-mon` resolved at the end, as QEMU allows any order.
struct MonitorOptions {
    private var chardevs: [String: (backend: MonitorSpec.Backend, wait: Bool, server: Bool, reconnect: UInt64)] = [:]
    private var chardevOrder: [String] = []
    private var mons: [(value: String, id: String, mode: MonitorSpec.Mode, pretty: Bool)] = []
    private var legacy: [MonitorSpec] = []

    /// `-qmp DEV`, `-qmp-pretty DEV`, `-monitor DEV`.
    mutating func addLegacy(option: String, _ value: String, mode: MonitorSpec.Mode, pretty: Bool) throws {
        if value == "none" { return }
        let (backend, wait) = try Self.parseDevice(option: option, value)
        legacy.append(MonitorSpec(mode: mode, backend: backend, wait: wait, pretty: pretty,
                                  label: "compat_monitor\(legacy.count)"))
    }

    /// `-chardev socket,id=ID,path=PATH|host=HOST,port=PORT,server=on,wait=off` or `-chardev stdio,id=ID`.
    mutating func addChardev(_ value: String) throws {
        let opt = "-chardev"
        var o = try OptionList(option: opt, value, impliedKey: "backend")
        guard let id = o.take("id"), !id.isEmpty else { throw ConfigurationErrorText("-chardev \(value): an id=... is required") }
        guard chardevs[id] == nil else { throw ConfigurationErrorText("-chardev \(value): duplicate chardev id '\(id)'") }
        let backend: MonitorSpec.Backend
        var wait = false
        var server = true
        var reconnect: UInt64 = 0
        switch o.implied ?? "" {
        case "stdio":
            _ = try o.takeBool("signal")
            backend = .stdio
        case "socket":
            // A client socket (server=off, QEMU's default) serves vhost-user devices only.
            server = try o.takeBool("server") ?? false
            wait = try o.takeBool("wait") ?? true
            if let r = o.take("reconnect") {
                guard let n = UInt64(r), n <= 86400 else { throw ConfigurationErrorText("-chardev \(value): reconnect=\(r) is not a number of seconds") }
                reconnect = n
            }
            let path = o.take("path"), host = o.take("host"), port = o.take("port")
            _ = try o.takeBool("ipv4"); _ = try o.takeBool("ipv6"); _ = o.take("to")
            if let path {
                guard host == nil, port == nil else { throw ConfigurationErrorText("-chardev \(value): path= and host=/port= exclude each other") }
                guard !path.isEmpty, path.utf8.count < 108 else {
                    throw ConfigurationErrorText("-chardev \(value): path=\(path): empty or longer than 107 bytes")
                }
                backend = .unixSocket(path: path)
            } else if let port {
                backend = .tcpSocket(host: host ?? "", port: try Self.port(port, option: opt, value))
            } else {
                throw ConfigurationErrorText("-chardev \(value): a socket needs path= or port=")
            }
        default:
            throw ConfigurationErrorText("-chardev \(value): unsupported backend '\(o.implied ?? "")' (Keel's monitors take socket or stdio)")
        }
        try o.rejectUnused(value)
        if !server, case .tcpSocket = backend {
            throw ConfigurationErrorText("-chardev \(value): only listening TCP sockets are supported (add server=on)")
        }
        chardevs[id] = (backend, wait, server, reconnect)
        chardevOrder.append(id)
    }

    /// A `-chardev`'s backend, for devices that attach to one by id (virtconsole).
    func chardev(_ id: String) -> (backend: MonitorSpec.Backend, wait: Bool, server: Bool, reconnect: UInt64)? { chardevs[id] }

    /// Whether a `-mon` uses chardev `id`.
    func monitorUses(_ id: String) -> Bool { mons.contains { $0.id == id } }

    /// `-mon chardev=ID[,mode=control|readline][,pretty=on|off]`.
    mutating func addMon(_ value: String) throws {
        var o = try OptionList(option: "-mon", value, impliedKey: "chardev")
        guard let id = o.implied ?? o.take("chardev") else { throw ConfigurationErrorText("-mon \(value): chardev=... is required") }
        let mode: MonitorSpec.Mode
        switch o.take("mode") ?? "readline" {
        case "control": mode = .control
        case "readline": mode = .readline
        case let m: throw ConfigurationErrorText("-mon \(value): mode=\(m): expected control or readline")
        }
        let pretty = try o.takeBool("pretty") ?? false
        _ = o.take("id")
        try o.rejectUnused(value)
        mons.append((value, id, mode, pretty))
    }

    /// The monitors, checked: every -mon names a chardev, and stdio is used at most once.
    func resolve(serialOnStdio: Bool) throws -> [MonitorSpec] {
        var specs = legacy
        for m in mons {
            guard let c = chardevs[m.id] else { throw ConfigurationErrorText("-mon \(m.value): chardev '\(m.id)' not found") }
            guard c.server else { throw ConfigurationErrorText("-mon \(m.value): chardev '\(m.id)' must listen (add server=on)") }
            specs.append(MonitorSpec(mode: m.mode, backend: c.backend, wait: c.wait, pretty: m.pretty, label: m.id))
        }
        let stdio = specs.filter { $0.backend == .stdio }
        if stdio.count > 1 || (stdio.count == 1 && serialOnStdio) {
            throw ConfigurationErrorText("stdio: used by more than one of -serial, -monitor, -qmp (with -nographic, Ctrl-A c reaches the monitor)")
        }
        return specs
    }

    /// `stdio`, `unix:PATH[,server=on][,wait=off]`, `tcp:[HOST]:PORT[,server=on][,wait=off]`.
    static func parseDevice(option: String, _ value: String) throws -> (MonitorSpec.Backend, Bool) {
        if value == "stdio" { return (.stdio, false) }
        let head: Substring, rest: String
        if let comma = value.firstIndex(of: ",") {
            head = value[..<comma]
            rest = String(value[value.index(after: comma)...])
        } else {
            head = Substring(value)
            rest = ""
        }
        let backend: MonitorSpec.Backend
        if head.hasPrefix("unix:") {
            let path = String(head.dropFirst(5))
            guard !path.isEmpty, path.utf8.count < 108 else {
                throw ConfigurationErrorText("\(option) \(value): socket path is empty or longer than 107 bytes")
            }
            backend = .unixSocket(path: path)
        } else if head.hasPrefix("tcp:") {
            let addr = head.dropFirst(4)
            guard let colon = addr.lastIndex(of: ":") else { throw ConfigurationErrorText("\(option) \(value): expected tcp:HOST:PORT") }
            backend = .tcpSocket(host: String(addr[..<colon]), port: try port(String(addr[addr.index(after: colon)...]), option: option, value))
        } else {
            throw ConfigurationErrorText("\(option) \(value): unsupported monitor device (stdio, unix:PATH,server=on or tcp:HOST:PORT,server=on)")
        }
        var o = try OptionList(option: option, rest)
        let server = try o.takeBool("server") ?? false
        let wait = try o.takeBool("wait") ?? true
        _ = try o.takeBool("ipv4"); _ = try o.takeBool("ipv6")
        try o.rejectUnused(value)
        guard server else { throw ConfigurationErrorText("\(option) \(value): Keel's monitor sockets listen: add server=on") }
        return (backend, wait)
    }

    static func port(_ s: String, option: String, _ value: String) throws -> UInt16 {
        guard let p = UInt16(s) else { throw ConfigurationErrorText("\(option) \(value): port '\(s)' is not a TCP port number") }
        return p
    }
}
