import Loop
import Memory

/// The half of a vhost net device that carries the receive/transmit rings: a vhost-user
/// back-end (`VhostUserDevice`) or Linux's vhost-net (`VhostKernelDevice`). Its config space
/// is virtio-net's (§5.1.4), the station address included.
public protocol VhostNetRings: VirtioDevice {
    /// Writes `mac` into the config space's mac field.
    func setStationAddress(_ mac: [UInt8])
}

/// virtio-net-pci over `-netdev vhost-user` or `-netdev tap,vhost=on`: the receive/transmit
/// rings go to the back-end, while the control queue stays here, as QEMU keeps it in the
/// front-end when the back-end does not carry it. The station address lives in this config
/// space: `mac=` at creation, VIRTIO_NET_CTRL_MAC_ADDR_SET afterwards. The back-end's own
/// receive filter stays promiscuous, so only address changes are offered over this queue.
public final class VhostNetDevice: VirtioDevice {
    public let rings: any VhostNetRings
    let mac: [UInt8]
    weak var transport: VirtioTransport?
    /// Control commands answered VIRTIO_NET_ERR (tests, debugging).
    public private(set) var controlErrors = 0

    static let controlFeatures = VirtioNetFeature.controlQueue | VirtioNetFeature.controlMACAddress
    static let controlQueueSize: UInt16 = 64

    public init(rings: any VhostNetRings, mac: [UInt8]) {
        precondition(mac.count == 6)
        self.rings = rings
        self.mac = mac
    }

    var controlQueueIndex: Int { rings.queueMaxSizes.count }

    public var deviceType: UInt16 { rings.deviceType }
    /// The back-end's bits without the control-queue ones (it may not carry that queue), plus
    /// the ones this front-end answers; MQ would need VQ_PAIRS_SET relayed, so it is not offered.
    public var deviceFeatures: UInt64 {
        let backendOnly = VirtioNetFeature.controlQueue | VirtioNetFeature.controlRx | VirtioNetFeature.controlVLAN
            | VirtioNetFeature.controlRxExtra | VirtioNetFeature.guestAnnounce | VirtioNetFeature.multiqueue
            | VirtioNetFeature.controlMACAddress
        return (rings.deviceFeatures & ~backendOnly) | Self.controlFeatures
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
        rings.activate(transport)
    }

    public func queueNotifyEventFD(_ index: Int) -> EventFD? {
        index < controlQueueIndex ? rings.queueNotifyEventFD(index) : nil
    }

    public func interruptRoutesChanged() { rings.interruptRoutesChanged() }

    public func queueNotified(_ index: Int) {
        if index == controlQueueIndex { processControlQueue() } else { rings.queueNotified(index) }
    }

    public func reset() {
        transport = nil
        rings.reset()
        setConfigMAC(mac)
    }

    func setConfigMAC(_ m: [UInt8]) { rings.setStationAddress(m) }

    func processControlQueue() {
        guard let t = transport else { return }
        let index = controlQueueIndex
        t.processQueue(index) { chain in
            let ack = handleControl(chain, t.memory)
            var cursor = ChainCursor(memory: t.memory, buffers: chain.writable)
            let written = cursor.write([ack])
            if ack != VirtioNetControlCommand.ok { controlErrors += 1 }
            t.complete(queue: index, head: chain.head, length: UInt32(written))
        }
    }

    /// VIRTIO_NET_OK or VIRTIO_NET_ERR for one command (§5.1.6.5), never a trap.
    func handleControl(_ chain: DescriptorChain, _ memory: GuestMemory) -> UInt8 {
        typealias C = VirtioNetControlCommand
        let length = chain.readableLength
        guard length >= 2, length <= 4096, chain.writableLength >= 1 else { return C.error }
        var cursor = ChainCursor(memory: memory, buffers: chain.readable)
        guard let bytes = cursor.read(Int(length)), bytes.count == Int(length) else { return C.error }
        guard bytes[0] == C.classMAC, bytes[1] == C.macAddressSet, bytes.count == 8 else { return C.error }
        setConfigMAC(Array(bytes[2...]))
        return C.ok
    }
}
