import CSlirp
import CKeel
import Glibc
import Loop

/// `-netdev user`: the guest's frames go into libslirp, which terminates TCP/UDP/ICMP on host
/// sockets and answers ARP, DHCP and DNS itself (QEMU's user networking).
///
/// libslirp is driven the way a poll()-based main loop drives it: `slirp_pollfds_fill` names the
/// fds and events it wants and how long it may sleep; after a wake-up `slirp_pollfds_poll` gets
/// each fd's revents. Here every wake-up (one of its fds ready in the loop's epoll, or the fill
/// timeout on a timer) takes a zero-timeout poll() of the fds from the last fill for exact
/// revents, polls slirp, and fills again, re-registering the fds whose events changed.
public final class UserBackend: NetBackend {
    public let vnetHeaderLength = 0
    public let supportedOffloads: NetOffloads = []
    public let configuration: UserNetworkConfiguration
    /// Frames slirp produced that the NIC has not taken yet; beyond these bounds frames are dropped
    /// (slirp's TCP retransmits, as it would after a lossy wire).
    public static let pendingFrameLimit = 512
    public static let pendingByteLimit = 4 << 20
    /// Frames slirp sent that did not fit in the pending queue, and guest errors slirp reported.
    public private(set) var droppedFrames = 0
    public private(set) var guestErrors = 0

    private var slirp: OpaquePointer?
    private var loop: EventLoop?
    private weak var receiver: NetReceiver?
    private var receiveEnabled = true
    private var pending: [[UInt8]] = []
    private var pendingHead = 0
    private var pendingBytes = 0
    private var cyclePosted = false
    /// Inside slirp_input/pollfds_poll/handle_timer: frames slirp sends then are queued, never
    /// delivered into a NIC that may be in the middle of its own transmit path.
    private var slirpDepth = 0
    private var pollfds: [pollfd] = []
    private var watched: [Int32: UInt32] = [:]
    private var timers: [SlirpTimer] = []
    private var wakeTimer: Loop.Timer?
    private var scratch: [UInt8] = []

    /// Creates the slirp stack and binds every hostfwd's host socket (so a busy port fails here,
    /// at startup, naming the rule).
    public init(_ configuration: UserNetworkConfiguration) throws {
        self.configuration = configuration
        let r = try configuration.resolved()
        var cfg = SlirpConfig()
        cfg.version = 4
        cfg.restricted = configuration.restricted ? 1 : 0
        cfg.in_enabled = configuration.ipv4
        cfg.vnetwork = r.network.inAddr
        cfg.vnetmask = r.netmask.inAddr
        cfg.vhost = r.host.inAddr
        cfg.in6_enabled = configuration.ipv6
        cfg.vprefix_addr6 = r.ipv6Prefix
        cfg.vprefix_len = UInt8(configuration.ipv6PrefixLength)
        cfg.vhost6 = r.ipv6Host
        cfg.vdhcp_start = r.dhcpStart.inAddr
        cfg.vnameserver = r.dns.inAddr
        cfg.vnameserver6 = r.ipv6DNS
        if let e = keel_slirp_load() { throw NetBackendError("-netdev user: cannot load libslirp (\(String(cString: e)))") }
        // slirp_new copies the strings it keeps.
        let opaque = Unmanaged.passUnretained(self).toOpaque()
        slirp = withOptionalCString(configuration.hostname) { hostname in
            withOptionalCString(configuration.domainName) { domain in
                cfg.vhostname = hostname
                cfg.vdomainname = domain
                return keel_slirp_new(&cfg, slirpCallbacks, opaque)
            }
        }
        guard let slirp else { throw NetBackendError("-netdev user: libslirp could not start (slirp_new failed)") }
        for f in configuration.hostForwards {
            var guest = (f.guestAddress ?? r.dhcpStart).inAddr
            let rc = slirp_add_hostxfwd_ipv4(slirp, f.udp, f.hostAddress.inAddr, f.hostPort, &guest, f.guestPort)
            if rc < 0 {
                let why = errno != 0 ? ": \(errnoText())" : ""
                throw NetBackendError("-netdev user: hostfwd=\(f): cannot forward host port \(f.hostPort)\(why)")
            }
        }
    }

    deinit {
        detach()
        if let slirp { keel_slirp_cleanup(slirp) }
        for t in timers { Unmanaged.passUnretained(t).release() }
    }

