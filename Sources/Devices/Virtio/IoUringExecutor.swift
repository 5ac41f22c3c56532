import Block
import CKeel
import Glibc
import Loop

/// aio=io_uring: a raw file's reads, writes, flushes, discards and write-zeroes go to the kernel
/// as io_uring operations straight on guest memory, submitted and reaped on the device's loop
/// (the main loop or its iothread); completions wake that loop through an eventfd registered
/// with io_uring_register_eventfd. Whatever the ring cannot take as it is (qcow2 and other
/// formats, unaligned O_DIRECT buffers that need a bounce, writethrough modes, short transfers,
/// a full ring) runs on the worker pool as with aio=threads.
public final class IoUringExecutor: VirtioRequestExecutor, @unchecked Sendable {
    struct Pending {
        let iovecs: UnsafeMutablePointer<iovec>?
        /// Bytes a read or write must transfer; nil for the others.
        let expected: Int?
        let kind: Kind
        let work: () -> UInt8
        let completion: (UInt8) -> Void
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
        guard let file = backend as? RawFileDevice, file.fd >= 0,
              let (op, iovecs, expected, kind) = Self.operation(request, file) else {
            return fallback.execute(work, completion: completion)
        }
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
        guard queued else {
            iovecs?.deallocate()
            return fallback.execute(work, completion: completion)
        }
        ringOperations &+= 1
        pending[token] = Pending(iovecs: iovecs, expected: expected, kind: kind, work: work, completion: completion)
    }

    public func submitQueued() {
        guard unsubmitted > 0 else { return }
        inRing.withLock { _ in submitLocked() }
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
            p.iovecs?.deallocate()
            switch p.kind {
            case .transfer:
                if result >= 0, let e = p.expected, Int(result) == e { p.completion(VirtioBlock.statusOK) }
                // Short transfers and interrupted ones are redone whole on the synchronous path.
                else if result >= 0 || result == -EAGAIN || result == -EINTR { fallback.execute(p.work, completion: p.completion) }
                else { p.completion(VirtioBlock.statusIOError) }
            case .flush:
                p.completion(result == 0 ? VirtioBlock.statusOK : VirtioBlock.statusIOError)
            case .discard:
                // Advisory: a file system that cannot punch holes keeps the data, which is allowed.
                p.completion(VirtioBlock.statusOK)
            case .writeZeroes:
                // Without fallocate's modes the synchronous path writes zeroes.
                if result == 0 { p.completion(VirtioBlock.statusOK) } else { fallback.execute(p.work, completion: p.completion) }
            }
        }
    }

    /// Returns once no operation touches guest memory any more (machine reset, before RAM is
    /// wiped). Completions the kernel posted may stay unreaped; the device's reset makes them
    /// no-ops when the loop gets to them.
    public func waitUntilIdle() {
        while inRing.withLock({ $0 > Int(ring.readyCompletions) }) { usleep(200) }
        fallback.waitUntilIdle()
    }
}
