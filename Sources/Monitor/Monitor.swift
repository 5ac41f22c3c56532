import Devices
import Glibc
import Loop
import Machine

/// Keel's monitors: QMP servers and human monitors on sockets, stdio or the muxed console, all
/// served on the main loop (handlers run with the big lock held), and the events they deliver.
public final class Monitor {
    public struct Version: Sendable {
        public var major, minor, micro: Int
        public var package: String
        public init(major: Int, minor: Int, micro: Int, package: String) {
            self.major = major
            self.minor = minor
            self.micro = micro
            self.package = package
        }
    }

    unowned let machine: MachineControl
    let loop: EventLoop
    public let version: Version
    private var commands: [String: QMPCommand] = [:]
    private(set) var commandNames: [String] = []
    private var listeners: [MonitorListener] = []
    private var connections: [SocketConnection] = []
    private var chardevMonitors: [ChardevMonitor] = []
    private var ownedChardevs: [Chardev] = []
    private var monitorChardevs: [ChardevInfo] = []
    private(set) lazy var hmp = HMPCommands(monitor: self)

    public init(machine: MachineControl, loop: EventLoop, version: Version) {
        self.machine = machine
        self.loop = loop
        self.version = version
        for c in makeCommands() {
            commands[c.name] = c
            commandNames.append(c.name)
        }
    }

    func command(named name: String) -> QMPCommand? { commands[name] }

    var allChardevs: [ChardevInfo] { monitorChardevs + machine.chardevs }

    /// Opens every monitor in `specs` (before the main loop runs). A `wait=on` socket blocks here
    /// until its first client connects, as QEMU's does.
    public func start(_ specs: [MonitorSpec]) throws {
        for spec in specs {
            monitorChardevs.append(ChardevInfo(label: spec.label, filename: spec.backend.description))
            if spec.backend == .stdio {
                let chardev = StdioChardev(loop: loop, muxEscape: false, onQuit: {})
                ownedChardevs.append(chardev)
                attach(makeSession(spec), to: chardev)
                continue
            }
            let option = spec.mode == .control ? "-qmp" : "-monitor"
            let listener = try MonitorListener(spec: spec, option: option, loop: loop) { [unowned self] fd in
                self.accept(fd, spec: spec)
            }
            listeners.append(listener)
            if spec.wait { listener.waitForClient(note: "keel: waiting for connection on \(spec.backend)") }
            try listener.start()
        }
    }

    private func makeSession(_ spec: MonitorSpec) -> MonitorSession {
        spec.mode == .control ? QMPSession(monitor: self, pretty: spec.pretty) : HMPSession(monitor: self)
    }

    private func attach(_ session: MonitorSession, to chardev: Chardev) {
        let cm = ChardevMonitor(chardev: chardev, session: session)
        setTransport(session, cm)
        chardevMonitors.append(cm)
        chardev.frontend = cm
        session.start()
    }

    private func setTransport(_ session: MonitorSession, _ t: MonitorTransport) {
        if let q = session as? QMPSession { q.transport = t }
        if let h = session as? HMPSession { h.transport = t }
    }

    private func accept(_ fd: Int32, spec: MonitorSpec) {
        let c = SocketConnection(fd: fd, loop: loop, monitor: self)
        let session = makeSession(spec)
        setTransport(session, c)
        connections.append(c)
        do { try c.open(session) } catch { c.disconnect() }
    }

    func connectionClosed(_ c: SocketConnection) {
        connections.removeAll { $0 === c }
    }

    /// Puts the human monitor behind a muxed console's Ctrl-A c (`-nographic`, `mon:stdio`).
    public func attachMuxedHMP(_ chardev: MuxChardev) {
        let session = HMPSession(monitor: self)
        let cm = ChardevMonitor(chardev: chardev, session: session)
        session.transport = cm
        chardevMonitors.append(cm)
        chardev.monitorFrontend = cm
    }

    /// Sends an event to every QMP client that finished negotiation. `data` is omitted when nil.
    public func emit(_ event: String, data: JSON? = nil) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var o: [(String, JSON)] = [
            ("timestamp", ["seconds": .int(ts.tv_sec), "microseconds": .int(ts.tv_nsec / 1000)]),
            ("event", .string(event)),
        ]
        if let data { o.append(("data", data)) }
        let message = JSON.object(o)
        for c in connections { c.session?.deliver(event: message) }
        for c in chardevMonitors { c.session.deliver(event: message) }
    }

    /// SHUTDOWN / RESET's data.
    public static func causeData(_ cause: ShutdownCause) -> JSON {
        ["guest": .bool(cause.isGuest), "reason": .string(cause.rawValue)]
    }

    /// Block I/O error event plumbing (QAPI BLOCK_IO_ERROR); no block devices emit it yet.
    public func emitBlockIOError(device: String, nodeName: String?, operation: String, action: String,
                                 noSpace: Bool = false, reason: String) {
        var d: [(String, JSON)] = [("device", .string(device))]
        if let n = nodeName { d.append(("node-name", .string(n))) }
        d += [("operation", .string(operation)), ("action", .string(action))]
        if noSpace { d.append(("nospace", true)) }
        d.append(("reason", .string(reason)))
        emit("BLOCK_IO_ERROR", data: .object(d))
    }

    /// At exit: lets queued replies and events reach the clients, then closes everything.
    public func shutdown() {
        for c in connections { c.drain(milliseconds: 500) }
        for c in connections { c.disconnect() }
        for l in listeners { l.close() }
        listeners.removeAll()
        for c in ownedChardevs { c.close() }
        ownedChardevs.removeAll()
    }
}
