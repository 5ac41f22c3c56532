import Glibc
import Loop
import Memory

/// The back-end side of vhost-user: serves any `VirtioDevice` (blk, scsi...) over a unix socket
/// it listens at, connects to, or is handed, one front-end at a time, on one event loop. The front-end's memory table is
/// mapped into a `GuestMemory` view, so the device walks the same checked `SplitVirtqueue`s it
/// walks inside Keel; kicks arrive as eventfds on the loop and completions signal the call
/// eventfds. Every message is checked (size, fd count, queue index); a bad one ends that
/// connection with a one-line error and the server waits for the next front-end (or connects again).
public final class VhostUserBackendServer: VirtioTransport {
    /// How the back-end meets its front-end (the vhost-user spec's backend program conventions).
    public enum Endpoint: Equatable, Sendable {
        /// Listen at the path (`--socket-path`); serve front-ends one after another.
        case listen(String)
        /// Connect to a front-end listening at the path (its chardev has server=on); connect
        /// again, once a second, whenever the connection ends or is refused.
        case connect(String)
        /// A socket already connected to the front-end (`--fd`); serve it once.
        case connected(Int32)
    }

    public let device: VirtioDevice
    public let loop: EventLoop
    public let endpoint: Endpoint
    /// Where the back-end listens or connects (empty with `.connected`).
    public var socketPath: String {
        switch endpoint {
        case .listen(let p), .connect(let p): return p
        case .connected: return ""
        }
    }
    /// Called with the reason whenever a connection ends (nil: the front-end closed it cleanly).
    public var onDisconnect: ((VhostUserError?) -> Void)?
    /// Called when a front-end connects.
    public var onConnect: (() -> Void)?
    /// Diagnostics go here (default: one line on stderr).
    public var log: (String) -> Void = { line in
        let s = "keel vhost-user: " + line + "\n"
        s.withCString { _ = write(2, $0, strlen($0)) }
    }

    public internal(set) var memory: GuestMemory
    public let queues: [SplitVirtqueue]
    public internal(set) var driverFeatures: UInt64 = 0
    public let offeredFeatures: UInt64
    public let offeredProtocolFeatures: UInt64

    var listenFD: Int32 = -1
    var connectTimer: Timer?
    var refusedLogged = false
    var channel: VhostUserChannel?
    var protocolFeatures: UInt64 = 0
    var memoryTable: [VhostUserMemoryRegion] = []
    /// Views replaced or dropped while requests still held pointers into them.
    var retiredMemory: [GuestMemory] = []
    var rings: [BackendRing]
    var activated = false
    var broken = false
    /// A GET_VRING_BASE waiting for in-flight requests to finish before it answers.
    var deferredMessage: VhostUserMessage?
    /// The inflight region the front-end gave (or got), if it negotiated INFLIGHT_SHMFD.
    var inflight: BackendInflightRegion?

    /// `device`'s queue sizes are the maxima the front-end may choose.
    public convenience init(device: VirtioDevice, socketPath: String, loop: EventLoop) throws {
        try self.init(device: device, endpoint: .listen(socketPath), loop: loop)
    }

    public init(device: VirtioDevice, endpoint: Endpoint, loop: EventLoop) throws {
        self.device = device
        self.loop = loop
        self.endpoint = endpoint
        memory = try GuestMemory(mapping: [])
        queues = device.queueMaxSizes.map { SplitVirtqueue(maxSize: $0) }
        rings = queues.map { _ in BackendRing() }
        offeredFeatures = device.deviceFeatures | Virtio.featureVersion1 | Virtio.featureIndirectDescriptors
            | Virtio.featureEventIndex | VhostUser.featureProtocolFeatures
        offeredProtocolFeatures = VhostUser.protocolMQ | VhostUser.protocolReplyAck | VhostUser.protocolConfig
            | VhostUser.protocolInflightSHMFD
    }

    deinit {
        stop()
    }

