import Net

/// virtio-net's feature bits, status bits and header layout (virtio 1.2 §5.1.3, §5.1.4, §5.1.6).
public enum VirtioNetFeature {
    public static let checksum: UInt64 = 1 << 0          // CSUM: the driver may hand partial checksums
    public static let guestChecksum: UInt64 = 1 << 1     // GUEST_CSUM
    public static let mtu: UInt64 = 1 << 3
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    public static let guestUFO: UInt64 = 1 << 10
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    public static let hostUFO: UInt64 = 1 << 14
    public static let mergeableRxBuffers: UInt64 = 1 << 15
    public static let status: UInt64 = 1 << 16
    public static let controlQueue: UInt64 = 1 << 17
    public static let controlRx: UInt64 = 1 << 18
    public static let controlVLAN: UInt64 = 1 << 19
    public static let controlRxExtra: UInt64 = 1 << 20
    public static let guestAnnounce: UInt64 = 1 << 21
    public static let multiqueue: UInt64 = 1 << 22
    public static let controlMACAddress: UInt64 = 1 << 23
    /// What only the device answering the control queue can offer: a vhost back-end's rings never
    /// carry these (the front-end keeps that queue), the front-end decides them.
    public static let controlQueueOnly = controlQueue | controlRx | controlVLAN | controlRxExtra | guestAnnounce
        | multiqueue | controlMACAddress

    /// The device-side offloads a backend's capabilities allow, both directions: HOST_* (the
    /// backend takes the guest's partial checksums and GSO frames) and GUEST_* (it may hand such
    /// frames to the guest once told to with `setOffloads`). The §5.1.3.1 dependencies hold:
    /// TSO/UFO only with checksumming, ECN only with a TSO.
    static func offloadFeatures(_ o: NetOffloads) -> UInt64 {
        guard o.contains(.checksum) else { return 0 }
        var f = checksum | guestChecksum
        if o.contains(.tso4) { f |= hostTSO4 | guestTSO4 }
        if o.contains(.tso6) { f |= hostTSO6 | guestTSO6 }
        if o.contains(.tsoECN), o.contains(.tso4) || o.contains(.tso6) { f |= hostECN | guestECN }
        if o.contains(.ufo) { f |= hostUFO | guestUFO }
        return f
    }

    /// What the driver agreed to receive, as the backend's offload flags (TUNSETOFFLOAD).
    static func guestOffloads(_ features: UInt64) -> NetOffloads {
        guard features & guestChecksum != 0 else { return [] }
        var o: NetOffloads = .checksum
        if features & guestTSO4 != 0 { o.insert(.tso4) }
        if features & guestTSO6 != 0 { o.insert(.tso6) }
        if features & guestECN != 0 { o.insert(.tsoECN) }
        if features & guestUFO != 0 { o.insert(.ufo) }
        return o
    }
}

/// virtio_net_hdr_v1 (§5.1.6): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers. With VIRTIO_F_VERSION_1 it is always 12 bytes, num_buffers included.
enum VirtioNetHeader {
    static let length = 12
    static let flagsOffset = 0
    static let gsoTypeOffset = 1
    static let numBuffersOffset = 10
    static let flagNeedsChecksum: UInt8 = 1
    static let flagDataValid: UInt8 = 2
    static let gsoNone: UInt8 = 0
    static let gsoTCPv4: UInt8 = 1
    static let gsoUDP: UInt8 = 3
    static let gsoTCPv6: UInt8 = 4
    static let gsoECN: UInt8 = 0x80
    /// The largest frame after the header: a 64 KiB GSO packet with its Ethernet and VLAN header.
    static let maxFrameLength = 65535 + 14 + 4
}

/// Device configuration layout (§5.1.4) and its status bits.
public enum VirtioNetConfig {
    public static let macOffset = 0
    static let statusOffset = 6
    public static let maxPairsOffset = 8
    static let mtuOffset = 10
    public static let size = 12

    /// Writes `mac` into a config space's mac field, as far as the space reaches.
    static func setStationAddress(_ mac: [UInt8], in config: inout [UInt8]) {
        for (i, b) in mac.prefix(6).enumerated() where macOffset + i < config.count { config[macOffset + i] = b }
    }
    static let statusLinkUp: UInt16 = 1
    static let statusAnnounce: UInt16 = 2
}

/// Control queue classes, commands and acks (§5.1.6.5).
enum VirtioNetControlCommand {
    static let ok: UInt8 = 0
    static let error: UInt8 = 1
    static let classRx: UInt8 = 0
    static let rxPromisc: UInt8 = 0, rxAllMulti: UInt8 = 1, rxAllUni: UInt8 = 2
    static let rxNoMulti: UInt8 = 3, rxNoUni: UInt8 = 4, rxNoBroadcast: UInt8 = 5
    static let classMAC: UInt8 = 1
    static let macTableSet: UInt8 = 0, macAddressSet: UInt8 = 1
    static let classVLAN: UInt8 = 2
    static let classAnnounce: UInt8 = 3
    static let announceAck: UInt8 = 0
    static let classMQ: UInt8 = 4
    static let mqPairsSet: UInt8 = 0
    static let mqPairsMin = 1, mqPairsMax = 0x8000
}
