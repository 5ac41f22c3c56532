import Memory

/// The receive filter the driver sets over the control queue (§5.1.6.5.1, §5.1.6.5.2), applied
/// to frames for the guest as QEMU's receive_filter does. After reset: promiscuous.
public struct VirtioNetRxFilter: Equatable, Sendable {
    /// Table entries kept per kind; a longer list means "accept that whole kind" (QEMU's 64).
    public static let tableEntries = 64
    public var promiscuous = true
    public var allMulticast = false
    public var allUnicast = false
    public var noMulticast = false
    public var noUnicast = false
    public var noBroadcast = false
    public var unicast: [[UInt8]] = []
    public var multicast: [[UInt8]] = []
    public var unicastOverflow = false
    public var multicastOverflow = false

    public init() {}

    public func accepts(_ frame: UnsafeRawBufferPointer, mac: [UInt8]) -> Bool {
        if promiscuous { return true }
        guard frame.count >= 14 else { return false }
        let destination = Array(frame[0..<6])
        if destination.allSatisfy({ $0 == 0xFF }) { return !noBroadcast }
        if destination[0] & 1 != 0 {
            if noMulticast { return false }
            return allMulticast || multicastOverflow || multicast.contains(destination)
        }
        if noUnicast { return false }
        return allUnicast || unicastOverflow || destination == mac || unicast.contains(destination)
    }
}

extension VirtioTransport {
    /// Serves virtio-net control queue `index` (§5.1.6.5) for a device's `apply`: each command's
    /// class, command and data read whole (commands over 4096 bytes, a full MAC table being ~800,
    /// are refused unread), the ack written as the first device-writable byte (struct
    /// virtio_net_ctrl's last field). Returns how many commands were answered VIRTIO_NET_ERR.
    func serveNetControlQueue(_ index: Int, _ apply: (UInt8, UInt8, ArraySlice<UInt8>) -> UInt8) -> Int {
        typealias C = VirtioNetControlCommand
        var errors = 0
        processQueue(index) { chain in
            var ack = C.error
            let length = chain.readableLength
            if length >= 2, length <= 4096, chain.writableLength >= 1 {
                var cursor = ChainCursor(memory: memory, buffers: chain.readable)
                if let bytes = cursor.read(Int(length)), bytes.count == Int(length) { ack = apply(bytes[0], bytes[1], bytes[2...]) }
            }
            var cursor = ChainCursor(memory: memory, buffers: chain.writable)
            let written = cursor.write([ack])
            if ack != C.ok { errors += 1 }
            complete(queue: index, head: chain.head, length: UInt32(written))
        }
        return errors
    }
}

extension VirtioNet {
    func processControlQueue() {
        guard let t = transport else { return }
        controlErrors += t.serveNetControlQueue(controlQueueIndex) { handleControl($0, $1, $2) }
    }

    /// Applies one command; VIRTIO_NET_OK or VIRTIO_NET_ERR, never a trap.
    func handleControl(_ cls: UInt8, _ command: UInt8, _ data: ArraySlice<UInt8>) -> UInt8 {
        typealias C = VirtioNetControlCommand
        switch (cls, command) {
        case (C.classRx, let command):
            guard negotiated(VirtioNetFeature.controlRx), data.count == 1, let value = data.first, value <= 1 else { return C.error }
            let on = value == 1
            if command > C.rxAllMulti && !negotiated(VirtioNetFeature.controlRxExtra) { return C.error }
            switch command {
            case C.rxPromisc: filter.promiscuous = on
            case C.rxAllMulti: filter.allMulticast = on
            case C.rxAllUni: filter.allUnicast = on
            case C.rxNoMulti: filter.noMulticast = on
            case C.rxNoUni: filter.noUnicast = on
            case C.rxNoBroadcast: filter.noBroadcast = on
            default: return C.error
            }
            return C.ok
        case (C.classMAC, C.macAddressSet):
            guard negotiated(VirtioNetFeature.controlMACAddress), data.count == 6 else { return C.error }
            mac = Array(data)
            return C.ok
        case (C.classMAC, C.macTableSet):
            guard negotiated(VirtioNetFeature.controlRx) else { return C.error }
            var rest = data
            guard let (uni, uniOverflow) = Self.macTable(&rest), let (multi, multiOverflow) = Self.macTable(&rest),
                  rest.isEmpty else { return C.error }
            filter.unicast = uni; filter.unicastOverflow = uniOverflow
            filter.multicast = multi; filter.multicastOverflow = multiOverflow
            return C.ok
        case (C.classAnnounce, C.announceAck):
            guard negotiated(VirtioNetFeature.guestAnnounce), data.isEmpty else { return C.error }
            announcePending = false
            return C.ok
        case (C.classMQ, C.mqPairsSet):
            guard negotiated(VirtioNetFeature.multiqueue), data.count == 2 else { return C.error }
            let n = Int(data[data.startIndex]) | Int(data[data.startIndex + 1]) << 8
            guard n >= C.mqPairsMin, n <= maxPairs else { return C.error }
            activePairs = n
            // Frames routed to another pair while this one was idle may now come here.
            for p in pairs { p.receiveBuffersPosted() }
            return C.ok
        default:
            return C.error
        }
    }

    /// One virtio_net_ctrl_mac (le32 entries, then 6 bytes each) from the front of `data`; nil
    /// if it runs past the end. More than `tableEntries` entries: overflow, none kept.
    static func macTable(_ data: inout ArraySlice<UInt8>) -> (entries: [[UInt8]], overflow: Bool)? {
        guard data.count >= 4 else { return nil }
        let s = data.startIndex
        let n = UInt64(data[s]) | UInt64(data[s + 1]) << 8 | UInt64(data[s + 2]) << 16 | UInt64(data[s + 3]) << 24
        let bytes = n * 6
        guard bytes <= UInt64(data.count - 4) else { return nil }
        let body = data[(s + 4)..<(s + 4 + Int(bytes))]
        data = data[(s + 4 + Int(bytes))...]
        guard n <= UInt64(VirtioNetRxFilter.tableEntries) else { return ([], true) }
        var out: [[UInt8]] = []
        var i = body.startIndex
        while i < body.endIndex { out.append(Array(body[i..<(i + 6)])); i += 6 }
        return (out, false)
    }
}
