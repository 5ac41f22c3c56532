import CKeel
import Glibc
import Loop

/// `-netdev dgram` / `-netdev socket,udp=`: one Ethernet frame per datagram between `local` and
/// `remote` (UDP or unix datagram sockets). There is no connection, so the link is always up.
public final class DatagramBackend: NetBackend {
    public let vnetHeaderLength = 0
    public let supportedOffloads: NetOffloads = []
    public let configuration: DatagramNetworkConfiguration
    public private(set) var lastError: String?
    public var errorLog: (String) -> Void = logNetError
    /// Datagrams larger than QEMU's frame limit, dropped on arrival.
    public private(set) var droppedDatagrams = 0

    private let fd: Int32
    private let remote: ResolvedSocketAddress
    private var buffer: [UInt8]
    /// Length of a received frame the NIC refused; it is offered again first.
    private var held: Int?
    private var receiveEnabled = true
    private var owesWritable = false
    private var loop: EventLoop?
    private weak var receiver: NetReceiver?
    private var mask: UInt32?
    private var boundUnixPath: String?

    public init(_ configuration: DatagramNetworkConfiguration) throws {
        self.configuration = configuration
        let type = Int32(SOCK_DGRAM.rawValue)
        remote = try ResolvedSocketAddress(configuration.remote, socketType: type, passive: false)
        let local = try configuration.local.map { try ResolvedSocketAddress($0, socketType: type, passive: true) }
        if let local, local.family != remote.family {
            throw NetBackendError("-netdev dgram: local \(configuration.local.map { "\($0)" } ?? "") and remote \(configuration.remote) are of different address families")
        }
        fd = try makeSocket(family: remote.family, type: type, "-netdev dgram")
        buffer = [UInt8](repeating: 0, count: StreamFraming.maximumFrameLength + 1)
        if let local {
            if case .unix(let path)? = configuration.local { unlinkStaleUnixSocket(path); boundUnixPath = path }
            guard local.withSockaddr({ bind(fd, $0, $1) }) == 0 else {
                let e = errnoText()
                close(fd)
                throw NetBackendError("-netdev dgram: bind \(configuration.local.map { "\($0)" } ?? ""): \(e)")
            }
        }
    }

    deinit {
        detach()
        close(fd)
        if let boundUnixPath { unlink(boundUnixPath) }
    }

    public var isLinkUp: Bool { true }

    /// The bound local port (after binding port 0), for tests and messages.
    public var localPort: UInt16? { boundPort(of: fd) }

    public func setOffloads(_ offloads: NetOffloads) throws {
        guard offloads.isEmpty else { throw NetBackendError("-netdev dgram takes no offloads") }
    }

    public func attach(to loop: EventLoop, receiver: NetReceiver) throws {
        detach()
        self.loop = loop
        self.receiver = receiver
        updateRegistration()
    }

    public func detach() {
        guard let loop else { return }
        if mask != nil { loop.remove(fd: fd); mask = nil }
        self.loop = nil
        receiver = nil
    }

    public func setReceiveEnabled(_ enabled: Bool) {
        receiveEnabled = enabled
        if enabled, let n = held, let receiver {
            if buffer.withUnsafeBytes({ receiver.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                held = nil
            } else {
                receiveEnabled = false
            }
        }
        updateRegistration()
    }

    public func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult {
        var total = 0
        for s in segments {
            let (t, o) = total.addingReportingOverflow(s.count)
            guard !o, s.count >= 0 else { return .sent }
            total = t
        }
        guard total > 0, total <= StreamFraming.maximumFrameLength else { return .sent }
        let n = sendGathered(fd: fd, prefix: UnsafeRawBufferPointer(start: nil, count: 0), segments: segments,
                             total: total, destination: remote)
        if n < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS {
            owesWritable = true
            updateRegistration()
            return .wouldBlock
        }
        // Other errors (no peer bound yet on a unix path, ICMP unreachable) lose the frame, as a wire would.
        if n < 0, errno != ECONNREFUSED, errno != ENOENT, lastError == nil {
            lastError = "-netdev dgram: send to \(configuration.remote): \(errnoText())"
            if let e = lastError { errorLog(e) }
        }
        return .sent
    }

    private func event(_ events: UInt32) {
        if events & UInt32(EPOLLOUT.rawValue) != 0, owesWritable {
            owesWritable = false
            updateRegistration()
            receiver?.backendWritable()
        }
        guard events & UInt32(EPOLLIN.rawValue | EPOLLERR.rawValue) != 0 else { return }
        for _ in 0..<16 {
            guard receiveEnabled, held == nil, let receiver else { return }
            let n = buffer.withUnsafeMutableBytes { b in
                recv(fd, b.baseAddress, b.count, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
            }
            if n < 0 {
                // Queued ICMP errors surface here on UDP; they carry no frame.
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                continue
            }
            guard n > 0, n <= StreamFraming.maximumFrameLength else { droppedDatagrams += 1; continue }
            if !buffer.withUnsafeBytes({ receiver.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                held = n
                receiveEnabled = false
                updateRegistration()
            }
        }
    }

    private func updateRegistration() {
        guard let loop else { return }
        var m: UInt32 = 0
        if receiveEnabled && held == nil { m |= UInt32(EPOLLIN.rawValue) }
        if owesWritable { m |= UInt32(EPOLLOUT.rawValue) }
        guard m != (mask ?? 0) else { return }
        if m == 0 {
            loop.remove(fd: fd)
            mask = nil
        } else if (try? loop.add(fd: fd, events: m) { [unowned self] e in self.event(e) }) != nil {
            mask = m
        }
    }
}
