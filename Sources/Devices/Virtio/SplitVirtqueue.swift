import Memory
import Synchronization

/// A split virtqueue (virtio 1.2 §2.7) as the device side sees it: the descriptor table, the
/// driver ("available") ring and the device ("used") ring in guest memory, all untrusted.
/// Every index and address is checked; a chain walk is bounded by the table size, so a loop
/// the driver makes ends as an error, never as a hang. Not thread-safe: one loop owns a queue.
public final class SplitVirtqueue {
    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4
    static let availNoInterrupt: UInt16 = 1
    static let usedNoNotify: UInt16 = 1
    /// The longest chain accepted through an indirect table (QEMU's VIRTQUEUE_MAX_SIZE).
    public static let maxIndirectDescriptors = 1024

    public let maxSize: UInt16
    public var size: UInt16
    public var isReady = false
    public var descriptorTable: UInt64 = 0
    public var driverArea: UInt64 = 0
    public var deviceArea: UInt64 = 0
    public var msixVector: UInt16 = 0xFFFF
    /// Negotiated VIRTIO_F_RING_EVENT_IDX / VIRTIO_F_INDIRECT_DESC.
    public var eventIndex = false
    public var indirectDescriptors = false

    /// The owning loop is polling this queue with the driver's notifications suppressed: a
    /// drain leaves them suppressed (the loop re-enables them before it sleeps).
    public var notificationsPolled = false
    /// vhost-user's inflight record, when a back-end keeps one (nil inside Keel).
    public var inflightLog: VirtqueueInflightLog?
    public private(set) var nextAvail: UInt16 = 0
    public private(set) var nextUsed: UInt16 = 0
    private var signalledUsed: UInt16 = 0
    private var signalledUsedValid = false

    public init(maxSize: UInt16) {
        precondition(maxSize > 0 && maxSize.nonzeroBitCount == 1)
        self.maxSize = maxSize
        size = maxSize
    }

    /// Back to the state after a device reset (§2.4).
    public func reset() {
        size = maxSize
        isReady = false
        descriptorTable = 0; driverArea = 0; deviceArea = 0
        msixVector = 0xFFFF
        eventIndex = false; indirectDescriptors = false
        notificationsPolled = false
        nextAvail = 0; nextUsed = 0
        signalledUsed = 0; signalledUsedValid = false
        inflightLog = nil
    }

    /// Resumes a queue that another process ran or will run (vhost-user SET_VRING_BASE, a
    /// back-end reconnecting): the next available entry to take and where the used ring stands.
    public func restore(nextAvail: UInt16, nextUsed: UInt16) {
        self.nextAvail = nextAvail
        self.nextUsed = nextUsed
        signalledUsedValid = false
    }

    /// The used ring's index as the driver sees it in memory.
    public func usedIndex(_ memory: GuestMemory) throws(VirtqueueError) -> UInt16 {
        try load16(memory, deviceArea + 2)
    }

    /// A queue size the driver may choose: a power of two no larger than the device's maximum.
    public func isAcceptableSize(_ s: UInt16) -> Bool { s > 0 && s <= maxSize && s.nonzeroBitCount == 1 }

    var availRingBytes: UInt64 { 6 + 2 * UInt64(size) }
    var usedRingBytes: UInt64 { 6 + 8 * UInt64(size) }

    /// Checks that the three areas lie in RAM and are aligned (§2.7 table: 16, 2, 4); call when
    /// the driver enables the queue or sets DRIVER_OK.
    public func validate(_ memory: GuestMemory) throws(VirtqueueError) {
        for (a, length, align) in [(descriptorTable, 16 * UInt64(size), UInt64(16)), (driverArea, availRingBytes, 2), (deviceArea, usedRingBytes, 4)] {
            guard a % align == 0 else { throw .misalignedRing(a) }
            guard memory.hostPointer(a, length: length) != nil else { throw .ringNotInRAM(a) }
        }
    }

