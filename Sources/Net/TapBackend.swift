import CKeel
import Glibc
import Loop

/// A tap device (/dev/net/tun with IFF_TAP|IFF_NO_PI, QEMU's `-netdev tap`): one fd per queue,
/// non-blocking, each frame preceded by a 12-byte virtio_net_hdr_v1 when IFF_VNET_HDR is on, so
/// checksum and segmentation offloads pass between the guest and the host kernel untouched.
public final class TapBackend: NetBackend {
    /// The largest read: a 64 KiB GSO frame, its Ethernet/VLAN header and the vnet header.
    static let receiveBufferSize = 65536 + 14 + 4 + 12
    /// Frames read per readiness event before yielding to the loop's other work.
    static let receiveBurst = 64

    public let fd: Int32
    public let interfaceName: String
    public let vnetHeaderLength: Int
    public let supportedOffloads: NetOffloads
    let ownsFD: Bool
    private var loop: EventLoop?
    private weak var receiver: NetReceiver?
    private let buffer: UnsafeMutableRawBufferPointer
    /// A frame read but refused by the receiver: offered again first.
    private var heldLength: Int?
    private var receiveEnabled = true
    private var writeBlocked = false
    private var watched: UInt32 = 0
    private var deliveryPosted = false

    /// Opens `queues` queues of tap `ifname` (the kernel names it tapN when nil), creating the
    /// interface if needed. Errors name the interface.
    public static func open(ifname: String?, queues: Int = 1, vnetHeader: Bool = true) throws -> [TapBackend] {
        guard queues >= 1 else { throw NetBackendError("tap: queues=\(queues): at least one queue") }
        if let n = ifname, n.utf8.count > 15 || n.isEmpty {
            throw NetBackendError("tap: ifname=\(n): an interface name is 1 to 15 bytes")
        }
        var flags = CKEEL_IFF_TAP | CKEEL_IFF_NO_PI
        if vnetHeader { flags |= CKEEL_IFF_VNET_HDR }
        if queues > 1 { flags |= CKEEL_IFF_MULTI_QUEUE }
        var name = ifname ?? ""
        var out: [TapBackend] = []
        for _ in 0..<queues {
            let fd = Glibc.open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else {
                throw NetBackendError("tap: /dev/net/tun: \(String(cString: strerror(errno)))")
            }
            var raw = [CChar](repeating: 0, count: 16)
            for (i, b) in name.utf8.prefix(15).enumerated() { raw[i] = CChar(bitPattern: b) }
            guard ckeel_tun_set_iff(fd, &raw, flags) == 0 else {
                let e = errno
                close(fd)
                let why = e == EINVAL && queues > 1 ? "\(String(cString: strerror(e))) (an existing tap without multi_queue?)" : String(cString: strerror(e))
                throw NetBackendError("tap: ifname=\(name.isEmpty ? "(new)" : name): TUNSETIFF: \(why)")
            }
            name = String(cString: raw)
            do {
                out.append(try TapBackend(fd: fd, ownsFD: true, name: name, vnetHeader: vnetHeader))
            } catch {
                close(fd)
                throw error
            }
        }
        return out
    }

    /// A tap queue already open (`fd=`, handed over by a management tool): its vnet header and
    /// name are read from the fd. Keel closes it on teardown.
    public static func adopt(fd: Int32) throws -> TapBackend {
        var raw = [CChar](repeating: 0, count: 16)
        var flags: Int32 = 0
        guard ckeel_tun_get_iff(fd, &raw, &flags) == 0 else {
            throw NetBackendError("tap: fd=\(fd): not a tap device (TUNGETIFF: \(String(cString: strerror(errno))))")
        }
        guard flags & CKEEL_IFF_TAP != 0, flags & CKEEL_IFF_NO_PI != 0 else {
            throw NetBackendError("tap: fd=\(fd): not opened with IFF_TAP|IFF_NO_PI")
        }
        let current = fcntl(fd, F_GETFL)
        guard current >= 0, ckeel_fcntl_int(fd, F_SETFL, current | O_NONBLOCK) == 0 else {
            throw NetBackendError("tap: fd=\(fd): \(String(cString: strerror(errno)))")
        }
        _ = ckeel_fcntl_int(fd, F_SETFD, FD_CLOEXEC)
        return try TapBackend(fd: fd, ownsFD: true, name: String(cString: raw), vnetHeader: flags & CKEEL_IFF_VNET_HDR != 0)
    }

    init(fd: Int32, ownsFD: Bool, name: String, vnetHeader: Bool) throws {
        self.fd = fd
        self.ownsFD = ownsFD
        interfaceName = name
        if vnetHeader {
            var size: Int32 = 12
            guard ckeel_ioctl_ptr(fd, CKEEL_TUNSETVNETHDRSZ, &size) == 0 else {
                throw NetBackendError("tap \(name): TUNSETVNETHDRSZ 12: \(String(cString: strerror(errno)))")
            }
            vnetHeaderLength = 12
            supportedOffloads = Self.probeOffloads(fd)
        } else {
            vnetHeaderLength = 0
            supportedOffloads = []
        }
        buffer = .allocate(byteCount: Self.receiveBufferSize, alignment: 16)
    }

