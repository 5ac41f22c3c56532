import Loop
import Memory

/// One region of the memory table a vhost back-end is given (kernel `struct vhost_memory_region`,
/// vhost-user's SET_MEM_TABLE entry): a guest-physical range, where the front-end maps it, and
/// (vhost-user) its offset in the fd sent along.
public struct VhostMemoryRegion: Equatable, Sendable {
    public var guestAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64
    public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestAddress = guestAddress; self.size = size; self.userAddress = userAddress; self.mmapOffset = mmapOffset
    }

    /// Keel's RAM as a back-end sees it: one entry per guest RAM region (the PC's below- and
    /// above-4 GiB pieces are two), at the addresses Keel itself maps them.
    public static func regions(of memory: GuestMemory) -> [VhostMemoryRegion] {
        memory.regions.map {
            VhostMemoryRegion(guestAddress: $0.guestAddress, size: $0.size, userAddress: UInt64(UInt(bitPattern: $0.host)), mmapOffset: $0.fileOffset)
        }
    }
}

/// Where a back-end finds one ring (`vhost_vring_addr`): the host addresses of the descriptor
/// table and the used and available rings, in the front-end's address space; no logging.
public struct VhostVringAddress: Equatable, Sendable {
    public var index: UInt32
    public var flags: UInt32
    public var descriptor: UInt64
    public var used: UInt64
    public var available: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32 = 0, descriptor: UInt64, used: UInt64, available: UInt64, log: UInt64 = 0) {
        self.index = index; self.flags = flags; self.descriptor = descriptor; self.used = used; self.available = available; self.log = log
    }

    /// The guest's ring addresses (guest-chosen) translated through Keel's RAM: nil unless each
    /// whole structure of a `size`-entry split ring (virtio 1.2 §2.7) lies in one RAM region.
    public static func translate(index: UInt32, size: UInt16, descriptorTable: UInt64, driverArea: UInt64, deviceArea: UInt64,
                                 memory: GuestMemory) -> VhostVringAddress? {
        let n = UInt64(size)
        guard n > 0,
              let desc = memory.hostPointer(descriptorTable, length: 16 * n),
              let avail = memory.hostPointer(driverArea, length: 6 + 2 * n),
              let used = memory.hostPointer(deviceArea, length: 6 + 8 * n) else { return nil }
        return VhostVringAddress(index: index, descriptor: UInt64(UInt(bitPattern: desc)), used: UInt64(UInt(bitPattern: used)),
                                 available: UInt64(UInt(bitPattern: avail)))
    }
}

/// A config space kept as bytes (a vhost device's): reads past its end give zeros.
func readConfigBytes(_ config: [UInt8], offset: Int, into data: UnsafeMutableRawBufferPointer) {
    for i in 0..<data.count {
        let (o, overflow) = offset.addingReportingOverflow(i)
        data[i] = !overflow && o >= 0 && o < config.count ? config[o] : 0
    }
}

/// The per-ring requests every vhost back-end takes: a vhost-user connection or a vhost-kernel fd.
public protocol VhostRingBackend: AnyObject {
    associatedtype Failure: Error
    func setVringNum(_ index: UInt32, _ num: UInt32) throws(Failure)
    func setVringBase(_ index: UInt32, _ base: UInt32) throws(Failure)
    func setVringAddress(_ a: VhostVringAddress) throws(Failure)
    func setVringCall(_ index: UInt32, fd: Int32) throws(Failure)
    func setVringKick(_ index: UInt32, fd: Int32) throws(Failure)
    /// The eventfd the back-end signals when it finds the ring broken.
    func setVringError(_ index: UInt32, fd: Int32) throws(Failure)
    /// vhost-user's SET_VRING_ENABLE where negotiated; nothing for the kernel.
    func setVringEnabled(_ index: UInt32, _ enabled: Bool) throws(Failure)
    /// GET_VRING_BASE: stops the ring, returns the next available index it would read.
    func vringBase(_ index: UInt32) throws(Failure) -> UInt16
}

/// The rings of one device that a vhost back-end serves, and the eventfds between it and the
/// guest: a kick per ring (the notify register signals it: kvm's ioeventfd, or Keel under tcg)
/// and a call per ring (the vector's irqfd under kvm, else Keel's relay that raises the MSI-X
/// vector). Device queue `i` is ring `rings[i].index` of `rings[i].backend` (vhost-net's pairs
/// each have their own fd with rings 0 and 1). Runs on the loop that owns the device.
final class VhostRings<Backend: VhostRingBackend> {
    struct Ring {
        let backend: Backend
        let index: UInt32
    }
    let rings: [Ring]
    let loop: EventLoop
    let kicks: [EventFD]
    let calls: [EventFD]
    /// One per ring: the back-end signals it when the guest's ring is malformed.
    let errors: [EventFD]
    /// Called (on the loop) with the queue index each time a back-end reports a ring error.
    var errorReported: ((Int) -> Void)?
    var running: [Bool]
    /// The call fd each running ring was given: Keel's relay eventfd, or the vector's irqfd.
    var givenCalls: [Int32]
    /// Where each ring resumes: SET_VRING_BASE's value at the next start.
    var bases: [UInt16]
    /// Queues at or past this index are not the back-end's (virtio-net without MQ negotiated:
    /// queue 2 is the control queue).
    var handoverLimit = Int.max
    /// Rings at or past this index are handed over disabled (virtio-net pairs the driver has
    /// not turned on with VQ_PAIRS_SET).
    var enabledLimit = Int.max
    weak var transport: VirtioPCIDevice?

