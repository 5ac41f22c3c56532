import Glibc
import Loop
import Memory

/// The back-end side of vhost-user: serves any `VirtioDevice` (blk, scsi...) over a listening
/// unix socket, one front-end at a time, on one event loop. The front-end's memory table is
/// mapped into a `GuestMemory` view, so the device walks the same checked `SplitVirtqueue`s it
/// walks inside Keel; kicks arrive as eventfds on the loop and completions signal the call
/// eventfds. Every message is checked (size, fd count, queue index); a bad one ends that
/// connection with a one-line error and the server waits for the next front-end.
public final class VhostUserBackendServer: VirtioTransport {
    public let device: VirtioDevice
    public let loop: EventLoop
    public let socketPath: String
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
    public init(device: VirtioDevice, socketPath: String, loop: EventLoop) throws {
        self.device = device
        self.loop = loop
        self.socketPath = socketPath
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

    /// Listens at `socketPath` and serves front-ends on the loop.
    public func start() throws {
        listenFD = try VhostUserChannel.listen(path: socketPath)
        try loop.addReadable(fd: listenFD) { [unowned self] _ in self.acceptConnection() }
    }

    public func stop() {
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
        let c = VhostUserChannel(fd: fd)
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
        for i in rings.indices { stopRing(i) }
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
    var enabled = false
    var started = false

    func signalCall() {
        guard call >= 0 else { return }
        var one: UInt64 = 1
        _ = write(call, &one, 8)
    }
}