    @inline(__always)
    private func load16(_ memory: GuestMemory, _ address: UInt64) throws(VirtqueueError) -> UInt16 {
        // One 16-bit load: the driver updates the index meanwhile (§2.7.13, §2.7.14).
        guard let p = memory.hostPointer(address, length: 2) else { throw .ringNotInRAM(address) }
        return UInt16(littleEndian: p.loadUnaligned(as: UInt16.self))
    }

    @inline(__always)
    private func store16(_ memory: GuestMemory, _ value: UInt16, _ address: UInt64) throws(VirtqueueError) {
        guard let p = memory.hostPointer(address, length: 2) else { throw .ringNotInRAM(address) }
        p.storeBytes(of: value.littleEndian, as: UInt16.self)
    }

    /// Whether the driver has made chains the device has not taken (a poller's look).
    public func hasAvailable(_ memory: GuestMemory) -> Bool {
        guard isReady, let idx = try? availIndex(memory) else { return false }
        return idx != nextAvail
    }

    /// The driver's available index.
    public func availIndex(_ memory: GuestMemory) throws(VirtqueueError) -> UInt16 {
        try load16(memory, driverArea + 2)
    }

    /// Takes the next available chain, or nil when the driver has made none.
    public func pop(_ memory: GuestMemory) throws(VirtqueueError) -> DescriptorChain? {
        if let log = inflightLog, !log.resubmit.isEmpty {
            // Chains a previous back-end took and never finished come first, oldest first.
            let head = log.resubmit.removeFirst()
            guard head < size else { throw .headOutOfRange(head) }
            return DescriptorChain(head: head, buffers: try walk(memory, head: head))
        }
        let idx = try availIndex(memory)
        let outstanding = idx &- nextAvail
        guard outstanding <= size else { throw .availIndexJumped(from: nextAvail, to: idx) }
        guard outstanding > 0 else { return nil }
        // The ring entry and the descriptors are read only after the index (§2.7.13).
        atomicMemoryFence(ordering: .acquiring)
        let head = try load16(memory, driverArea + 4 + 2 * UInt64(nextAvail % size))
        nextAvail &+= 1
        guard head < size else { throw .headOutOfRange(head) }
        let chain = DescriptorChain(head: head, buffers: try walk(memory, head: head))
        inflightLog?.taken(head)
        return chain
    }

    private func walk(_ memory: GuestMemory, head: UInt16) throws(VirtqueueError) -> [VirtqueueBuffer] {
        var buffers: [VirtqueueBuffer] = []
        var table = descriptorTable, tableCount = UInt32(size)
        var index = UInt32(head)
        var steps: UInt32 = 0
        var inIndirect = false
        var sawWritable = false
        while true {
            guard index < tableCount else { throw .descriptorOutOfRange(UInt16(truncatingIfNeeded: index)) }
            steps += 1
            guard steps <= tableCount else { throw .chainTooLong }
            let at = table + 16 * UInt64(index)
            guard let p = memory.hostPointer(at, length: 16) else { throw .ringNotInRAM(at) }
            let address = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            let length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            if flags & Self.descriptorIndirect != 0 {
                guard indirectDescriptors else { throw .indirectNotNegotiated }
                guard !inIndirect else { throw .nestedIndirect }
                guard flags & Self.descriptorNext == 0, buffers.isEmpty else { throw .indirectWithNext }
                guard length >= 16, length % 16 == 0, length / 16 <= UInt32(Self.maxIndirectDescriptors) else {
                    throw .badIndirectLength(length)
                }
                guard memory.hostPointer(address, length: UInt64(length)) != nil else {
                    throw .bufferNotInRAM(address: address, length: length)
                }
                table = address; tableCount = length / 16
                index = 0; steps = 0
                inIndirect = true
                continue
            }
            guard memory.hostPointer(address, length: UInt64(length)) != nil else {
                throw .bufferNotInRAM(address: address, length: length)
            }
            let writable = flags & Self.descriptorWrite != 0
            if writable { sawWritable = true } else if sawWritable { throw .readableAfterWritable }
            buffers.append(VirtqueueBuffer(address: address, length: length, isDeviceWritable: writable))
            guard flags & Self.descriptorNext != 0 else { return buffers }
            index = UInt32(next)
        }
    }

