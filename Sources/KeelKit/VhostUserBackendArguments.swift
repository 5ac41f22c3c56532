import Devices
import Glibc
import Loop

/// The flags of a `keel vhost-user-*` back-end, read as QEMU's contrib back-ends take them:
/// `--name=value` or `--name value`.
struct VhostUserBackendArguments {
    private let args: [String]
    private var i = 0

    init(_ args: [String]) { self.args = args }

    /// The next flag, or nil at the end.
    mutating func next() -> String? {
        guard i < args.count else { return nil }
        defer { i += 1 }
        return args[i]
    }

    /// `flag`'s value if it is `name` (or one of `names`), inline or as the following argument.
    mutating func value(_ flag: String, _ names: String...) throws -> String? {
        for name in names {
            if flag.hasPrefix(name + "=") { return String(flag.dropFirst(name.count + 1)) }
            guard flag == name else { continue }
            guard i < args.count else { throw VhostUserError("\(name) requires a value") }
            defer { i += 1 }
            return args[i]
        }
        return nil
    }
}

/// Where a `keel vhost-user-*` back-end meets its front-end: `--socket-path=PATH` listens (the
/// front-end's chardev connects), `--socket-path=PATH --client` connects to a front-end whose
/// chardev has server=on, `--fd=N` serves a socket already connected (the vhost-user spec's
/// backend program conventions).
struct VhostUserEndpointFlags: Equatable {
    var socketPath = ""
    var client = false
    var fd: Int32?

    /// Consumes `flag` (and its value) if it is one of these flags.
    mutating func take(_ flag: String, from flags: inout VhostUserBackendArguments) throws -> Bool {
        if let v = try flags.value(flag, "--socket-path", "-s") { socketPath = v; return true }
        if flag == "--client" { client = true; return true }
        if let v = try flags.value(flag, "--fd") {
            fd = try Self.fileDescriptor(v)
            return true
        }
        return false
    }

    /// `--fd`'s value: a descriptor number.
    static func fileDescriptor(_ v: String) throws -> Int32 {
        guard let n = Int32(v), n >= 0 else { throw VhostUserError("--fd=\(v): expected a file descriptor number") }
        return n
    }

    func endpoint() throws -> VhostUserBackendServer.Endpoint {
        if let fd {
            guard socketPath.isEmpty, !client else { throw VhostUserError("--fd=\(fd) and --socket-path/--client exclude each other") }
            return .connected(fd)
        }
        guard !socketPath.isEmpty else { throw VhostUserError("--socket-path=PATH (or --fd=N) is required") }
        return client ? .connect(socketPath) : .listen(socketPath)
    }

    /// How the log names the endpoint.
    var description: String {
        if let fd { return "fd \(fd)" }
        return client ? "\(socketPath) (connecting)" : socketPath
    }
}

/// The life every `keel vhost-user-*` program shares: `--help`, then the device made on the
/// back-end's loop (parsing included), served until the loop ends; an error is one line and
/// exit status 1.
enum VhostUserBackendProgram {
    static func run(_ name: String, usage: String, _ args: [String],
                    makeDevice: (EventLoop) throws -> (device: VirtioDevice, endpoint: VhostUserEndpointFlags, serving: String)) -> Int32 {
        if args.contains("-h") || args.contains("--help") { print(usage); return 0 }
        do {
            let loop = try EventLoop()
            let (device, endpoint, serving) = try makeDevice(loop)
            let server = try VhostUserBackendServer(device: device, endpoint: endpoint.endpoint(), loop: loop)
            try server.start()
            // With --fd there is no one to wait for after the front-end goes: the program ends.
            if case .connected = server.endpoint { server.onDisconnect = { _ in loop.stop() } }
            server.log("serving \(serving) at \(endpoint.description)")
            // SIGPIPE would end the back-end when a front-end vanishes mid-send.
            signal(SIGPIPE, SIG_IGN)
            loop.run()
            server.stop()
            return 0
        } catch {
            let line = "keel \(name): \(error)\n"
            line.withCString { _ = write(2, $0, strlen($0)) }
            return 1
        }
    }
}
