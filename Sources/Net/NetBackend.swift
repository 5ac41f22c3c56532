import Loop

/// The host side of one queue pair of a network device (QEMU's NetClientState peer): where the
/// NIC sends the guest's frames and from which it receives frames for the guest. A `-netdev`
/// opens one `NetBackend` per queue pair (`queues=`; tap multiqueue gives one fd each).
///
/// Frames in both directions are Ethernet frames, preceded by a `virtio_net_hdr_v1`
/// (virtio 1.2 §5.1.6, 12 bytes) exactly when `vnetHeaderLength` is non-zero: a tap opened
/// with IFF_VNET_HDR takes and gives checksum/GSO metadata that way; user and socket backends
/// carry plain frames and the NIC offers them no offloads.
///
/// Threading: a backend is attached to exactly one loop (the main loop or an iothread) and is
/// called on that loop's thread, or by a thread holding that loop's lock (the main loop's big
/// lock, which vCPU threads take for a trapped notify); it calls its receiver only on that loop.
public protocol NetBackend: AnyObject {
    /// 0, or 12 when every frame carries a virtio_net_hdr_v1 in front.
    var vnetHeaderLength: Int { get }
    /// Offloads the backend can accept from the guest (checksum, TSO4/6, ECN, UFO); empty for
    /// backends without a vnet header. The NIC offers the guest only these.
    var supportedOffloads: NetOffloads { get }
    /// What the guest negotiated (TUNSETOFFLOAD for tap); only a subset of `supportedOffloads`.
    func setOffloads(_ offloads: NetOffloads) throws
    /// Starts delivering frames to `receiver` on `loop`, and telling it when a blocked send
    /// may be retried.
    func attach(to loop: EventLoop, receiver: NetReceiver) throws
    /// Stops watching the host side (device reset or removal).
    func detach()
    /// Sends one frame gathered from `segments` (header first when `vnetHeaderLength` > 0).
    /// `.wouldBlock` means nothing was sent: the caller keeps the frame (and the rest of its
    /// queue) and retries after `receiver.backendWritable()`.
    func send(_ segments: UnsafeBufferPointer<NetSegment>) -> NetSendResult
    /// While false the backend does not poll its host side (the guest has no receive buffers),
    /// so frames wait in the host (tap queue, socket buffer, slirp) instead of being dropped.
    func setReceiveEnabled(_ enabled: Bool)
    /// Link state as the host sees it (tap carrier, connected socket peer).
    var isLinkUp: Bool { get }
}

/// The NIC side, called by its backend on the backend's loop.
public protocol NetReceiver: AnyObject {
    /// One frame for the guest (with the vnet header when the backend has one). Returns false
    /// when the NIC cannot take it now; the backend then keeps it, stops polling, and offers it
    /// again after `setReceiveEnabled(true)`.
    func receive(_ frame: UnsafeRawBufferPointer) -> Bool
    /// A send that returned `.wouldBlock` may be retried.
    func backendWritable()
    /// The backend's link went up or down (peer connected or gone).
    func linkChanged(up: Bool)
}

extension NetReceiver {
    public func linkChanged(up: Bool) {}
}

/// One contiguous piece of an outgoing frame (typically a descriptor's buffer in guest RAM).
public struct NetSegment {
    public var base: UnsafeRawPointer
    public var count: Int
    public init(base: UnsafeRawPointer, count: Int) { self.base = base; self.count = count }
}

public enum NetSendResult: Equatable {
    /// The frame was taken whole (or dropped by the backend as a real NIC's wire would).
    case sent
    /// Nothing was taken; retry after `NetReceiver.backendWritable()`.
    case wouldBlock
}

/// Offloads as tap's TUNSETOFFLOAD flags name them (linux/if_tun.h TUN_F_*).
public struct NetOffloads: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let checksum = NetOffloads(rawValue: 0x01)
    public static let tso4 = NetOffloads(rawValue: 0x02)
    public static let tso6 = NetOffloads(rawValue: 0x04)
    public static let tsoECN = NetOffloads(rawValue: 0x08)
    public static let ufo = NetOffloads(rawValue: 0x10)
}

/// A host-side error opening or configuring a backend, with a one-line message naming the bad value.
public struct NetBackendError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
