/// The human monitor's commands (QEMU's HMP), for `-monitor`, Ctrl-A c and QMP's
/// human-monitor-command. Output uses "\r\n" line ends, as QEMU's monitor does.
final class HMPCommands {
    private unowned let monitor: Monitor

    init(monitor: Monitor) { self.monitor = monitor }

    static let help: [(String, String)] = [
        ("cont|c", "resume emulation"),
        ("help|? [cmd]", "show the help"),
        ("info [subcommand]", "show various information about the system state"),
        ("quit|q", "quit the emulator"),
        ("stop|s", "stop emulation"),
        ("system_powerdown", "send system power down event"),
        ("system_reset", "reset the system"),
    ]

    static let infoHelp: [(String, String)] = [
        ("info block", "show the block devices"),
        ("info chardev", "show the character devices"),
        ("info cpus", "show infos for each CPU"),
        ("info iothreads", "show iothreads"),
        ("info kvm", "show KVM information"),
        ("info name", "show the current VM name"),
        ("info pci", "show PCI info"),
        ("info qtree", "show device tree"),
        ("info status", "show the current VM status (running|paused)"),
        ("info version", "show the version of QEMU"),
    ]

    /// Runs one command line; returns its output (possibly empty).
    func execute(_ line: String) -> String {
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let name = words.first else { return "" }
        var out = ""
        func say(_ s: String) { out += s + "\n" }
        let m = monitor.machine
        switch name {
        case "help", "?", "h":
            for (c, d) in Self.help { say("\(c) -- \(d)") }
        case "info":
            info(words.count > 1 ? words[1] : "", say)
        case "stop", "s": m.stopLocked()
        case "cont", "c":
            do { try m.continueLocked() } catch let e as QMPError { say("Error: \(e.desc)") } catch { say("Error: \(error)") }
        case "system_reset": m.systemResetLocked()
        case "system_powerdown":
            monitor.emit("POWERDOWN")
            m.systemPowerdownLocked()
        case "quit", "q": m.quitLocked()
        default: say("unknown command: '\(name)'")
        }
        return Self.crlf(out)
    }

    static func crlf(_ s: String) -> String {
        var r = ""
        for c in s.unicodeScalars {
            if c == "\n" { r += "\r\n" } else { r.unicodeScalars.append(c) }
        }
        return r
    }

    private func info(_ what: String, _ say: (String) -> Void) {
        let m = monitor.machine
        switch what {
        case "status":
            let s = m.runState
            say("VM status: \(s == .running ? "running" : s == .prelaunch ? "paused (prelaunch)" : s == .shutdown ? "paused (shutdown)" : s.rawValue)")
        case "cpus":
            for c in m.cpus { say("\(c.index == 0 ? "*" : " ") CPU #\(c.index): thread_id=\(c.threadID)") }
        case "iothreads":
            for t in m.iothreads {
                say("\(t.id):")
                say("  thread_id=\(t.threadID)")
                say("  poll-max-ns=\(t.polling.maxNanoseconds)")
                say("  poll-grow=\(t.polling.grow)")
                say("  poll-shrink=\(t.polling.shrink)")
                say("  aio-max-batch=0")
            }
        case "block", "pci": break
        case "version": say("\(monitor.version.major).\(monitor.version.minor).\(monitor.version.micro) (\(monitor.version.package))")
        case "name": if let n = m.machineInfo.name { say(n) }
        case "kvm": say("kvm support: \(m.machineInfo.acceleratorIsKVM ? "enabled" : m.machineInfo.kvmPresent ? "disabled" : "not compiled")")
        case "chardev": for c in monitor.allChardevs { say("\(c.label): filename=\(c.filename)") }
        case "qtree":
            say("bus: main-system-bus")
            say("  type System")
            say("  dev: keel-pc-isa, id \"\"")
            say("    bus: isa.0")
            say("      type ISA")
            for d in m.devices {
                say("      dev: \(d.type), id \"\(d.id)\"")
                for p in d.properties { say("        \(p)") }
            }
        default:
            for (c, d) in Self.infoHelp { say("\(c) -- \(d)") }
        }
    }
}

/// A human monitor session on a terminal or socket: the prompt, echo and simple line editing
/// (backspace, Ctrl-U; escape sequences such as arrow keys are ignored).
final class HMPSession: MonitorSession, ChardevFocusObserverShim {
    static let prompt = "(qemu) "
    static let maxLine = 4096

    private unowned let monitor: Monitor
    weak var transport: MonitorTransport?
    private var line: [UInt8] = []
    private var lastWasCR = false
    private var escape = 0
    private var greeted = false

    init(monitor: Monitor) { self.monitor = monitor }

    func start() {
        greeted = true
        transport?.send("\(monitor.version.package) monitor - type 'help' for more information\r\n" + Self.prompt)
    }

    func focusChanged(_ focused: Bool) {
        guard focused else { return }
        if greeted { transport?.send("\r\n" + Self.prompt) } else { start() }
    }

    func deliver(event: JSON) {}

    func receive(_ bytes: UnsafeRawBufferPointer) {
        var echo = ""
        for c in bytes {
            if escape > 0 {
                // ESC [ ... final byte (0x40-0x7E), or ESC O x.
                escape += 1
                if (escape > 2 && c >= 0x40 && c <= 0x7E) || escape > 8 { escape = 0 }
                continue
            }
            switch c {
            case 0x1B: escape = 1
            case 0x0D, 0x0A:
                if c == 0x0A && lastWasCR { lastWasCR = false; continue }
                lastWasCR = c == 0x0D
                echo += "\r\n"
                let text = String(decoding: line, as: UTF8.self)
                line.removeAll()
                transport?.send(echo)
                echo = ""
                transport?.send(monitor.hmp.execute(text) + Self.prompt)
                continue
            case 0x7F, 0x08:
                if !line.isEmpty { line.removeLast(); echo += "\u{08} \u{08}" }
            case 0x15:
                echo += String(repeating: "\u{08} \u{08}", count: line.count)
                line.removeAll()
            default:
                if c >= 0x20 && line.count < Self.maxLine {
                    line.append(c)
                    echo.unicodeScalars.append(UnicodeScalar(c >= 0x80 ? UInt8(ascii: "?") : c))
                }
            }
            lastWasCR = false
        }
        if !echo.isEmpty { transport?.send(echo) }
    }
}

/// HMPSession is told about mux focus through the chardev adapter.
protocol ChardevFocusObserverShim: AnyObject {
    func focusChanged(_ focused: Bool)
}
