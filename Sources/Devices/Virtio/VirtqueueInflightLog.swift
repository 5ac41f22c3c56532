/// One queue's inflight I/O record in shared memory (vhost-user.rst "Inflight I/O tracking",
/// split rings): a 16-byte header (features u64, version u16, desc_num u16, last_batch_head u16,
/// used_idx u16) and one 16-byte state per descriptor (inflight u8, padding, next u16, counter
/// u64). A back-end marks a head when it takes it and clears it once it is on the used ring; a
/// restarted back-end takes the marked heads again, oldest first. The region outlives the
/// back-end (the front-end keeps its fd), so its contents are checked, never trusted.
public final class VirtqueueInflightLog {
    public static func regionSize(queueSize: UInt16) -> Int { (16 + 16 * Int(queueSize) + 63) & ~63 }

    let base: UnsafeMutableRawPointer
    public let queueSize: UInt16
    /// Heads found in flight at start, in the order they were first taken.
    public internal(set) var resubmit: [UInt16] = []
    var counter: UInt64 = 0

    /// `base` points at `regionSize(queueSize:)` bytes that stay mapped while this log is used.
    public init(base: UnsafeMutableRawPointer, queueSize: UInt16) {
        self.base = base
        self.queueSize = queueSize
    }

    var version: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 8, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 8, as: UInt16.self) }
    }
    var lastBatchHead: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 12, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 12, as: UInt16.self) }
    }
    var usedIndex: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 14, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 14, as: UInt16.self) }
    }
    func inflight(_ head: UInt16) -> Bool { base.load(fromByteOffset: 16 + 16 * Int(head), as: UInt8.self) == 1 }
    func setInflight(_ head: UInt16, _ v: Bool) { base.storeBytes(of: v ? 1 : 0, toByteOffset: 16 + 16 * Int(head), as: UInt8.self) }
    func counter(_ head: UInt16) -> UInt64 { base.loadUnaligned(fromByteOffset: 16 + 16 * Int(head) + 8, as: UInt64.self) }

    /// Reads what a previous back-end left for a ring whose used index is now `ringUsedIndex`;
    /// returns where taking from the available ring resumes (used index + heads in flight).
    public func recover(ringUsedIndex: UInt16) -> UInt16 {
        resubmit = []
        counter = 0
        if version != 1 || base.loadUnaligned(fromByteOffset: 10, as: UInt16.self) != queueSize {
            // Fresh (zeroed) or from another ring size: nothing to take over.
            base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.regionSize(queueSize: queueSize))
            version = 1
            base.storeBytes(of: queueSize, toByteOffset: 10, as: UInt16.self)
            usedIndex = ringUsedIndex
            return ringUsedIndex
        }
        // The back-end died between publishing a used entry and clearing its head.
        if usedIndex != ringUsedIndex {
            if lastBatchHead < queueSize { setInflight(lastBatchHead, false) }
            usedIndex = ringUsedIndex
        }
        var found: [(UInt64, UInt16)] = []
        for h in 0..<queueSize where inflight(h) { found.append((counter(h), h)) }
        found.sort { $0.0 < $1.0 }
        resubmit = found.map(\.1)
        counter = (found.last?.0 ?? 0) &+ 1
        return ringUsedIndex &+ UInt16(truncatingIfNeeded: found.count)
    }

    func taken(_ head: UInt16) {
        guard head < queueSize else { return }
        base.storeBytes(of: counter, toByteOffset: 16 + 16 * Int(head) + 8, as: UInt64.self)
        counter &+= 1
        setInflight(head, true)
    }

    func willPublish(_ head: UInt16) { lastBatchHead = head }

    func published(_ head: UInt16, usedIndex new: UInt16) {
        guard head < queueSize else { return }
        setInflight(head, false)
        usedIndex = new
    }
}
