import Glibc

/// An IPv4 address in host byte order (10.0.2.15 is 0x0A00_020F).
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible {
    public var value: UInt32
    public init(_ value: UInt32) { self.value = value }

    /// Dotted-quad only (no host names: -netdev user addresses are literal in QEMU too).
    public init?(_ text: String) {
        var a = in_addr()
        guard !text.isEmpty, inet_pton(AF_INET, text, &a) == 1 else { return nil }
        value = UInt32(bigEndian: a.s_addr)
    }

    public var inAddr: in_addr { in_addr(s_addr: value.bigEndian) }

    public var description: String {
        "\(value >> 24).\((value >> 16) & 0xff).\((value >> 8) & 0xff).\(value & 0xff)"
    }
}

/// Where a socket backend listens, connects or sends: QEMU's SocketAddress (`inet`, `unix`).
public enum NetSocketEndpoint: Equatable, Sendable, CustomStringConvertible {
    /// `host` may be empty (any address when listening), a literal or a name.
    case inet(host: String, port: UInt16)
    case unix(path: String)

    /// QEMU's `host:port` form (`:port`, `[v6addr]:port`), as `listen=`/`connect=`/`udp=` take it.
    public init(hostPort text: String) throws {
        guard let colon = text.lastIndex(of: ":") else {
            throw NetBackendError("'\(text)': expected host:port")
        }
        var host = String(text[..<colon])
        let portText = String(text[text.index(after: colon)...])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let port = UInt16(portText) else { throw NetBackendError("'\(text)': port '\(portText)' is not a number from 0 to 65535") }
        self = .inet(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .inet(let h, let p): return h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        case .unix(let path): return path
        }
    }
}

/// A resolved socket address, ready for bind/connect/sendto.
struct ResolvedSocketAddress {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 { Int32(storage.ss_family) }

    /// Resolves `address` (one getaddrinfo call for inet: the host configuration may name a host).
    /// `passive`: an empty inet host means every local address rather than loopback.
    init(_ address: NetSocketEndpoint, socketType: Int32, passive: Bool) throws {
        switch address {
        case .unix(let path):
            var sun = sockaddr_un()
            sun.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: sun.sun_path)
            guard !bytes.isEmpty, bytes.count < capacity else {
                throw NetBackendError("unix socket path '\(path)' is empty or longer than \(capacity - 1) bytes")
            }
            withUnsafeMutableBytes(of: &sun.sun_path) { dst in
                for (i, b) in bytes.enumerated() { dst[i] = b }
            }
            withUnsafeMutableBytes(of: &storage) { dst in
                withUnsafeBytes(of: &sun) { src in dst.copyMemory(from: src) }
            }
            length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        case .inet(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = socketType
            hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
            // An empty listening host is QEMU's "any": IPv4's 0.0.0.0, as QEMU binds it.
            hints.ai_family = host.isEmpty ? AF_INET : AF_UNSPEC
            var list: UnsafeMutablePointer<addrinfo>?
            let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
            guard rc == 0, let first = list else {
                throw NetBackendError("cannot resolve '\(address)': \(String(cString: gai_strerror(rc)))")
            }
            defer { freeaddrinfo(list) }
            guard let sa = first.pointee.ai_addr, Int(first.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size else {
                throw NetBackendError("cannot resolve '\(address)'")
            }
            length = first.pointee.ai_addrlen
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: sa, count: Int(length)))
            }
        }
    }

    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}

/// A non-blocking, close-on-exec socket of `family`/`type`, or an error naming `what`.
func makeSocket(family: Int32, type: Int32, _ what: String) throws -> Int32 {
    let fd = socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw NetBackendError("\(what): socket: \(String(cString: strerror(errno)))") }
    return fd
}

/// Removes a stale unix socket at `path` before binding (QEMU does the same); never a regular file.
func unlinkStaleUnixSocket(_ path: String) {
    var st = stat()
    if lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
}

/// The local port `fd` is bound to (inet sockets), e.g. after binding port 0.
func boundPort(of fd: Int32) -> UInt16? {
    guard fd >= 0 else { return nil }
    var ss = sockaddr_storage()
    var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutableBytes(of: &ss) { getsockname(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), &len) }
    guard rc == 0, Int32(ss.ss_family) == AF_INET || Int32(ss.ss_family) == AF_INET6 else { return nil }
    // sin_port and sin6_port share the offset right after the family.
    return withUnsafeBytes(of: ss) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
}

func errnoText(_ e: Int32 = errno) -> String { String(cString: strerror(e)) }

/// Writes one line to stderr (Sources do not use Foundation).
func logNetError(_ message: String) {
    fputs("keel: \(message)\n", stderr)
}
