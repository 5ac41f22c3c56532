import Block
import CKeel
import Glibc
import Loop

/// aio=io_uring: a raw file's reads, writes, flushes, discards and write-zeroes go to the kernel
/// as io_uring operations straight on guest memory, submitted and reaped on the device's loop
/// (the main loop or its iothread); an operation that completes inside the submission is reaped
/// right after it, the others wake that loop through an eventfd registered with
/// io_uring_register_eventfd. A qcow2 read or write whose clusters are all allocated goes
/// the same way, one operation per contiguous host range. Whatever the ring cannot take as it
/// is (allocating qcow2 writes, compressed or backing-file clusters, unaligned O_DIRECT buffers that need a bounce, writethrough modes, short transfers,
/// a full ring) runs on the worker pool as with aio=threads.
public final class IoUringExecutor: VirtioRequestExecutor, @unchecked Sendable {
    /// One request: one ring operation, or (a qcow2 request over several host ranges) several.
    final class Group {
        var remaining = 0
        /// An operation failed outright: the request fails.
        var failed = false
        /// A short or interrupted transfer, or operations the ring could not take: the request
        /// is redone whole on the synchronous path once the queued ones are back.
        var redo = false
        var iovecs: UnsafeMutablePointer<iovec>?
        var direct: DirectMappedBlockDevice?
        let work: () -> UInt8
        let completion: (UInt8) -> Void
        init(work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) { self.work = work; self.completion = completion }
    }
    struct Pending {
        let group: Group
        /// Bytes a read or write must transfer; nil for the others.
        let expected: Int?
        let kind: Kind
    }
    enum Kind { case transfer, flush, discard, writeZeroes }

    static let ringEntries: UInt32 = 256
    /// Linux's UIO_MAXIOV.
    static let maxSegments = 1024

    let ring: IoUring
    let doorbell: EventFD
    let fallback: WorkerPoolExecutor
    /// Operations in the ring not reaped yet (the count `waitUntilIdle` compares with the
    /// completions the kernel posted); held while submitting and reaping.
    private let inRing = Mutex<Int>(0)
    private var pending: [UInt64: Pending] = [:]
    /// Reused by each mapped request (the loop's thread only).
    private var extents: [BlockHostExtent] = []
    private var scratch: [iovec] = []
    private var bounds: [(start: Int, count: Int, host: UInt64, length: Int)] = []
    private var nextToken: UInt64 = 1
    /// Operations that went through the ring (KEEL_DEBUG_VIRTIO, tests).
    public private(set) var ringOperations: UInt64 = 0
    /// io_uring_enter calls that submitted them.
    public private(set) var ringSubmissions: UInt64 = 0
    /// Operations prepared since the last submission (the device submits once per batch).
    private var unsubmitted = 0

    /// `register` adds the doorbell to `loop` on the loop's own thread (an iothread's loop is
    /// already running). Errors name aio=io_uring and the errno.
    public init(pool: WorkerPool, loop: EventLoop,
                register: (Int32, @escaping EventLoop.Handler) throws -> Void) throws {
        do {
            ring = try IoUring(entries: Self.ringEntries)
            doorbell = try EventFD()
            try ring.registerEventFD(doorbell.fd)
        } catch {
            throw IoUringUnavailable(reason: "\(error)")
        }
        fallback = WorkerPoolExecutor(pool: pool, loop: loop)
        try register(doorbell.fd) { [weak self] _ in self?.reapCompletions() }
        // A polling iothread reaps completions without waiting for the doorbell.
        loop.post { [weak self, unowned loop] in
            guard let self else { return }
            loop.addPoller(Poller(poll: { [weak self] in
                guard let self, self.ring.readyCompletions > 0 else { return false }
                self.reapCompletions()
                return true
            }))
        }
    }

