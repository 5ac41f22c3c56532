import Glibc
import Loop

/// The front-end end of one vhost-user connection: connects (or accepts) the socket, negotiates
/// features, and sends requests synchronously on the owning loop (as QEMU does; a back-end that
/// does not answer within the channel's timeout counts as gone). Replies are checked as strictly
/// as requests are on the back-end side: a malformed one ends the connection.
public final class VhostUserFrontend {
    public enum Endpoint: Equatable, Sendable {
        /// Connect to a back-end listening at the path.
        case connect(String)
        /// Listen at the path; the back-end connects (QEMU's server=on).
        case listen(String)
    }

    public let endpoint: Endpoint
    public private(set) var channel: VhostUserChannel?
    /// What the back-end offered, VHOST_USER_F_PROTOCOL_FEATURES included.
    public private(set) var backendFeatures: UInt64 = 0
    /// The protocol features both sides use.
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var backendQueueCount: UInt64 = 1
    var listenFD: Int32 = -1
    /// The protocol features Keel's front-end implements.
    public static let supportedProtocolFeatures = VhostUser.protocolMQ | VhostUser.protocolReplyAck | VhostUser.protocolConfig
        | VhostUser.protocolInflightSHMFD

    public init(endpoint: Endpoint) { self.endpoint = endpoint }
    deinit {
        channel?.close()
        if listenFD >= 0 {
            close(listenFD)
            if case .listen(let p) = endpoint { unlink(p) }
        }
    }

    public var isConnected: Bool { channel != nil }

    /// Opens the connection (blocking until a back-end connects in listen mode) and negotiates:
    /// features, protocol features, queue count, owner.
    /// `waitForPeer` false (a reconnect attempt on the loop): in listen mode, fail at once unless
    /// a back-end is already waiting to be accepted.
    public func connect(waitForPeer: Bool = true) throws(VhostUserError) {
        disconnect()
        let c: VhostUserChannel
        switch endpoint {
        case .connect(let path):
            c = try VhostUserChannel.connect(path: path)
        case .listen(let path):
            if listenFD < 0 { listenFD = try VhostUserChannel.listen(path: path) }
            if !waitForPeer {
                var p = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 0) > 0 else { throw VhostUserError("no back-end has connected to \(path) yet") }
            }
            let fd = accept(listenFD, nil, nil)
            guard fd >= 0 else { throw VhostUserError("accept at \(path): \(errnoText())") }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            c = VhostUserChannel(fd: fd)
        }
        channel = c
        do throws(VhostUserError) {
            backendFeatures = try requestU64(.getFeatures)
            protocolFeatures = 0
            if backendFeatures & VhostUser.featureProtocolFeatures != 0 {
                let offered = try requestU64(.getProtocolFeatures)
                protocolFeatures = offered & Self.supportedProtocolFeatures
                try send(VhostUserMessage(.setProtocolFeatures, payload: .le64Bytes(protocolFeatures)))
                if protocolFeatures & VhostUser.protocolMQ != 0 {
                    backendQueueCount = try requestU64(.getQueueNum)
                }
            }
            try send(VhostUserMessage(.setOwner))
        } catch {
            disconnect()
            throw error
        }
    }

    public func disconnect() {
        channel?.close()
        channel = nil
    }

    /// Sends a request that has no reply of its own; with REPLY_ACK, asks for one and checks it.
    public func send(_ m: VhostUserMessage, fds: [Int32] = []) throws(VhostUserError) {
        guard let c = channel else { throw VhostUserError("not connected") }
        var m = m
        let ack = protocolFeatures & VhostUser.protocolReplyAck != 0
        if ack { m.flags |= VhostUser.flagNeedReply }
        try c.send(m, fds: fds)
        if ack {
            let r = try receiveReply(to: m.request)
            let status = try r.u64()
            guard status == 0 else { throw VhostUserError("back-end refused request \(m.request) (status \(status))") }
        }
    }

    /// Sends a request and returns its reply's payload.
    public func request(_ m: VhostUserMessage, fds: [Int32] = [], replyFDs: Int = 0) throws(VhostUserError) -> VhostUserMessage {
        guard let c = channel else { throw VhostUserError("not connected") }
        try c.send(m, fds: fds)
        return try receiveReply(to: m.request, fds: replyFDs)
    }

    func requestU64(_ r: VhostUser.Request) throws(VhostUserError) -> UInt64 {
        try request(VhostUserMessage(r)).u64()
    }

    private func receiveReply(to request: UInt32, fds: Int = 0) throws(VhostUserError) -> VhostUserMessage {
        guard let c = channel else { throw VhostUserError("not connected") }
        let r = try c.receive()
        guard r.isReply, r.request == request else {
            throw VhostUserError("back-end answered request \(request) with message \(r.request) (flags 0x\(String(r.flags, radix: 16)))")
        }
        guard r.fds.count == fds else { throw VhostUserError("back-end's reply to \(request) came with \(r.fds.count) fds, expected \(fds)") }
        return r
    }

    /// GET_CONFIG for `size` bytes from offset 0.
    public func config(size: Int) throws(VhostUserError) -> [UInt8] {
        guard protocolFeatures & VhostUser.protocolConfig != 0 else { throw VhostUserError("back-end does not offer the CONFIG protocol feature") }
        let q = VhostUserConfig(offset: 0, bytes: [UInt8](repeating: 0, count: size))
        let r = try VhostUserConfig(request(VhostUserMessage(.getConfig, payload: q.payload)).payload)
        guard r.offset == 0, r.bytes.count == size else { throw VhostUserError("GET_CONFIG answer has offset \(r.offset), \(r.bytes.count) bytes; asked 0, \(size)") }
        return r.bytes
    }

}

/// The ring requests of the vhost-user protocol (shared ring handover: `VhostRings`).
extension VhostUserFrontend: VhostRingBackend {
    public func setVringNum(_ index: UInt32, _ num: UInt32) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringNum, payload: .vringState(index, num)))
    }

    public func setVringBase(_ index: UInt32, _ base: UInt32) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringBase, payload: .vringState(index, base)))
    }

    public func setVringAddress(_ a: VhostVringAddress) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringAddr, payload: a.bytes))
    }

    public func setVringCall(_ index: UInt32, fd: Int32) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringCall, payload: .le64Bytes(UInt64(index))), fds: [fd])
    }

    public func setVringKick(_ index: UInt32, fd: Int32) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringKick, payload: .le64Bytes(UInt64(index))), fds: [fd])
    }

    public func setVringError(_ index: UInt32, fd: Int32) throws(VhostUserError) {
        try send(VhostUserMessage(.setVringErr, payload: .le64Bytes(UInt64(index))), fds: [fd])
    }

    /// Rings start disabled only when VHOST_USER_F_PROTOCOL_FEATURES is negotiated.
    public func setVringEnabled(_ index: UInt32, _ enabled: Bool) throws(VhostUserError) {
        guard backendFeatures & VhostUser.featureProtocolFeatures != 0 else { return }
        try send(VhostUserMessage(.setVringEnable, payload: .vringState(index, enabled ? 1 : 0)))
    }

    /// GET_VRING_BASE: stops the ring and returns the back-end's next available index.
    public func vringBase(_ index: UInt32) throws(VhostUserError) -> UInt16 {
        let r = try request(VhostUserMessage(.getVringBase, payload: .vringState(index, 0)))
        let (i, num) = try r.vringState()
        guard i == index, num <= UInt32(UInt16.max) else { throw VhostUserError("GET_VRING_BASE answer (\(i), \(num)) for queue \(index)") }
        return UInt16(num)
    }
}