    /// Returns a chain to the driver with `length` bytes written into its buffers.
    public func pushUsed(_ memory: GuestMemory, head: UInt16, length: UInt32) throws(VirtqueueError) {
        let slot = deviceArea + 4 + 8 * UInt64(nextUsed % size)
        guard let p = memory.hostPointer(slot, length: 8) else { throw .ringNotInRAM(slot) }
        inflightLog?.willPublish(head)
        p.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        p.storeBytes(of: length.littleEndian, toByteOffset: 4, as: UInt32.self)
        nextUsed &+= 1
        // The element is visible before the index that publishes it (§2.7.14).
        atomicMemoryFence(ordering: .releasing)
        try store16(memory, nextUsed, deviceArea + 2)
        inflightLog?.published(head, usedIndex: nextUsed)
    }

    /// Returns several chains at once, published by a single used-index store, so the driver
    /// never sees part of a group (a mergeable receive frame spread over several chains, §5.1.6.4).
    public func pushUsed(_ memory: GuestMemory, elements: [(head: UInt16, length: UInt32)]) throws(VirtqueueError) {
        guard !elements.isEmpty else { return }
        var index = nextUsed
        for e in elements {
            let slot = deviceArea + 4 + 8 * UInt64(index % size)
            guard let p = memory.hostPointer(slot, length: 8) else { throw .ringNotInRAM(slot) }
            p.storeBytes(of: UInt32(e.head).littleEndian, as: UInt32.self)
            p.storeBytes(of: e.length.littleEndian, toByteOffset: 4, as: UInt32.self)
            index &+= 1
        }
        nextUsed = index
        atomicMemoryFence(ordering: .releasing)
        try store16(memory, nextUsed, deviceArea + 2)
    }

    /// Whether the driver wants an interrupt for the used entries added since the last one
    /// (used_event with VIRTIO_F_RING_EVENT_IDX, else the NO_INTERRUPT flag; §2.7.7).
    public func needsInterrupt(_ memory: GuestMemory) throws(VirtqueueError) -> Bool {
        // Our used index store must be visible before we read what the driver asked for.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard eventIndex else {
            return try load16(memory, driverArea) & Self.availNoInterrupt == 0
        }
        let usedEvent = try load16(memory, driverArea + 4 + 2 * UInt64(size))
        let old = signalledUsed, new = nextUsed, valid = signalledUsedValid
        signalledUsed = new
        signalledUsedValid = true
        return !valid || Self.needEvent(usedEvent, new: new, old: old)
    }

    /// vring_need_event: did the index pass `event` going from `old` to `new`? (wrapping)
    public static func needEvent(_ event: UInt16, new: UInt16, old: UInt16) -> Bool {
        (new &- event &- 1) < (new &- old)
    }

    /// Asks the driver to notify (or not) for new available chains: avail_event with
    /// VIRTIO_F_RING_EVENT_IDX, else the used ring's NO_NOTIFY flag (§2.7.10). Returns true when
    /// chains arrived meanwhile, so the caller processes again instead of sleeping on them.
    @discardableResult
    public func setNotification(_ memory: GuestMemory, enabled: Bool) throws(VirtqueueError) -> Bool {
        if eventIndex {
            guard enabled else { return false }
            try store16(memory, nextAvail, deviceArea + 4 + 8 * UInt64(size))
        } else {
            try store16(memory, enabled ? 0 : Self.usedNoNotify, deviceArea)
        }
        guard enabled else { return false }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try availIndex(memory) != nextAvail
    }
}
