/// Where a monitor session's output goes: a socket connection or a chardev.
protocol MonitorTransport: AnyObject {
    func send(_ text: String)
    /// Ends the connection (a socket is closed; a chardev stays).
    func disconnect()
}

/// A session of either kind, as a transport drives it.
protocol MonitorSession: AnyObject {
    /// The greeting (QMP) or banner and prompt (HMP).
    func start()
    func receive(_ bytes: UnsafeRawBufferPointer)
    /// An event in QMP form; HMP sessions ignore it.
    func deliver(event: JSON)
}

/// One QMP client's protocol state (docs/interop/qmp-spec.rst): the greeting, capabilities
/// negotiation, then commands and events. Each client negotiates on its own; events reach only
/// clients that have left negotiation mode.
final class QMPSession: MonitorSession {
    unowned let monitor: Monitor
    weak var transport: MonitorTransport?
    let pretty: Bool
    private(set) var negotiated = false
    private var streamer = JSONStreamer()

    init(monitor: Monitor, pretty: Bool) {
        self.monitor = monitor
        self.pretty = pretty
    }

    func start() {
        // Keel advertises no capability: it implements no out-of-band execution.
        send(["QMP": ["version": monitor.versionJSON, "capabilities": []]])
    }

    private func send(_ v: JSON) {
        transport?.send(v.serialized(pretty: pretty) + "\r\n")
    }

    func deliver(event: JSON) {
        if negotiated { send(event) }
    }

    func receive(_ bytes: UnsafeRawBufferPointer) {
        var pieces: [JSONStreamer.Piece] = []
        streamer.feed(bytes) { pieces.append($0) }
        for p in pieces {
            switch p {
            case .error(let e): send(["error": QMPError.generic(e).json])
            case .message(let text):
                do {
                    send(handle(try JSONParser.parse(text)))
                } catch let e as JSONParseError {
                    send(["error": QMPError.generic(e.description).json])
                } catch {
                    send(["error": QMPError.generic("\(error)").json])
                }
            }
        }
    }

    /// The reply to one request: {"return": ..., "id": ...} or {"id": ..., "error": ...}.
    func handle(_ request: JSON) -> JSON {
        let id = request["id"]
        do {
            return reply(try execute(request), id: id)
        } catch let e as QMPError {
            return errorReply(e, id: id)
        } catch {
            return errorReply(.generic("\(error)"), id: id)
        }
    }

    private func reply(_ result: JSON, id: JSON?) -> JSON {
        var o: [(String, JSON)] = [("return", result)]
        if let id { o.append(("id", id)) }
        return .object(o)
    }

    private func errorReply(_ e: QMPError, id: JSON?) -> JSON {
        var o: [(String, JSON)] = []
        if let id { o.append(("id", id)) }
        o.append(("error", e.json))
        return .object(o)
    }

    private func execute(_ request: JSON) throws -> JSON {
        guard let members = request.objectMembers else { throw QMPError.generic("QMP input must be a JSON object") }
        var name: String?
        var outOfBand = false
        var arguments: JSON = [:]
        for (key, value) in members {
            switch key {
            case "execute", "exec-oob":
                guard let s = value.stringValue else { throw QMPError.generic("QMP input member '\(key)' must be a string") }
                if name != nil { throw QMPError.generic("QMP input must not have both 'execute' and 'exec-oob'") }
                name = s
                outOfBand = key == "exec-oob"
            case "arguments":
                guard value.objectMembers != nil else { throw QMPError.generic("QMP input member 'arguments' must be an object") }
                arguments = value
            case "id": break
            default: throw QMPError.generic("QMP input member '\(key)' is unexpected")
            }
        }
        guard let name else { throw QMPError.generic("QMP input lacks member 'execute'") }
        if !negotiated && name != "qmp_capabilities" {
            throw QMPError(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'")
        }
        guard let command = monitor.command(named: name) else {
            throw QMPError(.commandNotFound, "The command \(name) has not been found")
        }
        if outOfBand { throw QMPError.generic("The command \(name) does not support OOB") }
        try command.check(arguments)
        if name == "qmp_capabilities" && !negotiated {
            for cap in arguments["enable"]?.arrayValue ?? [] {
                throw QMPError.generic("Capability '\(cap.stringValue ?? "")' not available")
            }
            negotiated = true
            return [:]
        }
        return try command.run(arguments)
    }
}
