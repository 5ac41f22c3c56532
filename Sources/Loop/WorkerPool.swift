import Glibc

/// Threads for blocking or CPU-heavy work (preadv/pwritev/fsync, image conversion). A job's
/// completion is posted back to the loop that submitted it, as a bottom half, so completions
/// run where the device lives (under the big lock for the main loop).
public final class WorkerPool: @unchecked Sendable {
    private struct Job { let work: () -> Any; let completion: (Any) -> Void; let loop: EventLoop }

    private let queue = Mutex<[Job]>([])
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private let condMutex: UnsafeMutablePointer<pthread_mutex_t>
    private var threads: [pthread_t] = []
    private var shuttingDown = false

    public init(threads count: Int) {
        cond = .allocate(capacity: 1)
        condMutex = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
        pthread_mutex_init(condMutex, nil)
        for _ in 0..<max(1, count) {
            var t = pthread_t()
            let box = Unmanaged.passRetained(self).toOpaque()
            pthread_create(&t, nil, { arg in
                let pool = Unmanaged<WorkerPool>.fromOpaque(arg!).takeRetainedValue()
                pool.workerMain()
                return nil
            }, box)
            threads.append(t)
        }
    }

    /// Runs `work` on a worker thread, then `completion(result)` on `loop`.
    public func submit<T>(on loop: EventLoop, _ work: @escaping () -> T, completion: @escaping (T) -> Void) {
        let job = Job(work: { work() }, completion: { completion($0 as! T) }, loop: loop)
        pthread_mutex_lock(condMutex)
        queue.withLock { $0.append(job) }
        pthread_cond_signal(cond)
        pthread_mutex_unlock(condMutex)
    }

    /// Stops the workers after the queued jobs; waits for them.
    public func shutdown() {
        pthread_mutex_lock(condMutex)
        shuttingDown = true
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(condMutex)
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
    }

    private func workerMain() {
        while true {
            pthread_mutex_lock(condMutex)
            var job: Job?
            while true {
                job = queue.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                if job != nil || shuttingDown { break }
                pthread_cond_wait(cond, condMutex)
            }
            pthread_mutex_unlock(condMutex)
            guard let job else { return }
            let result = job.work()
            job.loop.post { job.completion(result) }
        }
    }
}
