import CKeel
import Glibc
import Loop

/// `-serial unix:PATH`: a stream socket, as QEMU's socket chardev.
///
/// Client mode connects at open and fails if nobody listens. Server mode (`server=on`) listens at
/// PATH (replacing a stale socket file there, never another kind of file), with `wait=on` blocks
/// the open until the first client connects, and serves one client at a time: while one is
/// connected the listening socket is not watched, so the next client waits in the backlog until
/// the current one disconnects. A disconnected client is dropped; in client mode Keel does not
/// reconnect.
///
/// Output is sent non-blocking: while no client is connected it is dropped (as QEMU does), and
/// when the peer's receive buffer is full the rest of that write is dropped rather than stalling
/// the vCPU behind a stalled peer.
public final class UnixSocketChardev: MuxChardev {
    public weak var frontend: ChardevFrontend?
    private var mux = MuxFocus()
    public var monitorFrontend: ChardevFrontend? {
        get { mux.monitorFrontend }
        set { mux.monitorFrontend = newValue }
    }

    private let loop: EventLoop
    private let path: String
    private let isServer: Bool
    private let label: String
    private var listenFD: Int32 = -1
    private var watchingListener = false
    private var input: ChardevInput!
    private var closed = false

    /// The connected client and a generation number, shared with writers on vCPU threads.
    private let client = Mutex<(fd: Int32, generation: UInt64)>((-1, 0))

    public init(path: String, server: Bool, wait: Bool, loop: EventLoop, muxEscape: Bool = false,
                onQuit: @escaping () -> Void = {}, option: String = "-serial") throws {
        self.loop = loop
        self.path = path
        self.isServer = server
        self.label = "\(option) \(ChardevSpec.unixSocket(path: path, server: server, wait: wait))"
        input = ChardevInput(
            loop: loop, muxEscape: muxEscape,
            frontend: { [weak self] in self.flatMap { $0.mux.current($0.frontend) } },
            onMuxAction: { [weak self] action in self?.handle(action, onQuit: onQuit) },
            onEndOfInput: { [weak self] in self?.dropClient() })

        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ChardevError("\(label): invalid socket path")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ChardevError("\(label): cannot create socket: \(Self.errorText())") }
        let len = socklen_t(MemoryLayout<sockaddr_un>.size)

        if !server {
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) }
            }
            guard r == 0 else {
                let why = Self.errorText()
                Glibc.close(fd)
                throw ChardevError("\(label): cannot connect: \(why)")
            }
            _ = ckeel_fcntl_int(fd, F_SETFL, ckeel_fcntl_int(fd, F_GETFL, 0) | O_NONBLOCK)
            try startClient(fd)
            return
        }

        removeStaleSocket()
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard r == 0, listen(fd, 1) == 0 else {
            let why = Self.errorText()
            Glibc.close(fd)
            throw ChardevError("\(label): cannot listen: \(why)")
        }
        _ = ckeel_fcntl_int(fd, F_SETFL, ckeel_fcntl_int(fd, F_GETFL, 0) | O_NONBLOCK)
        listenFD = fd
        if wait {
            let note = "keel: waiting for connection on \(label.dropFirst(option.count + 1))\n"
            var n = note
            n.withUTF8 { writeAll(fd: 2, UnsafeRawBufferPointer($0)) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            while true {
                let pr = poll(&p, 1, -1)
                if pr < 0 && errno == EINTR { continue }
                if pr < 0 {
                    let why = Self.errorText()
                    closeListener()
                    throw ChardevError("\(label): waiting for a client: \(why)")
                }
                if acceptClient() { break }
            }
        }
        if client.withLock({ $0.fd }) < 0 { try watchListener() }
    }

    deinit { close() }

    /// Whether a peer is connected now.
    public var isConnected: Bool { client.withLock { $0.fd >= 0 } }

    private static func errorText() -> String { String(cString: strerror(errno)) }

    private func removeStaleSocket() {
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
    }

    private func watchListener() throws {
        guard listenFD >= 0, !watchingListener else { return }
        try loop.addReadable(fd: listenFD) { [weak self] _ in _ = self?.acceptClient() }
        watchingListener = true
    }

    private func unwatchListener() {
        guard watchingListener else { return }
        loop.remove(fd: listenFD)
        watchingListener = false
    }

    /// Accepts one pending client; false if there was none.
    private func acceptClient() -> Bool {
        guard listenFD >= 0 else { return false }
        // accept4 is not visible through Glibc's module; set the flags after accept.
        let c = accept(listenFD, nil, nil)
        guard c >= 0 else { return false }
        _ = ckeel_fcntl_int(c, F_SETFD, FD_CLOEXEC)
        _ = ckeel_fcntl_int(c, F_SETFL, ckeel_fcntl_int(c, F_GETFL, 0) | O_NONBLOCK)
        unwatchListener()
        do {
            try startClient(c)
        } catch {
            Glibc.close(c)
            try? watchListener()
            return false
        }
        return true
    }

    private func startClient(_ fd: Int32) throws {
        client.withLock { $0 = (fd, $0.generation &+ 1) }
        do {
            try input.start(fd: fd)
        } catch {
            client.withLock { $0.fd = -1 }
            throw ChardevError("\(label): cannot watch the socket: \(error)")
        }
    }

    /// Drops the current client (on the loop's thread). `generation` names the client a writer
    /// saw fail, so that a newer client is never dropped by mistake.
    private func dropClient(generation: UInt64? = nil) {
        let fd: Int32 = client.withLock { c in
            if let g = generation, g != c.generation { return -1 }
            let f = c.fd
            c.fd = -1
            return f
        }
        guard fd >= 0 else { return }
        input.stop()
        Glibc.close(fd)
        if isServer && !closed { try? watchListener() }
    }

    private func handle(_ action: MuxEscape.Action, onQuit: () -> Void) {
        func text(_ s: String) { var s = s; s.withUTF8 { write(UnsafeRawBufferPointer($0)) } }
        switch action {
        case .help: text(MuxEscape.helpText)
        case .monitor: if !mux.toggle() { text(MuxEscape.noMonitorText) }
        case .quit:
            text(MuxEscape.terminatedText)
            onQuit()
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var failedGeneration: UInt64?
        client.withLock { c in
            guard c.fd >= 0 else { return }
            var offset = 0
            while offset < bytes.count {
                let n = send(c.fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
                if n > 0 { offset += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return } // peer stalled: drop
                failedGeneration = c.generation
                return
            }
        }
        if let g = failedGeneration {
            loop.post { [weak self] in self?.dropClient(generation: g) }
        }
    }

    public func frontendCanReceive() {
        guard !closed else { return }
        input.resume()
    }

    private func closeListener() {
        unwatchListener()
        if listenFD >= 0 {
            Glibc.close(listenFD)
            listenFD = -1
            unlink(path)
        }
    }

    public func close() {
        guard !closed else { return }
        closed = true
        input.stop()
        let fd: Int32 = client.withLock { c in let f = c.fd; c.fd = -1; return f }
        if fd >= 0 { Glibc.close(fd) }
        closeListener()
    }
}
