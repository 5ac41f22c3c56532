import Loop
import Memory
import Net

/// virtio-net (virtio 1.2 §5.1) as QEMU's virtio-net-pci: one receive/transmit queue pair per
/// backend (tap multiqueue gives one fd each), then the control queue. Runs on the loop its
/// backends are attached to; the vCPUs reach it under the same lock that loop dispatches with.
public final class VirtioNet: VirtioDevice {
    public struct Configuration: Sendable {
        /// The station address (`mac=`); 52:54:00:12:34:56 is QEMU's first default.
        public var mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        /// Offer VIRTIO_NET_F_MQ (needs more than one backend to mean anything).
        public var multiqueue = true
        public var queueSize: UInt16 = 256
        public init(mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]) { self.mac = mac }
    }

    static let baseFeatures = VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mergeableRxBuffers
        | VirtioNetFeature.controlQueue | VirtioNetFeature.controlRx | VirtioNetFeature.controlRxExtra
        | VirtioNetFeature.controlMACAddress | VirtioNetFeature.guestAnnounce

    let loop: EventLoop
    let configuration: Configuration
    let backends: [NetBackend]
    var pairs: [VirtioNetQueuePair] = []
    weak var transport: VirtioTransport?
    public let deviceFeatures: UInt64
    /// The station address: `mac=` until the driver sets another (VIRTIO_NET_CTRL_MAC_ADDR_SET).
    public internal(set) var mac: [UInt8]
    public internal(set) var filter = VirtioNetRxFilter()
    /// Queue pairs the driver uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET); 1 after reset.
    public internal(set) var activePairs = 1
    public internal(set) var linkUp: Bool
    var announcePending = false
    /// Bumped on every reset so deferred transmit work from before it does nothing.
    var epoch: UInt64 = 0
    /// How many control commands were answered with VIRTIO_NET_ERR (tests, debugging).
    public internal(set) var controlErrors = 0

    /// Attaches every backend to `loop`; the device owns them until `close()`.
    public init(backends: [NetBackend], configuration: Configuration, loop: EventLoop) throws {
        precondition(!backends.isEmpty && backends.count <= VirtioNetControlCommand.mqPairsMax)
        precondition(configuration.mac.count == 6)
        self.loop = loop
        self.configuration = configuration
        self.backends = backends
        mac = configuration.mac
        var features = Self.baseFeatures
        if configuration.multiqueue && backends.count > 1 { features |= VirtioNetFeature.multiqueue }
        // Offloads only when every queue's backend carries the vnet header and supports them.
        var offloads = backends[0].supportedOffloads
        for b in backends { offloads.formIntersection(b.vnetHeaderLength == VirtioNetHeader.length ? b.supportedOffloads : []) }
        features |= VirtioNetFeature.offloadFeatures(offloads)
        deviceFeatures = features
        linkUp = backends.allSatisfy(\.isLinkUp)
        pairs = backends.indices.map { VirtioNetQueuePair(index: $0, backend: backends[$0]) }
        for p in pairs { p.device = self }
        do {
            for p in pairs { try p.backend.attach(to: loop, receiver: p) }
        } catch {
            close()
            throw error
        }
    }

    /// Detaches the backends (machine teardown).
    public func close() {
        for b in backends { b.detach() }
    }

    var maxPairs: Int { pairs.count }
    var features: UInt64 { transport?.driverFeatures ?? 0 }
    func negotiated(_ f: UInt64) -> Bool { features & f == f }

    /// The control queue is the last one with VIRTIO_NET_F_MQ, queue 2 without it (§5.1.2).
    var controlQueueIndex: Int { negotiated(VirtioNetFeature.multiqueue) ? 2 * maxPairs : 2 }

    public var deviceType: UInt16 { 1 }
    public var queueMaxSizes: [UInt16] { Array(repeating: configuration.queueSize, count: 2 * maxPairs + 1) }
    public var pciClassCode: UInt32 { 0x02_00_00 }
    public var inflightRequests: Int { 0 }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        var config = [UInt8](repeating: 0, count: VirtioNetConfig.size)
        for i in 0..<6 { config[VirtioNetConfig.macOffset + i] = mac[i] }
        var status: UInt16 = linkUp ? VirtioNetConfig.statusLinkUp : 0
        if announcePending { status |= VirtioNetConfig.statusAnnounce }
        config[VirtioNetConfig.statusOffset] = UInt8(truncatingIfNeeded: status)
        config[VirtioNetConfig.statusOffset + 1] = UInt8(truncatingIfNeeded: status >> 8)
        config[VirtioNetConfig.maxPairsOffset] = UInt8(truncatingIfNeeded: maxPairs)
        config[VirtioNetConfig.maxPairsOffset + 1] = UInt8(truncatingIfNeeded: maxPairs >> 8)
        config[VirtioNetConfig.mtuOffset] = UInt8(truncatingIfNeeded: 1500)
        config[VirtioNetConfig.mtuOffset + 1] = UInt8(truncatingIfNeeded: 1500 >> 8)
        for i in 0..<data.count {
            let (at, o) = offset.addingReportingOverflow(i)
            data[i] = !o && at >= 0 && at < config.count ? config[at] : 0
        }
    }

    /// Modern drivers change the address over the control queue; config writes are ignored (§5.1.4.2).
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ transport: VirtioTransport) {
        self.transport = transport
        let offloads = VirtioNetFeature.guestOffloads(transport.driverFeatures & deviceFeatures)
        for b in backends { try? b.setOffloads(offloads) }
        for p in pairs { p.receiveBuffersPosted() }
    }

    public func reset() {
        transport = nil
        epoch &+= 1
        mac = configuration.mac
        filter = VirtioNetRxFilter()
        activePairs = 1
        announcePending = false
        for p in pairs { p.reset() }
        for b in backends { try? b.setOffloads([]) }
    }

    public func queueNotified(_ index: Int) {
        guard transport != nil, index >= 0 else { return }
        if index == controlQueueIndex {
            if negotiated(VirtioNetFeature.controlQueue) { processControlQueue() }
            return
        }
        ringNotified(index)
    }

    /// A kick on pair queue `index` (2k receive, 2k+1 transmit), never the control queue: for a
    /// vhost-user back-end, whose front-end keeps the control queue.
    public func ringNotified(_ index: Int) {
        guard transport != nil, index >= 0, index / 2 < maxPairs else { return }
        if index % 2 == 0 {
            pairs[index / 2].receiveBuffersPosted()
        } else if loop.isRunningElsewhere {
            // A vCPU's kick (tcg, or kvm without ioeventfd): the loop sends, as QEMU's transmit
            // bottom half, so the vCPU goes on with the guest while the backend (a tap write runs
            // the host's network stack) takes the frames on another thread.
            pairs[index / 2].transmitSoon()
        } else {
            pairs[index / 2].transmit()
        }
    }

    /// For a vhost-user back-end: the pairs in use are the leading ones whose two rings the
    /// front-end has started and enabled (it turns pairs on and off for VQ_PAIRS_SET).
    public func activePairsFollowReadyRings() {
        guard let t = transport else { return }
        var n = 0
        while n < maxPairs, 2 * n + 1 < t.queues.count, t.queues[2 * n].isReady, t.queues[2 * n + 1].isReady { n += 1 }
        let active = max(1, n)
        guard active != activePairs else { return }
        activePairs = active
        for p in pairs { p.receiveBuffersPosted() }
    }

    /// The pair whose receive queue takes frames from backend `index`: its own while the driver
    /// uses it, otherwise one it does use (a tap queue the guest left idle still gets traffic).
    func receivePair(forBackend index: Int) -> VirtioNetQueuePair {
        let n = max(1, min(activePairs, maxPairs))
        return pairs[index < n ? index : index % n]
    }

    func backendLinkChanged() {
        let up = backends.allSatisfy(\.isLinkUp)
        guard up != linkUp else { return }
        linkUp = up
        transport?.configChanged()
    }

    /// Asks the driver to announce itself (gratuitous ARP) after the link moved, as QEMU's
    /// announce-self; the driver acknowledges over the control queue.
    public func requestAnnounce() {
        guard negotiated(VirtioNetFeature.guestAnnounce | VirtioNetFeature.controlQueue), let t = transport else { return }
        announcePending = true
        t.configChanged()
    }
}