    /// Listens, connects or adopts the socket, and serves front-ends on the loop.
    public func start() throws {
        switch endpoint {
        case .listen(let path):
            listenFD = try VhostUserChannel.listen(path: path)
            try loop.addReadable(fd: listenFD) { [unowned self] _ in self.acceptConnection() }
        case .connect:
            connectTimer = try loop.makeTimer { [unowned self] in self.connectToFrontend() }
            connectToFrontend()
        case .connected(let fd):
            guard fcntl(fd, F_GETFD) >= 0 else { throw VhostUserError("--fd=\(fd) is not an open file descriptor") }
            var type: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0, type == Int32(SOCK_STREAM.rawValue) else {
                throw VhostUserError("--fd=\(fd) is not a stream socket")
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            adopt(VhostUserChannel(fd: fd))
        }
    }

    /// `.connect`: one attempt now, the next in a second if the front-end is not there.
    func connectToFrontend() {
        guard channel == nil, case .connect(let path) = endpoint else { return }
        do throws(VhostUserError) {
            let c = try VhostUserChannel.connect(path: path)
            refusedLogged = false
            adopt(c)
        } catch {
            if !refusedLogged { log("\(error); retrying every second"); refusedLogged = true }
            connectTimer?.arm(afterNanoseconds: 1_000_000_000)
        }
    }

    public func stop() {
        connectTimer?.disarm()
        connectTimer = nil
        disconnect(nil, quiet: true)
        if listenFD >= 0 {
            loop.remove(fd: listenFD)
            close(listenFD)
            listenFD = -1
            unlink(socketPath)
        }
    }

    public var isConnected: Bool { channel != nil }

    func acceptConnection() {
        let fd = accept(listenFD, nil, nil)
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        guard channel == nil else {
            // One front-end at a time, as QEMU's back-ends.
            log("refusing a second front-end while one is connected")
            close(fd)
            return
        }
        adopt(VhostUserChannel(fd: fd))
    }

    func adopt(_ c: VhostUserChannel) {
        let fd = c.fd
        channel = c
        do {
            try loop.addReadable(fd: fd) { [unowned self] _ in self.readMessage() }
        } catch {
            channel = nil
            return
        }
        onConnect?()
    }

    func readMessage() {
        guard let c = channel, deferredMessage == nil else { return }
        do throws(VhostUserError) {
            let m = try c.receive()
            try handle(m)
        } catch {
            disconnect(error.description == "peer closed the connection" ? nil : error)
        }
    }

    /// Ends the connection: rings stop, the device forgets its requests, the view is retired.
    func disconnect(_ why: VhostUserError?, quiet: Bool = false) {
        guard let c = channel else { return }
        if let why, !quiet { log("front-end connection ended: \(why)") }
        loop.remove(fd: c.fd)
        c.close()
        channel = nil
        deferredMessage = nil
        for i in rings.indices {
            stopRing(i)
            if rings[i].error >= 0 { close(rings[i].error) }
        }
        device.reset()
        activated = false
        broken = false
        driverFeatures = 0
        protocolFeatures = 0
        memoryTable = []
        retire(memory)
        memory = (try? GuestMemory(mapping: [])) ?? memory
        for q in queues { q.reset() }
        rings = queues.map { _ in BackendRing() }
        inflight?.unmap()
        inflight = nil
        if !quiet { onDisconnect?(why) }
        if !quiet, case .connect = endpoint { connectTimer?.arm(afterNanoseconds: 1_000_000_000) }
    }

    func retire(_ m: GuestMemory) {
        if device.inflightRequests > 0 && !m.regions.isEmpty { retiredMemory.append(m) }
    }

    func reply(_ m: VhostUserMessage, _ payload: [UInt8]) throws(VhostUserError) {
        guard let c = channel else { return }
        try c.send(VhostUserMessage(request: m.request, flags: VhostUser.version | VhostUser.flagReply, payload: payload))
    }

    // MARK: VirtioTransport

    public func complete(queue index: Int, head: UInt16, length: UInt32) {
        guard isProcessing, index >= 0, index < queues.count, rings[index].started else { return }
        let q = queues[index]
        do {
            try q.pushUsed(memory, head: head, length: length)
            if try q.needsInterrupt(memory) { rings[index].signalCall() }
        } catch {
            deviceNeedsReset(error)
        }
    }

    public func deviceNeedsReset(_ why: VirtqueueError) {
        guard !broken else { return }
        broken = true
        log("the driver broke the virtqueue rules (\(why)); queues stopped until the front-end restarts them")
        // The front-end learns it on each started ring's error eventfd (SET_VRING_ERR).
        for r in rings where r.started { r.signalError() }
    }

    public func configChanged() {}

    public func requestsDrained() {
        retiredMemory.removeAll()
        guard let m = deferredMessage, let c = channel else { return }
        deferredMessage = nil
        do {
            try handle(m)
            try loop.addReadable(fd: c.fd) { [unowned self] _ in self.readMessage() }
        } catch let e as VhostUserError {
            disconnect(e)
        } catch {
            disconnect(VhostUserError("\(error)"))
        }
    }

    public var isProcessing: Bool { channel != nil && !broken && activated }
}

/// One ring's vhost-user state beside its `SplitVirtqueue`.
struct BackendRing {
    var address: VhostUserVringAddress?
    var base: UInt16 = 0
    var kick: Int32 = -1
    var call: Int32 = -1
    var error: Int32 = -1
    var enabled = false
    var started = false

    func signalCall() { signal(call) }
    func signalError() { signal(error) }

    private func signal(_ fd: Int32) {
        guard fd >= 0 else { return }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }
}