    public func setOffloads(_ offloads: NetOffloads) throws {
        guard offloads.isEmpty else { throw NetBackendError("-netdev user takes no offloads") }
    }

    public var isLinkUp: Bool { true }

    public func attach(to loop: EventLoop, receiver: NetReceiver) throws {
        detach()
        self.loop = loop
        self.receiver = receiver
        wakeTimer = try loop.makeTimer { [unowned self] in self.cycle() }
        for t in timers { try startLoopTimer(t) }
        refill()
    }

    public func detach() {
        guard let loop else { return }
        for fd in watched.keys { loop.remove(fd: fd) }
        watched.removeAll()
        if let w = wakeTimer { loop.remove(fd: w.fd) }
        wakeTimer = nil
        for t in timers {
            if let lt = t.loopTimer { loop.remove(fd: lt.fd) }
            t.loopTimer = nil
        }
        self.loop = nil
        receiver = nil
    }

    public func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult {
        guard let slirp else { return .sent }
        var total = 0
        for s in segments {
            let (t, o) = total.addingReportingOverflow(s.count)
            guard !o, s.count >= 0 else { return .sent }
            total = t
        }
        // Larger than any Ethernet frame with a 64 KiB payload: a wire would drop it.
        guard total > 0, total <= 65_536 + 64 else { return .sent }
        slirpDepth += 1
        if segments.count == 1, let s = segments.first {
            keel_slirp_input(slirp, s.base.assumingMemoryBound(to: UInt8.self), Int32(total))
        } else {
            if scratch.count < total { scratch = [UInt8](repeating: 0, count: total) }
            scratch.withUnsafeMutableBytes { dst in
                var at = 0
                for s in segments {
                    dst.baseAddress.map { ($0 + at).copyMemory(from: s.base, byteCount: s.count) }
                    at += s.count
                }
                keel_slirp_input(slirp, dst.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(total))
            }
        }
        slirpDepth -= 1
        // Replies (ARP, TCP ACKs) reach the NIC after its transmit path has returned, and slirp's
        // output queue (packets that waited for an ARP answer) moves on the next poll.
        if !cyclePosted, let loop {
            cyclePosted = true
            loop.post { [weak self] in
                guard let self else { return }
                self.cyclePosted = false
                self.cycle()
            }
        }
        refill()
        return .sent
    }

    public func setReceiveEnabled(_ enabled: Bool) {
        receiveEnabled = enabled
        if enabled { deliverPending() }
        refill()
    }

    // MARK: - Receive side

    private var pendingCount: Int { pending.count - pendingHead }

    fileprivate func slirpSent(_ frame: UnsafeRawBufferPointer) {
        guard pendingCount < Self.pendingFrameLimit, pendingBytes + frame.count <= Self.pendingByteLimit else {
            droppedFrames += 1
            return
        }
        pending.append(Array(frame))
        pendingBytes += frame.count
        if slirpDepth == 0 { deliverPending() }
    }

    private func deliverPending() {
        while receiveEnabled, pendingHead < pending.count, let receiver {
            let taken = pending[pendingHead].withUnsafeBytes { receiver.receive($0) }
            guard taken else { receiveEnabled = false; break }
            pendingBytes -= pending[pendingHead].count
            pending[pendingHead] = []
            pendingHead += 1
        }
        if pendingHead == pending.count { pending.removeAll(keepingCapacity: true); pendingHead = 0 }
        else if pendingHead > 64 { pending.removeFirst(pendingHead); pendingHead = 0 }
    }

    // MARK: - Driving slirp from the loop

    /// Polling stops while the NIC has no receive buffers: host data waits in the kernel's
    /// socket buffers instead of piling up here.
    private var polling: Bool { loop != nil && receiveEnabled }

    private func cycle() {
        guard let slirp else { return }
        if polling { pollSlirp(slirp) }
        deliverPending()
        refill()
    }

    private func pollSlirp(_ slirp: OpaquePointer) {
        var pollError: Int32 = 0
        if !pollfds.isEmpty {
            for i in pollfds.indices { pollfds[i].revents = 0 }
            if Glibc.poll(&pollfds, nfds_t(pollfds.count), 0) < 0 {
                pollError = 1
                for i in pollfds.indices { pollfds[i].revents = 0 }
            }
        }
        slirpDepth += 1
        keel_slirp_pollfds_poll(slirp, pollError, { idx, opaque in
            guard let opaque else { return 0 }
            return UserBackend.from(opaque).revents(index: idx)
        }, Unmanaged.passUnretained(self).toOpaque())
        slirpDepth -= 1
    }

