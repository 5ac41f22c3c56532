import Glibc
import Loop
import Memory

/// A virtio device whose data plane is a vhost-user back-end (vhost-user-blk-pci and kin): the
/// transport's feature bits and config space come from the back-end (GET_FEATURES, GET_CONFIG);
/// at DRIVER_OK the memory table, ring addresses and the kick/call eventfds are handed over, and
/// Keel only relays kicks (a notify write signals the kick eventfd) and calls (the call eventfd
/// raises the queue's MSI-X vector). A reset or stop asks for each ring's base (GET_VRING_BASE).
/// When the back-end dies, `reconnectSeconds` > 0 retries on the loop (with server=on, the
/// listening socket accepts it again) and replays the setup from the used ring's index, so requests the guest made meanwhile are served by the new back-end.
public final class VhostUserDevice: VirtioDevice {
    public let deviceType: UInt16
    public let pciClassCode: UInt32
    public let queueMaxSizes: [UInt16]
    public let frontend: VhostUserFrontend
    public let memory: GuestMemory
    public let loop: EventLoop
    public let reconnectSeconds: UInt64
    public private(set) var deviceFeatures: UInt64
    public private(set) var transportFeatures: UInt64
    public var inflightRequests: Int { 0 }
    /// One line per connection event (default stderr).
    public var log: (String) -> Void = { line in
        let s = "keel: vhost-user: " + line + "\n"
        s.withCString { _ = write(2, $0, strlen($0)) }
    }
    /// Called after every successful (re)connection and replay; tests count them.
    public var onReconnect: (() -> Void)?
    /// Ring errors the back-end reported on the SET_VRING_ERR eventfds (tests, debugging).
    public private(set) var ringErrors = 0

    var config: [UInt8]
    let configSize: Int
    let configOverrides: [(offset: Int, bytes: [UInt8])]
    /// The rings, their kick and call eventfds and where each resumes.
    let vhostRings: VhostRings<VhostUserFrontend>
    var transport: VirtioPCIDevice? { vhostRings.transport }
    var activated = false
    /// QMP stop: the rings are stopped at the back-end (GET_VRING_BASE) until cont.
    var paused = false
    var reconnectTimer: Timer?
    var watchedFD: Int32 = -1
    /// server=on: the listening socket is on the loop, waiting for the back-end to come back.
    var listenerWatched = false
    /// The back-end's inflight region (INFLIGHT_SHMFD): kept across back-end restarts, dropped at a reset.
    var inflightFD: Int32 = -1
    var inflight: VhostUserInflight?

    /// Connects and negotiates now (the guest's view of the device needs the back-end's
    /// features and config). `configOverrides` are bytes Keel decides itself (blk's num_queues).
    public init(deviceType: UInt16, pciClassCode: UInt32, configSize: Int, configOverrides: [(offset: Int, bytes: [UInt8])] = [],
                queueCount: Int, queueSize: UInt16, frontend: VhostUserFrontend, memory: GuestMemory, loop: EventLoop,
                reconnectSeconds: UInt64 = 0) throws {
        precondition(queueCount >= 1 && queueSize.nonzeroBitCount == 1)
        self.deviceType = deviceType
        self.pciClassCode = pciClassCode
        self.configSize = configSize
        self.configOverrides = configOverrides
        queueMaxSizes = Array(repeating: queueSize, count: queueCount)
        self.frontend = frontend
        self.memory = memory
        self.loop = loop
        self.reconnectSeconds = reconnectSeconds
        vhostRings = try VhostRings(rings: (0..<queueCount).map { .init(backend: frontend, index: UInt32($0)) }, loop: loop)
        deviceFeatures = 0; transportFeatures = 0; config = []
        if !frontend.isConnected { try frontend.connect() }
        guard frontend.backendQueueCount >= UInt64(queueCount) else {
            throw VhostUserError("num-queues=\(queueCount) but the back-end has \(frontend.backendQueueCount) queues")
        }
        try readBackendView()
        watchConnection()
        vhostRings.errorReported = { [unowned self] i in
            self.ringErrors += 1
            // QEMU logs each; the guest can repeat the fault at will, so once, then only the count.
            if self.ringErrors == 1 { self.log("the back-end reported an error on ring \(i) (the guest's ring is malformed)") }
        }
    }

    deinit {
        if watchedFD >= 0 { loop.remove(fd: watchedFD) }
        if listenerWatched { loop.remove(fd: frontend.listenFD) }
        if inflightFD >= 0 { close(inflightFD) }
    }

