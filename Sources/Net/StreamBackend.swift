import CKeel
import Glibc
import Loop

/// `-netdev stream` / `-netdev socket,listen=|connect=`: a VM-to-VM link over one stream socket.
/// The link is up while a peer is connected; frames sent while it is down are dropped, as on an
/// unplugged wire. A server accepts one peer at a time and listens again when it leaves.
public final class StreamBackend: NetBackend {
    public let vnetHeaderLength = 0
    public let supportedOffloads: NetOffloads = []
    public let configuration: StreamNetworkConfiguration
    /// The last connection error (bad length prefix, reset, refused); also written to `errorLog`.
    public private(set) var lastError: String?
    public var errorLog: (String) -> Void = logNetError

    private let resolved: ResolvedSocketAddress
    private var listenFD: Int32 = -1
    private var peerFD: Int32 = -1
    private var connecting = false
    private var reader = FrameReader()
    /// The unsent tail of a frame the kernel took only part of.
    private var out: [UInt8] = []
    private var outStart = 0
    /// A send returned .wouldBlock: the NIC waits for backendWritable().
    private var owesWritable = false
    private var receiveEnabled = true
    private var loop: EventLoop?
    private weak var receiver: NetReceiver?
    private var listenRegistered = false
    private var peerMask: UInt32?
    private var reconnectTimer: Loop.Timer?
    private var ownsUnixPath = false

    public init(_ configuration: StreamNetworkConfiguration) throws {
        self.configuration = configuration
        resolved = try ResolvedSocketAddress(configuration.address, socketType: Int32(SOCK_STREAM.rawValue), passive: configuration.server)
        if configuration.server {
            try startListening()
        } else if let failure = startConnecting(), configuration.reconnectSeconds == 0 {
            throw NetBackendError(failure)
        }
    }

    deinit {
        detach()
        if peerFD >= 0 { close(peerFD) }
        if listenFD >= 0 { close(listenFD) }
        if ownsUnixPath, case .unix(let path) = configuration.address { unlink(path) }
    }

    public var isLinkUp: Bool { peerFD >= 0 && !connecting }

    /// The port a server listens on (after `port=0`), for tests and messages.
    public var listeningPort: UInt16? { boundPort(of: listenFD) }

    public func setOffloads(_ offloads: NetOffloads) throws {
        guard offloads.isEmpty else { throw NetBackendError("-netdev stream takes no offloads") }
    }

    public func attach(to loop: EventLoop, receiver: NetReceiver) throws {
        detach()
        self.loop = loop
        self.receiver = receiver
        reconnectTimer = try loop.makeTimer { [unowned self] in self.reconnect() }
        if !configuration.server, peerFD < 0, configuration.reconnectSeconds > 0 { armReconnect() }
        updateRegistrations()
    }

    public func detach() {
        guard let loop else { return }
        if listenRegistered { loop.remove(fd: listenFD); listenRegistered = false }
        if peerMask != nil { loop.remove(fd: peerFD); peerMask = nil }
        if let t = reconnectTimer { loop.remove(fd: t.fd) }
        reconnectTimer = nil
        self.loop = nil
        receiver = nil
    }

    public func setReceiveEnabled(_ enabled: Bool) {
        receiveEnabled = enabled
        if enabled { deliverFrames() }
        updateRegistrations()
    }

    // MARK: - Transmit

