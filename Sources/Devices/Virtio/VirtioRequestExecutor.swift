import Loop

/// Where a device's blocking work runs: a worker pool with the completion posted back to the
/// device's loop, or (in tests, and for work that cannot block) right away.
public protocol VirtioRequestExecutor: AnyObject {
    func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void)
}

/// Runs the work on a `WorkerPool` thread; `completion` runs on `loop` (the device's owner).
public final class WorkerPoolExecutor: VirtioRequestExecutor {
    let pool: WorkerPool
    let loop: EventLoop
    public init(pool: WorkerPool, loop: EventLoop) { self.pool = pool; self.loop = loop }
    public func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) {
        pool.submit(on: loop, work, completion: completion)
    }
}

/// Runs the work and its completion at once, on the caller's thread.
public final class InlineExecutor: VirtioRequestExecutor {
    public init() {}
    public func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) { completion(work()) }
}