    func readBackendView() throws(VhostUserError) {
        let f = frontend.backendFeatures
        // Device-specific bits are 0-23; the ring bits Keel's transport knows are passed on.
        deviceFeatures = f & 0xFF_FFFF
        transportFeatures = f & (Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex)
        var c = try frontend.config(size: configSize)
        for o in configOverrides where o.offset >= 0 && o.offset + o.bytes.count <= c.count {
            c.replaceSubrange(o.offset..<o.offset + o.bytes.count, with: o.bytes)
        }
        config = c
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { readConfigBytes(config, offset: offset, into: data) }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        guard offset >= 0, data.count <= configSize, offset <= configSize - data.count else { return }
        for (i, b) in data.enumerated() { config[offset + i] = b }
        guard frontend.isConnected else { return }
        do {
            try frontend.send(VhostUserMessage(.setConfig, payload: VhostUserConfig(offset: UInt32(offset), bytes: Array(data)).payload))
        } catch { connectionLost(error) }
    }

    public func activate(_ transport: VirtioTransport) {
        vhostRings.transport = transport as? VirtioPCIDevice
        activated = true
        guard frontend.isConnected, !paused else { return }
        do { try handOver() } catch { connectionLost(error) }
    }

    public func interruptRoutesChanged() {
        guard frontend.isConnected else { return }
        do { try vhostRings.interruptRoutesChanged() } catch { connectionLost(error) }
    }

    public func queueNotifyEventFD(_ index: Int) -> EventFD? { vhostRings.queueNotifyEventFD(index) }

    public func queueNotified(_ index: Int) { vhostRings.notify(index) }

    /// As QEMU's vm_stop: GET_VRING_BASE on each running ring, and the same handover as at
    /// DRIVER_OK from those bases on cont.
    public func setBackendPaused(_ paused: Bool) {
        guard paused != self.paused else { return }
        self.paused = paused
        guard activated, frontend.isConnected else { return }
        do throws(VhostUserError) {
            if paused { try vhostRings.stop() } else { try handOver() }
        } catch {
            connectionLost(error)
        }
    }

    public func reset() {
        if frontend.isConnected {
            do { try vhostRings.stop() } catch { connectionLost(error) }
        }
        activated = false
        vhostRings.forget()
        if inflightFD >= 0 { close(inflightFD); inflightFD = -1 }
        inflight = nil
    }

    /// SET_FEATURES, SET_MEM_TABLE, then each ready ring: num, base, addresses, call, kick, enable.
    func handOver() throws(VhostUserError) {
        guard let t = transport else { return }
        if frontend.protocolFeatures & VhostUser.protocolInflightSHMFD != 0 {
            if inflight == nil {
                let ask = VhostUserInflight(mmapSize: 0, mmapOffset: 0, queueCount: UInt16(queueMaxSizes.count), queueSize: queueMaxSizes[0])
                var r = try frontend.request(VhostUserMessage(.getInflightFD, payload: ask.bytes), replyFDs: 1)
                let got = try VhostUserInflight(r.payload)
                guard got.queueCount == ask.queueCount, got.queueSize == ask.queueSize else {
                    throw VhostUserError("GET_INFLIGHT_FD answered for \(got.queueCount)x\(got.queueSize)")
                }
                inflightFD = r.fds.removeFirst().take()
                inflight = got
            }
            if let i = inflight {
                try frontend.send(VhostUserMessage(.setInflightFD, payload: i.bytes), fds: [inflightFD])
            }
        }
        // Bits the front-end answers itself (virtio-net's control queue) are not the back-end's.
        let features = (t.driverFeatures & frontend.backendFeatures) | (frontend.backendFeatures & VhostUser.featureProtocolFeatures)
        try frontend.send(VhostUserMessage(.setFeatures, payload: .le64Bytes(features)))
        let table = VhostMemoryRegion.regions(of: memory)
        try frontend.send(VhostUserMessage(.setMemTable, payload: VhostUserMemoryRegion.tableBytes(table)),
                          fds: Array(repeating: memory.fd, count: table.count))
        // Queues past this device's own (virtio-net's control queue) stay with the front-end.
        try vhostRings.start(t, memory: memory)
    }
}

extension VhostUserDevice: VhostNetRings {
    public func setStationAddress(_ mac: [UInt8]) {
        VirtioNetConfig.setStationAddress(mac, in: &config)
    }

    public func setQueuePairs(usable: Int, active: Int) {
        vhostRings.handoverLimit = 2 * usable
        vhostRings.enabledLimit = 2 * active
        guard frontend.isConnected else { return }   // a reconnect's handover applies both
        do { try vhostRings.setEnabledLimit(2 * active) } catch { connectionLost(error) }
    }
}