    private func revents(index: Int32) -> Int32 {
        guard index >= 0, Int(index) < pollfds.count else { return 0 }
        let r = Int32(pollfds[Int(index)].revents)
        var s: Int32 = 0
        if r & Int32(POLLIN) != 0 { s |= Int32(SLIRP_POLL_IN) }
        if r & Int32(POLLOUT) != 0 { s |= Int32(SLIRP_POLL_OUT) }
        if r & Int32(POLLPRI) != 0 { s |= Int32(SLIRP_POLL_PRI) }
        if r & Int32(POLLERR) != 0 { s |= Int32(SLIRP_POLL_ERR) }
        if r & Int32(POLLHUP) != 0 { s |= Int32(SLIRP_POLL_HUP) }
        return s
    }

    private func addPoll(fd: Int32, events: Int32) -> Int32 {
        var e: Int16 = 0
        if events & Int32(SLIRP_POLL_IN) != 0 { e |= Int16(POLLIN) }
        if events & Int32(SLIRP_POLL_OUT) != 0 { e |= Int16(POLLOUT) }
        if events & Int32(SLIRP_POLL_PRI) != 0 { e |= Int16(POLLPRI) }
        pollfds.append(pollfd(fd: fd, events: e, revents: 0))
        return Int32(pollfds.count - 1)
    }

    /// Asks slirp for its fds and timeout and brings the loop's registrations in line.
    private func refill() {
        guard let slirp, let loop else { return }
        pollfds.removeAll(keepingCapacity: true)
        var timeout = UInt32.max
        keel_slirp_pollfds_fill(slirp, &timeout, { fd, events, opaque in
            guard let opaque else { return -1 }
            return UserBackend.from(opaque).addPoll(fd: fd, events: events)
        }, Unmanaged.passUnretained(self).toOpaque())

        var wanted: [Int32: UInt32] = [:]
        if polling {
            for p in pollfds {
                var e: UInt32 = 0
                if p.events & Int16(POLLIN) != 0 { e |= UInt32(EPOLLIN.rawValue) }
                if p.events & Int16(POLLOUT) != 0 { e |= UInt32(EPOLLOUT.rawValue) }
                if p.events & Int16(POLLPRI) != 0 { e |= UInt32(EPOLLPRI.rawValue) }
                if e != 0 { wanted[p.fd, default: 0] |= e }
            }
        }
        for fd in watched.keys where wanted[fd] == nil {
            loop.remove(fd: fd)
            watched[fd] = nil
        }
        for (fd, e) in wanted where watched[fd] != e {
            let handler: EventLoop.Handler = { [unowned self] _ in self.cycle() }
            // EventLoop registers an fd number reused behind its back afresh.
            guard (try? loop.add(fd: fd, events: e, handler)) != nil else { continue }
            watched[fd] = e
        }
        if polling, timeout != UInt32.max {
            wakeTimer?.arm(afterNanoseconds: max(UInt64(timeout), 1) * 1_000_000)
        } else {
            wakeTimer?.disarm()
        }
    }

    /// slirp closes a socket right after unregistering it: drop it from the loop first so a
    /// reused fd number never inherits this registration.
    fileprivate func unregister(fd: Int32) {
        guard watched.removeValue(forKey: fd) != nil else { return }
        loop?.remove(fd: fd)
    }

    fileprivate func guestError() { guestErrors += 1 }

    fileprivate func notify() {
        guard let loop else { return }
        loop.post { [weak self] in self?.refill() }
    }

    // MARK: - slirp's timers (libslirp 4.7 has one: IPv6 router advertisements)

    fileprivate final class SlirpTimer {
        let id: SlirpTimerId
        let callbackOpaque: UnsafeMutableRawPointer?
        var expireMilliseconds: Int64?
        var loopTimer: Loop.Timer?
        init(id: SlirpTimerId, callbackOpaque: UnsafeMutableRawPointer?) { self.id = id; self.callbackOpaque = callbackOpaque }
    }