    init(rings: [Ring], loop: EventLoop) throws {
        self.rings = rings
        self.loop = loop
        kicks = try rings.map { _ in try EventFD() }
        calls = try rings.map { _ in try EventFD() }
        errors = try rings.map { _ in try EventFD() }
        running = Array(repeating: false, count: rings.count)
        givenCalls = Array(repeating: -1, count: rings.count)
        bases = Array(repeating: 0, count: rings.count)
        for (i, c) in calls.enumerated() {
            try loop.addReadable(fd: c.fd) { [unowned self, c] _ in
                c.consume()
                self.transport?.backendCalled(queue: i)
            }
        }
        for (i, e) in errors.enumerated() {
            try loop.addReadable(fd: e.fd) { [unowned self, e] _ in
                e.consume()
                self.errorReported?(i)
            }
        }
    }

    deinit {
        for c in calls { loop.remove(fd: c.fd) }
        for e in errors { loop.remove(fd: e.fd) }
    }

    var count: Int { rings.count }
    var anyRunning: Bool { running.contains(true) }

    /// Under kvm with the vector routed, the back-end signals the irqfd itself; otherwise Keel
    /// relays its call eventfd (and PCIMSIX keeps the pending bit of a masked vector).
    func callFD(queue i: Int) -> Int32 { transport?.interruptEventFD(queue: i)?.fd ?? calls[i].fd }

    func queueNotifyEventFD(_ index: Int) -> EventFD? { index >= 0 && index < kicks.count ? kicks[index] : nil }

    func notify(_ index: Int) {
        guard index >= 0, index < kicks.count else { return }
        kicks[index].signal()
    }

    /// Each ready ring among the first `count` queues: num, base, addresses, error, call, kick, enable.
    /// A ring whose structures are not in RAM is not handed over and the device needs a reset.
    func start(_ t: VirtioPCIDevice, memory: GuestMemory) throws(Backend.Failure) {
        for (i, q) in t.queues.enumerated() where q.isReady && i < rings.count && i < handoverLimit {
            let r = rings[i]
            guard let a = VhostVringAddress.translate(index: r.index, size: q.size, descriptorTable: q.descriptorTable,
                                                      driverArea: q.driverArea, deviceArea: q.deviceArea, memory: memory) else {
                t.deviceNeedsReset(.ringNotInRAM(q.descriptorTable))
                continue
            }
            try r.backend.setVringNum(r.index, UInt32(q.size))
            try r.backend.setVringBase(r.index, UInt32(bases[i]))
            try r.backend.setVringAddress(a)
            try r.backend.setVringError(r.index, fd: errors[i].fd)
            // The call fd first: a ring starts at its kick and may complete work at once.
            let call = callFD(queue: i)
            try r.backend.setVringCall(r.index, fd: call)
            givenCalls[i] = call
            try r.backend.setVringKick(r.index, fd: kicks[i].fd)
            try r.backend.setVringEnabled(r.index, i < enabledLimit)
            running[i] = true
        }
    }

    /// Enables the running rings below `limit` and disables the others.
    func setEnabledLimit(_ limit: Int) throws(Backend.Failure) {
        enabledLimit = limit
        for i in running.indices where running[i] {
            try rings[i].backend.setVringEnabled(rings[i].index, i < limit)
        }
    }

    /// The transport's irqfds changed: each running ring gets the call fd that now reaches its vector.
    func interruptRoutesChanged() throws(Backend.Failure) {
        for i in running.indices where running[i] {
            let call = callFD(queue: i)
            guard call != givenCalls[i] else { continue }
            try rings[i].backend.setVringCall(rings[i].index, fd: call)
            givenCalls[i] = call
            // An interrupt raised on the old fd in between is not lost, only maybe repeated.
            transport?.backendCalled(queue: i)
        }
    }

    /// GET_VRING_BASE on each running ring; its answer is where the ring resumes.
    func stop() throws(Backend.Failure) {
        for i in running.indices where running[i] {
            bases[i] = try rings[i].backend.vringBase(rings[i].index)
            running[i] = false
        }
    }

    /// Device reset: every ring starts again from index 0.
    func forget() {
        for i in running.indices { running[i] = false; bases[i] = 0 }
    }
}
