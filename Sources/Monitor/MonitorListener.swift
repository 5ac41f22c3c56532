import CKeel
import Glibc
import Loop
import Machine

/// A listening unix or TCP socket for one `-qmp` / `-monitor` / `-mon`: every client that
/// connects gets its own session (several at once).
final class MonitorListener {
    let spec: MonitorSpec
    private let fd: Int32
    private let loop: EventLoop
    private let onClient: (Int32) -> Void
    private var watching = false

    /// Binds and listens; errors name the option's value.
    init(spec: MonitorSpec, option: String, loop: EventLoop, onClient: @escaping (Int32) -> Void) throws {
        self.spec = spec
        self.loop = loop
        self.onClient = onClient
        let label = "\(option) \(spec.backend)"
        func fail(_ what: String, _ fd: Int32 = -1) -> MonitorError {
            let why = String(cString: strerror(errno))
            if fd >= 0 { Glibc.close(fd) }
            return MonitorError("\(label): \(what): \(why)")
        }
        let s: Int32
        switch spec.backend {
        case .stdio:
            throw MonitorError("\(label): stdio is not a socket")
        case .unixSocket(let path):
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
                throw MonitorError("\(label): socket path is empty or longer than 107 bytes")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { dst in for (i, b) in bytes.enumerated() { dst[i] = b } }
            s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw fail("cannot create socket") }
            var st = stat()
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard r == 0 else { throw fail("cannot bind", s) }
        case .tcpSocket(let host, let port):
            var hints = addrinfo()
            hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
            hints.ai_family = AF_UNSPEC
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>?
            let h = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            let gai = getaddrinfo(h.isEmpty ? nil : h, String(port), &hints, &result)
            guard gai == 0, let ai = result else {
                throw MonitorError("\(label): cannot resolve '\(host)': \(String(cString: gai_strerror(gai)))")
            }
            defer { freeaddrinfo(result) }
            s = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw fail("cannot create socket") }
            var one: Int32 = 1
            _ = setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard bind(s, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else { throw fail("cannot bind", s) }
        }
        guard listen(s, 16) == 0 else { throw fail("cannot listen", s) }
        _ = ckeel_fcntl_int(s, F_SETFL, ckeel_fcntl_int(s, F_GETFL, 0) | O_NONBLOCK)
        fd = s
    }

    func start() throws {
        try loop.addReadable(fd: fd) { [weak self] _ in _ = self?.accept() }
        watching = true
    }

    /// QEMU's wait=on: blocks until the first client connects.
    func waitForClient(note: String) {
        var n = note + "\n"
        n.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, -1)
            if r < 0 && errno != EINTR { return }
            if r > 0 && accept() { return }
        }
    }

    /// Accepts one pending client; false if none was waiting.
    private func accept() -> Bool {
        let c = Glibc.accept(fd, nil, nil)
        guard c >= 0 else { return false }
        _ = ckeel_fcntl_int(c, F_SETFD, FD_CLOEXEC)
        _ = ckeel_fcntl_int(c, F_SETFL, ckeel_fcntl_int(c, F_GETFL, 0) | O_NONBLOCK)
        onClient(c)
        return true
    }

    func close() {
        if watching { loop.remove(fd: fd) }
        watching = false
        Glibc.close(fd)
        if case .unixSocket(let path) = spec.backend { unlink(path) }
    }
}

/// A monitor could not be set up; the message names the option and value.
public struct MonitorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