    public struct IoUringUnavailable: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "aio=io_uring: \(reason)" }
    }

    public func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) {
        fallback.execute(work, completion: completion)
    }

    public func execute(_ request: BlockRequest, on backend: BlockDevice, work: @escaping () -> UInt8,
                        completion: @escaping (UInt8) -> Void) {
        let mapped = backend as? DirectMappedBlockDevice
        let dataFile = mapped?.dataFile ?? backend as? RawFileDevice
        // The ring copies page-cache hits inside io_uring_enter, but hands reads of files whose
        // file system has no RWF_NOWAIT (tmpfs) to its io-wq threads: copied here instead.
        if dataFile?.isInMemoryFileSystem == true, request.readIfCached(on: backend) {
            return completion(VirtioBlock.statusOK)
        }
        if let d = mapped {
            return executeMapped(request, d, work: work, completion: completion)
        }
        guard let file = dataFile, file.fd >= 0,
              let (op, iovecs, expected, kind) = Self.operation(request, file) else {
            return fallback.execute(work, completion: completion)
        }
        let group = Group(work: work, completion: completion)
        group.iovecs = iovecs
        if !queue(op, group, expected: expected, kind: kind) {
            iovecs?.deallocate()
            return fallback.execute(work, completion: completion)
        }
    }

    /// Puts one operation of `group` in the ring; false when the ring cannot take it.
    private func queue(_ op: IoUring.Operation, _ group: Group, expected: Int?, kind: Kind) -> Bool {
        let token = nextToken
        nextToken &+= 1
        let queued = inRing.withLock { n -> Bool in
            if !ring.prepare(op, token: token) {
                // A full submission queue: hand it over and try once more.
                submitLocked()
                guard ring.prepare(op, token: token) else { return false }
            }
            n += 1
            unsubmitted += 1
            return true
        }
        guard queued else { return false }
        ringOperations &+= 1
        group.remaining += 1
        pending[token] = Pending(group: group, expected: expected, kind: kind)
        return true
    }

    /// A qcow2 read or write whose clusters are all in place: one vectored operation per
    /// contiguous host range, straight on guest memory.
    private func executeMapped(_ request: BlockRequest, _ d: DirectMappedBlockDevice, work: @escaping () -> UInt8,
                               completion: @escaping (UInt8) -> Void) {
        let segments: [UnsafeMutableRawBufferPointer], offset: UInt64, isRead: Bool
        switch request {
        case .read(let s, let o): segments = s; offset = o; isRead = true
        case .write(let s, let o): segments = s; offset = o; isRead = false
        default: return fallback.execute(work, completion: completion)
        }
        let file = d.dataFile
        guard !segments.isEmpty, segments.count <= Self.maxSegments, file.fd >= 0, let total = totalLength(segments),
              d.beginDirectIO(offset: offset, length: total, isWrite: !isRead, into: &extents) else {
            return fallback.execute(work, completion: completion)
        }
        scratch.removeAll(keepingCapacity: true)
        bounds.removeAll(keepingCapacity: true)
        for e in extents {
            guard let h = e.hostOffset else { zeroSegments(segments, from: e.requestOffset, count: e.length); continue }
            let first = scratch.count
            appendIOVecs(segments, from: e.requestOffset, count: e.length, to: &scratch)
            bounds.append((first, scratch.count - first, h, e.length))
        }
        var aligned = true
        if file.cache.direct {
            for b in bounds where b.host % 4096 != 0 { aligned = false }
            for v in scratch where Int(bitPattern: v.iov_base) % 4096 != 0 || v.iov_len % 4096 != 0 { aligned = false }
        }
        guard aligned, bounds.allSatisfy({ $0.host <= UInt64(Int64.max) }) else {
            d.endDirectIO()
            return fallback.execute(work, completion: completion)
        }
        let group = Group(work: work, completion: completion)
        group.direct = d
        if !scratch.isEmpty {
            let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: scratch.count)
            for (i, v) in scratch.enumerated() { iovecs[i] = v }
            group.iovecs = iovecs
            for b in bounds {
                let op: IoUring.Operation = isRead
                    ? .readv(fd: file.fd, iovecs: iovecs + b.start, count: b.count, offset: b.host)
                    : .writev(fd: file.fd, iovecs: iovecs + b.start, count: b.count, offset: b.host)
                if !queue(op, group, expected: b.length, kind: .transfer) { group.redo = true; break }
            }
        }
        if group.remaining == 0 { finish(group) }
    }

    public var mergesSequentialRequests: Bool { true }

    /// Submits the batch, then completes whatever finished inside io_uring_enter right here
    /// (QEMU's io_uring does the same after its submission), so a page-cache hit completes
    /// before the guest runs on rather than after a trip through the loop. (The doorbell still
    /// rings for it; registering it for asynchronous completions only would miss completions
    /// posted by task work, which are not io-wq's.)
    public func submitQueued() {
        if unsubmitted > 0 { inRing.withLock { _ in submitLocked() } }
        if ring.readyCompletions > 0 { reapCompletions() }
    }

    /// With `inRing` held.
    private func submitLocked() {
        guard unsubmitted > 0 else { return }
        ring.submit()
        ringSubmissions &+= 1
        unsubmitted = 0
    }

    /// The ring operation for `request`, or nil when it must take the synchronous path.
    static func operation(_ request: BlockRequest, _ file: RawFileDevice)
        -> (IoUring.Operation, UnsafeMutablePointer<iovec>?, Int?, Kind)? {
        switch request {
        case .read(let segments, let offset), .write(let segments, let offset):
            let isRead: Bool
            if case .read = request { isRead = true } else { isRead = false }
            guard !segments.isEmpty, segments.count <= maxSegments, offset <= UInt64(Int64.max) else { return nil }
            if !isRead {
                // Writethrough modes sync each write; a probed raw image guards sector 0.
                guard !file.isReadOnly, !file.cache.syncEachWrite, !(file.guardsFormatProbe && offset == 0) else { return nil }
            }
            guard file.transfersDirectly(segments, at: offset) else { return nil }
            var total = 0
            for s in segments {
                let (t, o) = total.addingReportingOverflow(s.count)
                guard !o else { return nil }
                total = t
            }
            let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: segments.count)
            for (i, s) in segments.enumerated() { iovecs[i] = iovec(iov_base: s.baseAddress, iov_len: s.count) }
            let op: IoUring.Operation = isRead
                ? .readv(fd: file.fd, iovecs: iovecs, count: segments.count, offset: offset)
                : .writev(fd: file.fd, iovecs: iovecs, count: segments.count, offset: offset)
            return (op, iovecs, total, .transfer)
        case .flush:
            guard file.cache != .unsafe else { return nil }
            return (.fdatasync(fd: file.fd), nil, nil, .flush)
        case .discard(let offset, let length):
            guard !file.isBlockDevice, !file.isReadOnly, length > 0, offset <= UInt64(Int64.max),
                  length <= UInt64(Int64.max) - offset else { return nil }
            return (.fallocate(fd: file.fd, mode: CKEEL_FALLOC_PUNCH_HOLE, offset: offset, length: length), nil, nil, .discard)
        case .writeZeroes(let offset, let length, let mayUnmap):
            guard !file.isBlockDevice, !file.isReadOnly, length > 0, offset <= UInt64(Int64.max),
                  length <= UInt64(Int64.max) - offset else { return nil }
            let mode = mayUnmap ? CKEEL_FALLOC_PUNCH_HOLE : CKEEL_FALLOC_ZERO_RANGE
            return (.fallocate(fd: file.fd, mode: mode, offset: offset, length: length), nil, nil, .writeZeroes)
        }
    }

    /// On the loop: completes what the kernel finished.
    func reapCompletions() {
        doorbell.consume()
        var done: [(UInt64, Int32)] = []
        inRing.withLock { n in
            n -= ring.reap { done.append(($0, $1)) }
        }
        for (token, result) in done {
            guard let p = pending.removeValue(forKey: token) else { continue }
            let g = p.group
            g.remaining -= 1
            switch p.kind {
            case .transfer:
                if result >= 0, let e = p.expected, Int(result) == e {}
                // Short transfers and interrupted ones are redone whole on the synchronous path.
                else if result >= 0 || result == -EAGAIN || result == -EINTR { g.redo = true }
                else { g.failed = true }
            case .flush:
                if result != 0 { g.failed = true }
            case .discard:
                // Advisory: a file system that cannot punch holes keeps the data, which is allowed.
                break
            case .writeZeroes:
                // Without fallocate's modes the synchronous path writes zeroes.
                if result != 0 { g.redo = true }
            }
            if g.remaining == 0 { finish(g) }
        }
    }

    /// Every operation of `g` is back.
    private func finish(_ g: Group) {
        g.iovecs?.deallocate()
        g.iovecs = nil
        g.direct?.endDirectIO()
        if g.failed { g.completion(VirtioBlock.statusIOError) }
        else if g.redo { fallback.execute(g.work, completion: g.completion) }
        else { g.completion(VirtioBlock.statusOK) }
    }

    /// Returns once no operation touches guest memory any more (machine reset, before RAM is
    /// wiped). Completions the kernel posted may stay unreaped; the device's reset makes them
    /// no-ops when the loop gets to them.
    public func waitUntilIdle() {
        while inRing.withLock({ $0 > Int(ring.readyCompletions) }) { usleep(200) }
        fallback.waitUntilIdle()
    }
}