    fileprivate func newTimer(id: SlirpTimerId, callbackOpaque: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer {
        let t = SlirpTimer(id: id, callbackOpaque: callbackOpaque)
        timers.append(t)
        if loop != nil { try? startLoopTimer(t) }
        return Unmanaged.passRetained(t).toOpaque()
    }

    private func startLoopTimer(_ t: SlirpTimer) throws {
        guard let loop else { return }
        t.loopTimer = try loop.makeTimer { [unowned self, unowned t] in
            t.expireMilliseconds = nil
            guard let slirp = self.slirp else { return }
            self.slirpDepth += 1
            keel_slirp_handle_timer(slirp, t.id, t.callbackOpaque)
            self.slirpDepth -= 1
            self.deliverPending()
            self.refill()
        }
        armLoopTimer(t)
    }

    private func armLoopTimer(_ t: SlirpTimer) {
        guard let lt = t.loopTimer else { return }
        guard let expire = t.expireMilliseconds else { lt.disarm(); return }
        let now = Self.monotonicNanoseconds() / 1_000_000
        let delta = expire > now ? UInt64(expire - now) : 0
        lt.arm(afterNanoseconds: max(delta.multipliedReportingOverflow(by: 1_000_000).partialValue, 1))
    }

    fileprivate func modifyTimer(_ raw: UnsafeMutableRawPointer, expireMilliseconds: Int64) {
        let t = Unmanaged<SlirpTimer>.fromOpaque(raw).takeUnretainedValue()
        t.expireMilliseconds = expireMilliseconds
        armLoopTimer(t)
    }

    fileprivate func freeTimer(_ raw: UnsafeMutableRawPointer) {
        let u = Unmanaged<SlirpTimer>.fromOpaque(raw)
        let t = u.takeUnretainedValue()
        if let lt = t.loopTimer { loop?.remove(fd: lt.fd) }
        t.loopTimer = nil
        timers.removeAll { $0 === t }
        u.release()
    }

    static func monotonicNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    fileprivate static func from(_ opaque: UnsafeMutableRawPointer) -> UserBackend {
        Unmanaged<UserBackend>.fromOpaque(opaque).takeUnretainedValue()
    }
}

private func withOptionalCString<T>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}

/// slirp_add_hostfwd with QEMU's argument order; `udp` selects the protocol.
private func slirp_add_hostxfwd_ipv4(_ slirp: OpaquePointer, _ udp: Bool, _ host: in_addr, _ hostPort: UInt16,
                                     _ guest: UnsafeMutablePointer<in_addr>, _ guestPort: UInt16) -> Int32 {
    errno = 0
    return keel_slirp_add_hostfwd(slirp, udp ? 1 : 0, host, Int32(hostPort), guest.pointee, Int32(guestPort))
}

/// The callback table libslirp keeps a pointer to for the life of every Slirp instance.
private let slirpCallbacks: UnsafeMutablePointer<SlirpCb> = {
    let cb = UnsafeMutablePointer<SlirpCb>.allocate(capacity: 1)
    cb.initialize(to: SlirpCb())
    cb.pointee.send_packet = { buf, len, opaque in
        guard let opaque, let buf, len <= Int.max else { return -1 }
        UserBackend.from(opaque).slirpSent(UnsafeRawBufferPointer(start: buf, count: len))
        return len
    }
    cb.pointee.guest_error = { _, opaque in
        guard let opaque else { return }
        UserBackend.from(opaque).guestError()
    }
    cb.pointee.clock_get_ns = { _ in UserBackend.monotonicNanoseconds() }
    cb.pointee.timer_new_opaque = { id, cbOpaque, opaque in
        guard let opaque else { return nil }
        return UserBackend.from(opaque).newTimer(id: id, callbackOpaque: cbOpaque)
    }
    cb.pointee.timer_free = { timer, opaque in
        guard let timer, let opaque else { return }
        UserBackend.from(opaque).freeTimer(timer)
    }
    cb.pointee.timer_mod = { timer, expire, opaque in
        guard let timer, let opaque else { return }
        UserBackend.from(opaque).modifyTimer(timer, expireMilliseconds: expire)
    }
    cb.pointee.register_poll_fd = { _, _ in }
    cb.pointee.unregister_poll_fd = { fd, opaque in
        guard let opaque else { return }
        UserBackend.from(opaque).unregister(fd: fd)
    }
    cb.pointee.notify = { opaque in
        guard let opaque else { return }
        UserBackend.from(opaque).notify()
    }
    return cb
}()