    deinit {
        buffer.deallocate()
        if ownsFD { close(fd) }
    }

    /// The offloads this kernel's tap accepts (QEMU probes the same way): checksum and TSO
    /// always with a vnet header, UFO where TUNSETOFFLOAD still takes it. Left at none until the
    /// guest negotiates, so the kernel hands over nothing the guest cannot take.
    static func probeOffloads(_ fd: Int32) -> NetOffloads {
        var o: NetOffloads = []
        let base: NetOffloads = [.checksum, .tso4, .tso6, .tsoECN]
        if ckeel_ioctl(fd, CKEEL_TUNSETOFFLOAD, UInt(base.rawValue)) == 0 { o = base }
        else if ckeel_ioctl(fd, CKEEL_TUNSETOFFLOAD, UInt(NetOffloads.checksum.rawValue)) == 0 { o = .checksum }
        if o.contains(.checksum), ckeel_ioctl(fd, CKEEL_TUNSETOFFLOAD, UInt(o.union(.ufo).rawValue)) == 0 { o.insert(.ufo) }
        _ = ckeel_ioctl(fd, CKEEL_TUNSETOFFLOAD, 0)
        return o
    }

    public var isLinkUp: Bool { true }

    public func setOffloads(_ offloads: NetOffloads) throws {
        guard vnetHeaderLength > 0 else { return }
        let o = offloads.intersection(supportedOffloads)
        guard ckeel_ioctl(fd, CKEEL_TUNSETOFFLOAD, UInt(o.rawValue)) == 0 else {
            throw NetBackendError("tap \(interfaceName): TUNSETOFFLOAD 0x\(String(o.rawValue, radix: 16)): \(String(cString: strerror(errno)))")
        }
    }

    public func attach(to loop: EventLoop, receiver: NetReceiver) throws {
        self.loop = loop
        self.receiver = receiver
        watched = 0
        try updateWatch()
    }

    public func detach() {
        if watched != 0 { loop?.remove(fd: fd) }
        watched = 0
        loop = nil
        receiver = nil
    }

    public func setReceiveEnabled(_ enabled: Bool) {
        guard enabled != receiveEnabled else { return }
        receiveEnabled = enabled
        try? updateWatch()
        // The held frame goes out from the loop, not from inside the caller.
        if enabled, heldLength != nil, !deliveryPosted, let loop {
            deliveryPosted = true
            loop.post { [weak self] in
                guard let self else { return }
                self.deliveryPosted = false
                self.readFrames()
            }
        }
    }

    public func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult {
        let n = withUnsafeTemporaryAllocation(of: iovec.self, capacity: max(segments.count, 1)) { iov -> Int in
            for (i, s) in segments.enumerated() {
                iov[i] = iovec(iov_base: UnsafeMutableRawPointer(mutating: s.base), iov_len: s.count)
            }
            while true {
                let r = writev(fd, iov.baseAddress, Int32(segments.count))
                if r < 0 && errno == EINTR { continue }
                return r
            }
        }
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
            writeBlocked = true
            try? updateWatch()
            return .wouldBlock
        }
        // Anything else (a header the kernel rejects, the interface down) loses that frame only.
        return .sent
    }

    private func updateWatch() throws {
        guard let loop else { return }
        var events: UInt32 = 0
        if receiveEnabled { events |= UInt32(EPOLLIN.rawValue) }
        if writeBlocked { events |= UInt32(EPOLLOUT.rawValue) }
        guard events != watched else { return }
        if events == 0 {
            loop.remove(fd: fd)
        } else {
            try loop.add(fd: fd, events: events) { [unowned self] e in self.ready(e) }
        }
        watched = events
    }

    private func ready(_ events: UInt32) {
        if events & UInt32(EPOLLOUT.rawValue) != 0, writeBlocked {
            writeBlocked = false
            try? updateWatch()
            receiver?.backendWritable()
        }
        if events & UInt32(EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { readFrames() }
    }

    /// Reads and offers frames until the tap is empty, the receiver refuses one (kept; reading
    /// stops until `setReceiveEnabled(true)`), or a burst is done (level-triggered: more later).
    private func readFrames() {
        guard let receiver else { return }
        for _ in 0..<Self.receiveBurst where receiveEnabled {
            let length: Int
            if let held = heldLength {
                length = held
            } else {
                let n = read(fd, buffer.baseAddress, buffer.count)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                length = n
            }
            if receiver.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<length])) {
                heldLength = nil
            } else {
                heldLength = length
                if receiveEnabled {
                    receiveEnabled = false
                    try? updateWatch()
                }
                return
            }
        }
    }
}