    public func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult {
        guard peerFD >= 0, !connecting else { return .sent }
        if outStart < out.count { owesWritable = true; return .wouldBlock }
        var total = 0
        for s in segments {
            let (t, o) = total.addingReportingOverflow(s.count)
            guard !o, s.count >= 0 else { return .sent }
            total = t
        }
        // The peer would drop the connection over a frame above QEMU's limit: drop the frame instead.
        guard total > 0, total <= StreamFraming.maximumFrameLength else { return .sent }
        var prefix = UInt32(total).bigEndian
        let wire = total + StreamFraming.prefixLength
        let n: Int = withUnsafeBytes(of: &prefix) { p in
            sendGathered(fd: peerFD, prefix: p, segments: segments, total: wire, destination: nil)
        }
        if n == wire { return .sent }
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                owesWritable = true
                out.removeAll(keepingCapacity: true); outStart = 0
                updateRegistrations()
                return .wouldBlock
            }
            closePeer(error: "\(configuration.address): send: \(errnoText())")
            return .sent
        }
        // Partial: keep the rest of this frame; the next one waits until it is out.
        out.removeAll(keepingCapacity: true)
        outStart = 0
        var skip = n
        withUnsafeBytes(of: &prefix) { p in
            for piece in [UnsafeRawBufferPointer(p)] + segments.map({ UnsafeRawBufferPointer(start: $0.base, count: $0.count) }) {
                if skip >= piece.count { skip -= piece.count; continue }
                out.append(contentsOf: piece[skip...])
                skip = 0
            }
        }
        updateRegistrations()
        return .sent
    }

    private func flushOut() {
        while outStart < out.count {
            let n = out.withUnsafeBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return Glibc.send(peerFD, base + outStart, out.count - outStart, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
                closePeer(error: "\(configuration.address): send: \(errnoText())")
                return
            }
            outStart += n
        }
        out.removeAll(keepingCapacity: true)
        outStart = 0
        signalWritable()
    }

    private func signalWritable() {
        guard owesWritable else { return }
        owesWritable = false
        updateRegistrations()
        receiver?.backendWritable()
    }

    // MARK: - Receive

    private func readPeer() {
        // A few reads per wake-up; level-triggered epoll brings the rest.
        for _ in 0..<4 {
            guard peerFD >= 0, receiveEnabled else { return }
            let n = reader.read(from: peerFD) { fd, p, count in Glibc.recv(fd, p, count, Int32(MSG_DONTWAIT)) }
            if n == 0 { closePeer(error: nil); return }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
                closePeer(error: "\(configuration.address): recv: \(errnoText())")
                return
            }
            deliverFrames()
        }
    }

    private func deliverFrames() {
        while receiveEnabled, peerFD >= 0, let receiver {
            switch reader.next() {
            case .needMore:
                return
            case .oversized(let length):
                closePeer(error: "\(configuration.address): the peer announced a \(length)-byte frame (more than \(StreamFraming.maximumFrameLength)); dropping the connection")
                return
            case .frame(let range):
                if reader.withFrame(range, { receiver.receive($0) }) {
                    reader.consume(through: range)
                } else {
                    receiveEnabled = false
                    updateRegistrations()
                }
            }
        }
    }

    // MARK: - Connection state

    private func startListening() throws {
        let what = "-netdev stream: listen on \(configuration.address)"
        let fd = try makeSocket(family: resolved.family, type: Int32(SOCK_STREAM.rawValue), what)
        var one: Int32 = 1
        if resolved.family != AF_UNIX {
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        } else if case .unix(let path) = configuration.address {
            unlinkStaleUnixSocket(path)
        }
        let rc = resolved.withSockaddr { bind(fd, $0, $1) }
        guard rc == 0, listen(fd, 1) == 0 else {
            let e = errnoText()
            close(fd)
            throw NetBackendError("\(what): \(e)")
        }
        listenFD = fd
        ownsUnixPath = resolved.family == AF_UNIX
    }

    /// Starts a non-blocking connect; returns a message if it failed at once.
    private func startConnecting() -> String? {
        let what = "-netdev stream: connect to \(configuration.address)"
        let fd: Int32
        do { fd = try makeSocket(family: resolved.family, type: Int32(SOCK_STREAM.rawValue), what) } catch { return "\(error)" }
        let rc = resolved.withSockaddr { connect(fd, $0, $1) }
        if rc != 0 && errno != EINPROGRESS {
            let e = errnoText()
            close(fd)
            return "\(what): \(e)"
        }
        // At startup (QEMU's socket,connect= fails then too), give a local peer a moment to
        // answer so a refused connection is reported rather than a link that never comes up.
        if rc != 0, loop == nil, configuration.reconnectSeconds == 0 {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&p, 1, 3000) == 1 {
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { close(fd); return "\(what): \(errnoText(err))" }
                peerFD = fd
                connected()
                return nil
            }
        }
        peerFD = fd
        connecting = rc != 0
        if !connecting { connected() }
        return nil
    }

    private func connected() {
        if resolved.family != AF_UNIX {
            var one: Int32 = 1
            _ = setsockopt(peerFD, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        receiveEnabled = true
        updateRegistrations()
        receiver?.linkChanged(up: true)
    }

    private func acceptPeer() {
        guard peerFD < 0 else { return }
        let fd = accept(listenFD, nil, nil)
        guard fd >= 0 else { return }
        _ = ckeel_fcntl_int(fd, F_SETFD, FD_CLOEXEC)
        _ = ckeel_fcntl_int(fd, F_SETFL, ckeel_fcntl_int(fd, F_GETFL, 0) | O_NONBLOCK)
        peerFD = fd
        connecting = false
        connected()
    }

    private func closePeer(error: String?) {
        guard peerFD >= 0 else { return }
        let wasUp = !connecting
        if peerMask != nil { loop?.remove(fd: peerFD); peerMask = nil }
        close(peerFD)
        peerFD = -1
        connecting = false
        reader.reset()
        out.removeAll(); outStart = 0
        if let error { lastError = error; errorLog(error) }
        updateRegistrations()
        if wasUp { receiver?.linkChanged(up: false) }
        // The NIC's waiting frames now go to a link that is down (and are dropped).
        signalWritable()
        if !configuration.server, configuration.reconnectSeconds > 0 { armReconnect() }
    }

    private func armReconnect() {
        reconnectTimer?.arm(afterNanoseconds: UInt64(configuration.reconnectSeconds) * 1_000_000_000)
    }

    private func reconnect() {
        guard peerFD < 0, loop != nil else { return }
        if let failure = startConnecting() {
            if failure != lastError { lastError = failure; errorLog(failure) }
            armReconnect()
        }
        updateRegistrations()
    }

    private func peerEvent(_ events: UInt32) {
        if connecting {
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(peerFD, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 {
                closePeer(error: "-netdev stream: connect to \(configuration.address): \(errnoText(err))")
                return
            }
            guard events & UInt32(EPOLLOUT.rawValue) != 0 else { return }
            connecting = false
            connected()
            return
        }
        if events & UInt32(EPOLLOUT.rawValue) != 0 {
            if outStart < out.count { flushOut() } else { signalWritable() }
        }
        if events & UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            if receiveEnabled {
                readPeer()
            } else if events & UInt32(EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
                closePeer(error: nil)
            }
        }
    }

    /// Watches the listener while no peer is connected and the peer for what is awaited:
    /// input while the NIC can take frames, output while a frame's tail or a blocked send waits.
    private func updateRegistrations() {
        guard let loop else { return }
        let wantListen = listenFD >= 0 && peerFD < 0
        if wantListen != listenRegistered {
            if wantListen {
                listenRegistered = (try? loop.addReadable(fd: listenFD) { [unowned self] _ in self.acceptPeer() }) != nil
            } else {
                loop.remove(fd: listenFD)
                listenRegistered = false
            }
        }
        guard peerFD >= 0 else { return }
        var mask: UInt32 = 0
        if connecting {
            mask = UInt32(EPOLLOUT.rawValue)
        } else {
            if receiveEnabled { mask |= UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue) }
            if outStart < out.count || owesWritable { mask |= UInt32(EPOLLOUT.rawValue) }
        }
        guard mask != (peerMask ?? 0) else { return }
        if mask == 0 {
            loop.remove(fd: peerFD)
            peerMask = nil
        } else if (try? loop.add(fd: peerFD, events: mask) { [unowned self] e in self.peerEvent(e) }) != nil {
            peerMask = mask
        }
    }
}

