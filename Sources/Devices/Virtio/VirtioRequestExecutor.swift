import Block
import Glibc
import Loop
import Synchronization


/// Where a device's blocking work runs: a worker pool with the completion posted back to the
/// device's loop, io_uring, or (in tests, and for work that cannot block) right away.
public protocol VirtioRequestExecutor: AnyObject {
    func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void)
    /// A block request described as data, for executors that issue the I/O themselves
    /// (io_uring) or complete a read whose data is at hand on the spot (`readIfCached`); `work`
    /// does the same synchronously and is what runs otherwise. `completion` gets a virtio-blk
    /// status.
    func execute(_ request: BlockRequest, on backend: BlockDevice, work: @escaping () -> UInt8,
                 completion: @escaping (UInt8) -> Void)
    /// The device took every chain it had: hand what was queued to the kernel (one io_uring
    /// submission for a batch of requests).
    func submitQueued()
    /// Whether a device should merge sequential requests into one transfer before handing them
    /// over: worth it where each request costs a ring operation and a completion (io_uring);
    /// not on the worker pool, where separate requests copy page-cache data on several threads
    /// at once (measured: merged 32 MiB reads on one thread ran at about half the rate).
    var mergesSequentialRequests: Bool { get }
}

extension VirtioRequestExecutor {
    public func execute(_ request: BlockRequest, on backend: BlockDevice, work: @escaping () -> UInt8,
                        completion: @escaping (UInt8) -> Void) {
        execute(work, completion: completion)
    }

    public func submitQueued() {}
    public var mergesSequentialRequests: Bool { false }
}

/// One virtio-blk data request, already checked against the disk: guest buffers in order and
/// the byte offset on the backend.
public enum BlockRequest {
    case read(segments: [UnsafeMutableRawBufferPointer], offset: UInt64)
    case write(segments: [UnsafeMutableRawBufferPointer], offset: UInt64)
    case flush
    case discard(offset: UInt64, length: UInt64)
    case writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool)
}

extension BlockRequest {
    /// A cached read up to this size is copied on the submitting thread: a worker's wake-up and
    /// the completion's trip back cost more than the copy (measured: guest dd 1 MiB reads
    /// +20-40%, random 4 KiB reads 2x). Larger ones are spread over the workers, and keep a loop
    /// (or a vCPU under the big lock) from copying for long.
    static let maxInlineRead = 2 << 20

    /// Does a read here and now if the backend has its data at hand
    /// (`BlockDevice.readVectoredIfCached`); false for anything else, which is then issued as usual.
    func readIfCached(on backend: BlockDevice) -> Bool {
        guard case .read(let segments, let offset) = self, let total = totalLength(segments),
              total <= Self.maxInlineRead else { return false }
        return backend.readVectoredIfCached(into: segments, at: offset)
    }
}

/// Runs the work on a `WorkerPool` thread; `completion` runs on `loop` (the device's owner).
/// A read whose data is already in memory is done and completed on the submitting thread.
public final class WorkerPoolExecutor: VirtioRequestExecutor, @unchecked Sendable {
    let pool: WorkerPool
    let loop: EventLoop
    /// Jobs whose work (which reads and writes guest memory) has not finished yet.
    private let running = Atomic<Int>(0)
    /// Reads that completed on the submitting thread (tests).
    public var readsCompletedInline: UInt64 { inlineReads.load(ordering: .relaxed) }
    private let inlineReads = Atomic<UInt64>(0)
    public init(pool: WorkerPool, loop: EventLoop) { self.pool = pool; self.loop = loop }

    public func execute(_ request: BlockRequest, on backend: BlockDevice, work: @escaping () -> UInt8,
                        completion: @escaping (UInt8) -> Void) {
        if request.readIfCached(on: backend) {
            inlineReads.add(1, ordering: .relaxed)
            return completion(VirtioBlock.statusOK)
        }
        execute(work, completion: completion)
    }

    public func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) {
        running.add(1, ordering: .sequentiallyConsistent)
        pool.submit(on: loop, { [self] in
            let status = work()
            running.subtract(1, ordering: .sequentiallyConsistent)
            return status
        }, completion: completion)
    }

    /// Returns once no job touches guest memory any more (machine reset: before RAM is wiped).
    /// Completions may still be queued on the loop; the device's reset makes them no-ops.
    public func waitUntilIdle() {
        while running.load(ordering: .sequentiallyConsistent) > 0 { usleep(200) }
    }
}

/// Runs the work and its completion at once, on the caller's thread.
public final class InlineExecutor: VirtioRequestExecutor {
    public init() {}
    public func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) { completion(work()) }
}
