import Loop
import Memory

/// The half of a vhost net device that carries the receive/transmit rings: a vhost-user
/// back-end (`VhostUserDevice`) or Linux's vhost-net (`VhostKernelDevice`). Its config space
/// is virtio-net's (§5.1.4), the station address included.
public protocol VhostNetRings: VirtioDevice {
    /// Writes `mac` into the config space's mac field.
    func setStationAddress(_ mac: [UInt8])
    /// Set before activation and on VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: the rings of the first
    /// `usable` pairs belong to the back-end (1 without VIRTIO_NET_F_MQ, whose control queue is
    /// queue 2), and those of the first `active` pairs are enabled.
    func setQueuePairs(usable: Int, active: Int)
}

/// virtio-net-pci over `-netdev vhost-user` or `-netdev tap,vhost=on`: the receive/transmit
/// rings go to the back-end, while the control queue stays here, as QEMU keeps it in the
/// front-end when the back-end does not carry it. The station address lives in this config
/// space: `mac=` at creation, VIRTIO_NET_CTRL_MAC_ADDR_SET afterwards. The back-end's own
/// receive filter stays promiscuous, so only address changes are offered over this queue. With
/// several pairs, VIRTIO_NET_F_MQ is offered and VQ_PAIRS_SET enables and disables the back-end's
/// rings (SET_VRING_ENABLE), as QEMU does for vhost-user.
public final class VhostNetDevice: VirtioDevice {
    public let rings: any VhostNetRings
    let mac: [UInt8]
    /// Receive/transmit pairs the back-end carries.
    public let maxPairs: Int
    let multiqueue: Bool
    /// Pairs the driver turned on (VQ_PAIRS_SET); 1 after reset.
    public private(set) var activePairs = 1
    weak var transport: VirtioTransport?
    /// Control commands answered VIRTIO_NET_ERR (tests, debugging).
    public private(set) var controlErrors = 0

    static let controlFeatures = VirtioNetFeature.controlQueue | VirtioNetFeature.controlMACAddress
    static let controlQueueSize: UInt16 = 64

    /// `multiqueue` false (`-device virtio-net-pci,mq=off`): the driver is not offered MQ.
    public init(rings: any VhostNetRings, mac: [UInt8], multiqueue: Bool = true) {
        precondition(mac.count == 6)
        self.rings = rings
        self.mac = mac
        maxPairs = max(1, rings.queueMaxSizes.count / 2)
        self.multiqueue = multiqueue && maxPairs > 1
    }

    var multiqueueNegotiated: Bool { (transport?.driverFeatures ?? 0) & VirtioNetFeature.multiqueue != 0 }
    /// Virtio 1.2 §5.1.2: 2N with VIRTIO_NET_F_MQ, else 2.
    var controlQueueIndex: Int { multiqueueNegotiated ? 2 * maxPairs : 2 }

    public var deviceType: UInt16 { rings.deviceType }
    /// The back-end's bits without the control-queue ones (it may not carry that queue), plus
    /// the ones this front-end answers (MQ with several pairs).
    public var deviceFeatures: UInt64 {
        (rings.deviceFeatures & ~VirtioNetFeature.controlQueueOnly) | Self.controlFeatures | (multiqueue ? VirtioNetFeature.multiqueue : 0)
    }
    public var transportFeatures: UInt64 { rings.transportFeatures }
    public var queueMaxSizes: [UInt16] { rings.queueMaxSizes + [Self.controlQueueSize] }
    public var pciClassCode: UInt32 { rings.pciClassCode }
    public var inflightRequests: Int { 0 }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { rings.readConfig(offset: offset, data: data) }
    /// Modern drivers change the address over the control queue; config writes are ignored (§5.1.4.2).
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ transport: VirtioTransport) {
        self.transport = transport
        activePairs = 1
        rings.setQueuePairs(usable: multiqueueNegotiated ? maxPairs : 1, active: 1)
        rings.activate(transport)
    }

    public func queueNotifyEventFD(_ index: Int) -> EventFD? {
        index < controlQueueIndex ? rings.queueNotifyEventFD(index) : nil
    }

    public func interruptRoutesChanged() { rings.interruptRoutesChanged() }
    public func setBackendPaused(_ paused: Bool) { rings.setBackendPaused(paused) }

    public func queueNotified(_ index: Int) {
        if index == controlQueueIndex { processControlQueue() } else if index < controlQueueIndex { rings.queueNotified(index) }
    }

    public func reset() {
        transport = nil
        activePairs = 1
        rings.reset()
        setConfigMAC(mac)
    }

    func setConfigMAC(_ m: [UInt8]) { rings.setStationAddress(m) }

    func processControlQueue() {
        guard let t = transport else { return }
        controlErrors += t.serveNetControlQueue(controlQueueIndex) { handleControl($0, $1, $2) }
    }

    /// VIRTIO_NET_OK or VIRTIO_NET_ERR for one command (§5.1.6.5), never a trap.
    func handleControl(_ cls: UInt8, _ command: UInt8, _ data: ArraySlice<UInt8>) -> UInt8 {
        typealias C = VirtioNetControlCommand
        switch (cls, command) {
        case (C.classMAC, C.macAddressSet):
            guard data.count == 6 else { return C.error }
            setConfigMAC(Array(data))
            return C.ok
        case (C.classMQ, C.mqPairsSet):
            // §5.1.6.5.5: virtqueue_pairs, 1 to max_virtqueue_pairs.
            guard multiqueueNegotiated, data.count == 2 else { return C.error }
            let n = Int(data[data.startIndex]) | Int(data[data.startIndex + 1]) << 8
            guard n >= 1, n <= maxPairs else { return C.error }
            activePairs = n
            rings.setQueuePairs(usable: maxPairs, active: n)
            return C.ok
        default:
            return C.error
        }
    }
}