/// sendmsg of a prefix and the frame's segments (linearized if there are more than IOV_MAX
/// allows), without SIGPIPE. Returns sendmsg's result.
func sendGathered(fd: Int32, prefix: UnsafeRawBufferPointer, segments: UnsafeBufferPointer<NetSegment>, total: Int,
                  destination: ResolvedSocketAddress?) -> Int {
    var iov: [iovec] = []
    var linear: [UInt8] = []
    let useLinear = segments.count >= 512
    if !useLinear {
        iov.reserveCapacity(segments.count + 1)
        if prefix.count > 0 { iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: prefix.baseAddress), iov_len: prefix.count)) }
        for s in segments where s.count > 0 {
            iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: s.base), iov_len: s.count))
        }
    } else {
        linear.reserveCapacity(total)
        linear.append(contentsOf: prefix)
        for s in segments { linear.append(contentsOf: UnsafeRawBufferPointer(start: s.base, count: s.count)) }
    }
    let flags = Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)
    return linear.withUnsafeMutableBytes { l -> Int in
        if useLinear { iov = [iovec(iov_base: l.baseAddress, iov_len: l.count)] }
        return iov.withUnsafeMutableBufferPointer { v -> Int in
            var msg = msghdr()
            msg.msg_iov = v.baseAddress
            msg.msg_iovlen = v.count
            guard let destination else { return sendmsg(fd, &msg, flags) }
            var storage = destination.storage
            return withUnsafeMutableBytes(of: &storage) { name -> Int in
                msg.msg_name = name.baseAddress
                msg.msg_namelen = destination.length
                return sendmsg(fd, &msg, flags)
            }
        }
    }
}
