import CKeel
import Glibc
import Loop

/// One monitor client on a connected, non-blocking socket, served on the main loop. Output is
/// queued and written as the socket accepts it; a client that stops reading is dropped once
/// `maxPendingOutput` bytes wait for it, so it cannot make Keel's memory grow.
final class SocketConnection: MonitorTransport {
    static let maxPendingOutput = 8 << 20
    static let readSize = 65536

    let fd: Int32
    private let loop: EventLoop
    private unowned let monitor: Monitor
    private(set) var session: MonitorSession?
    private var pending: [UInt8] = []
    private var pendingStart = 0
    private var watchingOutput = false
    private(set) var closed = false

    init(fd: Int32, loop: EventLoop, monitor: Monitor) {
        self.fd = fd
        self.loop = loop
        self.monitor = monitor
    }

    func open(_ session: MonitorSession) throws {
        self.session = session
        try watch(output: false)
        session.start()
    }

    private func watch(output: Bool) throws {
        var events = UInt32(EPOLLIN.rawValue) | UInt32(EPOLLRDHUP.rawValue)
        if output { events |= UInt32(EPOLLOUT.rawValue) }
        try loop.add(fd: fd, events: events) { [weak self] ev in self?.ready(ev) }
        watchingOutput = output
    }

    private func ready(_ events: UInt32) {
        if events & UInt32(EPOLLOUT.rawValue) != 0 { flush() }
        guard !closed, events & ~UInt32(EPOLLOUT.rawValue) != 0 else { return }
        var buffer = [UInt8](repeating: 0, count: Self.readSize)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
        guard n > 0 else {
            // End of input (perhaps mid-message): whatever was buffered is simply dropped.
            disconnect()
            return
        }
        buffer.withUnsafeBytes { session?.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    func send(_ text: String) {
        guard !closed else { return }
        pending.append(contentsOf: text.utf8)
        if pending.count - pendingStart > Self.maxPendingOutput {
            disconnect()
            return
        }
        flush()
    }

    /// Writes what the socket takes now; watches for writability if some is left.
    private func flush() {
        while pendingStart < pending.count && !closed {
            let n = pending.withUnsafeBytes { p in
                Glibc.send(fd, p.baseAddress! + pendingStart, p.count - pendingStart, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n > 0 { pendingStart += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                if !watchingOutput { try? watch(output: true) }
                return
            }
            disconnect()
            return
        }
        pending.removeAll(keepingCapacity: pending.count < 65536)
        pendingStart = 0
        if watchingOutput && !closed { try? watch(output: false) }
    }

    /// At exit: waits up to `milliseconds` for queued output (a quit's reply, SHUTDOWN) to leave.
    func drain(milliseconds: Int32) {
        var left = milliseconds
        while !closed && pendingStart < pending.count && left > 0 {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, min(left, 50))
            left -= 50
            flush()
        }
    }

    func disconnect() {
        guard !closed else { return }
        closed = true
        loop.remove(fd: fd)
        Glibc.close(fd)
        pending = []
        monitor.connectionClosed(self)
    }
}
