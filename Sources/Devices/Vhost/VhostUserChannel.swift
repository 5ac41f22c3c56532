import CKeel
import Glibc

/// One end of a vhost-user connection: a connected unix stream socket carrying messages, with
/// file descriptors as SCM_RIGHTS ancillary data. Reads wait with a deadline, so a peer that
/// stops mid-message ends the connection instead of stalling the loop that reads it.
public final class VhostUserChannel {
    public private(set) var fd: Int32
    /// How long the rest of a message (or an awaited reply) may take to arrive.
    public var timeoutMilliseconds: Int32 = 5000
    static let maxFDs = 8

    /// Takes ownership of a connected socket. It is made non-blocking: every wait has a deadline,
    /// so a peer that stops reading cannot stall the loop that writes to it either.
    public init(fd: Int32) {
        self.fd = fd
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }
    deinit { close() }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    public var isOpen: Bool { fd >= 0 }

    /// Connects to a listening back-end at `path`.
    public static func connect(path: String) throws(VhostUserError) -> VhostUserChannel {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw VhostUserError("socket: \(errnoText())") }
        var addr = try unixAddress(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let why = errnoText()
            Glibc.close(s)
            throw VhostUserError("cannot connect to \(path): \(why)")
        }
        return VhostUserChannel(fd: s)
    }

    /// A listening socket at `path` (a stale socket file there is replaced, nothing else is).
    public static func listen(path: String) throws(VhostUserError) -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw VhostUserError("\(path) exists and is not a socket") }
            unlink(path)
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw VhostUserError("socket: \(errnoText())") }
        var addr = try unixAddress(path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0, Glibc.listen(s, 4) == 0 else {
            let why = errnoText()
            Glibc.close(s)
            throw VhostUserError("cannot listen at \(path): \(why)")
        }
        return s
    }

    static func unixAddress(_ path: String) throws(VhostUserError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw VhostUserError("socket path '\(path)' is empty or longer than 107 bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in for (i, b) in bytes.enumerated() { dst[i] = b } }
        return addr
    }

    // MARK: sending

    /// Sends header, payload and `fds` in one sendmsg (the fds ride on the first byte).
    public func send(_ m: VhostUserMessage, fds: [Int32] = []) throws(VhostUserError) {
        guard fd >= 0 else { throw VhostUserError("connection is closed") }
        guard fds.count <= Self.maxFDs, m.payload.count <= VhostUser.maxPayload else {
            throw VhostUserError("message too large to send")
        }
        var bytes = [UInt8](); bytes.reserveCapacity(12 + m.payload.count)
        bytes.putLE32(m.request); bytes.putLE32(m.flags); bytes.putLE32(UInt32(m.payload.count))
        bytes += m.payload
        var control = [UInt8](repeating: 0, count: fds.isEmpty ? 0 : Self.controlSpace(fds.count))
        if !fds.isEmpty {
            // struct cmsghdr on LP64: size_t cmsg_len, int level, int type, then the data.
            control.withUnsafeMutableBytes { c in
                c.storeBytes(of: 16 + 4 * fds.count, as: Int.self)
                c.storeBytes(of: SOL_SOCKET, toByteOffset: 8, as: Int32.self)
                c.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
                for (i, f) in fds.enumerated() { c.storeBytes(of: f, toByteOffset: 16 + 4 * i, as: Int32.self) }
            }
        }
        var sent = 0
        while sent < bytes.count {
            let n: Int = bytes.withUnsafeMutableBytes { b in
                control.withUnsafeMutableBytes { c in
                    var iov = iovec(iov_base: b.baseAddress! + sent, iov_len: b.count - sent)
                    return withUnsafeMutablePointer(to: &iov) { iovp in
                        var h = msghdr()
                        h.msg_iov = iovp
                        h.msg_iovlen = 1
                        if sent == 0 && c.count > 0 { h.msg_control = c.baseAddress; h.msg_controllen = c.count }
                        return sendmsg(fd, &h, Int32(MSG_NOSIGNAL))
                    }
                }
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { guard waitFor(Int16(POLLOUT)) else { throw VhostUserError("send timed out") }; continue }
                throw VhostUserError("send: \(errnoText())")
            }
            sent += n
        }
    }

    static func controlSpace(_ n: Int) -> Int { 16 + ((4 * n + 7) & ~7) }

    // MARK: receiving

    /// Whether a byte (or a hang-up) can be read now without waiting.
    public func hasInput() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0
    }

    /// Reads one whole message, waiting at most the timeout for any part of it. Checks what
    /// every message must satisfy (version 1, payload size); the request's own rules are the caller's.
    public func receive() throws(VhostUserError) -> VhostUserMessage {
        var fds: [ReceivedFD] = []
        let header = try readExactly(VhostUser.headerSize, fds: &fds)
        let request = header.le32(0), flags = header.le32(4), size = header.le32(8)
        guard flags & VhostUser.flagVersionMask == VhostUser.version else {
            throw VhostUserError("message \(request) has protocol version \(flags & VhostUser.flagVersionMask), expected 1")
        }
        guard size <= UInt32(VhostUser.maxPayload) else { throw VhostUserError("message \(request) claims a \(size)-byte payload") }
        var m = VhostUserMessage(request: request, flags: flags)
        m.payload = size == 0 ? [] : try readExactly(Int(size), fds: &fds)
        m.fds = fds
        return m
    }

    private func readExactly(_ count: Int, fds: inout [ReceivedFD]) throws(VhostUserError) -> [UInt8] {
        guard fd >= 0 else { throw VhostUserError("connection is closed") }
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        var control = [UInt8](repeating: 0, count: Self.controlSpace(Self.maxFDs))
        while got < count {
            var truncated = false
            let n: Int = out.withUnsafeMutableBytes { b in
                control.withUnsafeMutableBytes { c in
                    var iov = iovec(iov_base: b.baseAddress! + got, iov_len: count - got)
                    return withUnsafeMutablePointer(to: &iov) { iovp in
                        var h = msghdr()
                        h.msg_iov = iovp
                        h.msg_iovlen = 1
                        h.msg_control = c.baseAddress
                        h.msg_controllen = c.count
                        let r = recvmsg(fd, &h, Int32(MSG_CMSG_CLOEXEC) | Int32(MSG_DONTWAIT))
                        if r >= 0 {
                            truncated = h.msg_flags & Int32(MSG_CTRUNC) != 0
                            Self.collectFDs(c, length: h.msg_controllen, into: &fds)
                        }
                        return r
                    }
                }
            }
            if truncated { throw VhostUserError("more than \(Self.maxFDs) fds with one message") }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    guard waitFor(Int16(POLLIN)) else { throw VhostUserError("peer stopped mid-message (timed out)") }
                    continue
                }
                throw VhostUserError("receive: \(errnoText())")
            }
            if n == 0 { throw VhostUserError(got == 0 && count == VhostUser.headerSize ? "peer closed the connection" : "peer closed the connection mid-message") }
            got += n
        }
        return out
    }

    private static func collectFDs(_ c: UnsafeMutableRawBufferPointer, length: Int, into fds: inout [ReceivedFD]) {
        var at = 0
        while at + 16 <= length, at + 16 <= c.count {
            let len = c.load(fromByteOffset: at, as: Int.self)
            let level = c.load(fromByteOffset: at + 8, as: Int32.self), type = c.load(fromByteOffset: at + 12, as: Int32.self)
            guard len >= 16, len <= length - at else { return }
            if level == SOL_SOCKET && type == Int32(SCM_RIGHTS) {
                for i in 0..<(len - 16) / 4 { fds.append(ReceivedFD(c.load(fromByteOffset: at + 16 + 4 * i, as: Int32.self))) }
            }
            at += (len + 7) & ~7
        }
    }

    private func waitFor(_ events: Int16) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let r = poll(&p, 1, timeoutMilliseconds)
            if r < 0 && errno == EINTR { continue }
            return r > 0
        }
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
