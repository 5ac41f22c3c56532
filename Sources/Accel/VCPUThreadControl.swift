import CKeel
import Glibc
import Loop
import Synchronization

/// The pause protocol that every accelerator's vCPUs follow (QMP stop/cont). Its state lives
/// under the big lock; a pause waits on a condition tied to that lock, so a vCPU blocked on the
/// lock (in the middle of a device access) can still finish and park.
final class VCPUPauseGate: @unchecked Sendable {
    /// Under the big lock.
    private(set) var pauseRequested = false
    private let parkedChanged: BigLock.Condition
    private let resumed: BigLock.Condition

    init(lock: BigLock) {
        parkedChanged = BigLock.Condition(lock: lock)
        resumed = BigLock.Condition(lock: lock)
    }

    /// Big lock held: asks for a pause, `kick`s the vCPUs out of guest code and returns once every
    /// one of `threads` is parked or has ended.
    func pauseLocked(_ threads: [VCPUThreadControl], kick: () -> Void) {
        guard !pauseRequested else { return }
        pauseRequested = true
        kick()
        while threads.contains(where: { !$0.parkedOrDone }) { parkedChanged.wait() }
    }

    /// Big lock held: lets parked vCPUs run again (also before stopping them).
    func resumeLocked() {
        guard pauseRequested else { return }
        pauseRequested = false
        resumed.broadcast()
    }

    fileprivate func parked() { parkedChanged.broadcast() }
    fileprivate func waitForResume() { resumed.wait() }
}

/// The life of one vCPU's pthread, whatever runs in it: start, stop request, join, its host
/// thread ID (for QMP and `top -H`) and parking while the machine is paused.
final class VCPUThreadControl: @unchecked Sendable {
    private let stop = Atomic<Bool>(false)
    private let lock: BigLock
    private let gate: VCPUPauseGate
    private var thread: pthread_t?
    /// Under the big lock.
    private(set) var threadID: Int32 = 0
    /// Under the big lock: parked by a pause, or the thread has ended.
    private(set) var parkedOrDone = false

    init(lock: BigLock, gate: VCPUPauseGate) {
        self.lock = lock
        self.gate = gate
    }

    @inline(__always) var isStopRequested: Bool { stop.load(ordering: .relaxed) }

    func requestStop() { stop.store(true, ordering: .sequentiallyConsistent) }

    /// Runs `body` on a new pthread named `name` (at most 15 characters are kept).
    func start(name: String, _ body: @escaping () -> Void) {
        final class Start { let run: () -> Void; init(_ r: @escaping () -> Void) { run = r } }
        let start = Start { [self] in
            lock.withLock { threadID = ckeel_gettid() }
            _ = ckeel_set_thread_name(String(name.prefix(15)))
            body()
            lock.withLock {
                parkedOrDone = true
                gate.parked()
            }
        }
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(start).toOpaque())
        thread = t
    }

    /// Sends `signal` to the thread (a no-op handler makes a blocking call like KVM_RUN return).
    func signal(_ signal: Int32) {
        if let t = thread { pthread_kill(t, signal) }
    }

    func join() {
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    /// On the vCPU thread, outside guest code and without the big lock: waits while a pause is
    /// requested (and no stop).
    func parkIfPaused() {
        lock.lock()
        while gate.pauseRequested && !isStopRequested {
            parkedOrDone = true
            gate.parked()
            gate.waitForResume()
        }
        parkedOrDone = false
        lock.unlock()
    }
}
