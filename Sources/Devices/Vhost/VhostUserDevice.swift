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

    var config: [UInt8]
    let configSize: Int
    let configOverrides: [(offset: Int, bytes: [UInt8])]
    weak var transport: VirtioPCIDevice?
    let kicks: [EventFD]
    let calls: [EventFD]
    var running: [Bool]
    /// The call fd each running ring was given: Keel's relay eventfd, or the vector's irqfd.
    var givenCalls: [Int32]
    /// Where each ring resumes: SET_VRING_BASE's value at the next start.
    var bases: [UInt16]
    var activated = false
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
        kicks = try (0..<queueCount).map { _ in try EventFD() }
        calls = try (0..<queueCount).map { _ in try EventFD() }
        running = Array(repeating: false, count: queueCount)
        givenCalls = Array(repeating: -1, count: queueCount)
        bases = Array(repeating: 0, count: queueCount)
        deviceFeatures = 0; transportFeatures = 0; config = []
        if !frontend.isConnected { try frontend.connect() }
        guard frontend.backendQueueCount >= UInt64(queueCount) else {
            throw VhostUserError("num-queues=\(queueCount) but the back-end has \(frontend.backendQueueCount) queues")
        }
        try readBackendView()
        for (i, c) in calls.enumerated() {
            try loop.addReadable(fd: c.fd) { [unowned self, c] _ in
                c.consume()
                self.transport?.backendCalled(queue: i)
            }
        }
        watchConnection()
    }

    deinit {
        for c in calls { loop.remove(fd: c.fd) }
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

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < config.count ? config[o] : 0
        }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        guard offset >= 0, data.count <= configSize, offset <= configSize - data.count else { return }
        for (i, b) in data.enumerated() { config[offset + i] = b }
        guard frontend.isConnected else { return }
        do {
            try frontend.send(VhostUserMessage(.setConfig, payload: VhostUserConfig(offset: UInt32(offset), bytes: Array(data)).payload))
        } catch { connectionLost(error) }
    }

    public func activate(_ transport: VirtioTransport) {
        self.transport = transport as? VirtioPCIDevice
        activated = true
        guard frontend.isConnected else { return }
        do { try handOver() } catch { connectionLost(error) }
    }

    /// Under kvm with the vector routed, the back-end signals the irqfd itself; otherwise Keel
    /// relays its call eventfd (and PCIMSIX keeps the pending bit of a masked vector).
    func callFD(queue i: Int) -> Int32 { transport?.interruptEventFD(queue: i)?.fd ?? calls[i].fd }

    public func interruptRoutesChanged() {
        guard frontend.isConnected else { return }
        do throws(VhostUserError) {
            for i in running.indices where running[i] {
                let call = callFD(queue: i)
                guard call != givenCalls[i] else { continue }
                try frontend.send(VhostUserMessage(.setVringCall, payload: .le64Bytes(UInt64(i))), fds: [call])
                givenCalls[i] = call
                // An interrupt raised on the old fd in between is not lost, only maybe repeated.
                transport?.backendCalled(queue: i)
            }
        } catch { connectionLost(error) }
    }

    public func queueNotifyEventFD(_ index: Int) -> EventFD? { index >= 0 && index < kicks.count ? kicks[index] : nil }

    public func queueNotified(_ index: Int) {
        guard index >= 0, index < kicks.count else { return }
        kicks[index].signal()
    }

    public func reset() {
        if frontend.isConnected {
            do throws(VhostUserError) {
                for i in running.indices where running[i] { _ = try frontend.vringBase(i) }
            } catch { connectionLost(error) }
        }
        activated = false
        for i in running.indices { running[i] = false; bases[i] = 0 }
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
        let table = memory.regions.map {
            VhostUserMemoryRegion(guestAddress: $0.guestAddress, size: $0.size, userAddress: UInt64(UInt(bitPattern: $0.host)), mmapOffset: $0.fileOffset)
        }
        try frontend.send(VhostUserMessage(.setMemTable, payload: VhostUserMemoryRegion.tableBytes(table)),
                          fds: Array(repeating: memory.fd, count: table.count))
        // Queues past this device's own (virtio-net's control queue) stay with the front-end.
        for (i, q) in t.queues.enumerated() where q.isReady && i < running.count {
            guard let desc = memory.hostPointer(q.descriptorTable, length: 16 * UInt64(q.size)),
                  let avail = memory.hostPointer(q.driverArea, length: 6 + 2 * UInt64(q.size)),
                  let used = memory.hostPointer(q.deviceArea, length: 6 + 8 * UInt64(q.size)) else { continue }
            let index = UInt32(i)
            try frontend.send(VhostUserMessage(.setVringNum, payload: .vringState(index, UInt32(q.size))))
            try frontend.send(VhostUserMessage(.setVringBase, payload: .vringState(index, UInt32(bases[i]))))
            let a = VhostUserVringAddress(index: index, descriptor: UInt64(UInt(bitPattern: desc)),
                                          used: UInt64(UInt(bitPattern: used)), available: UInt64(UInt(bitPattern: avail)))
            try frontend.send(VhostUserMessage(.setVringAddr, payload: a.bytes))
            // The call fd first: a ring starts at its kick and may complete work at once.
            let call = callFD(queue: i)
            try frontend.send(VhostUserMessage(.setVringCall, payload: .le64Bytes(UInt64(i))), fds: [call])
            givenCalls[i] = call
            try frontend.send(VhostUserMessage(.setVringKick, payload: .le64Bytes(UInt64(i))), fds: [kicks[i].fd])
            if frontend.backendFeatures & VhostUser.featureProtocolFeatures != 0 {
                try frontend.send(VhostUserMessage(.setVringEnable, payload: .vringState(index, 1)))
            }
            running[i] = true
        }
    }
}
