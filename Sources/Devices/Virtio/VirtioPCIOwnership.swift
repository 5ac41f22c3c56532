import CKeel
import Glibc
import Loop
import Synchronization

/// Counters behind `VirtioPCIStatistics`, bumped from whichever thread took the path (a vCPU,
/// the main loop or the device's iothread).
final class VirtioPCICounters: @unchecked Sendable {
    let trappedNotifies = Atomic<UInt64>(0)
    let eventFDNotifies = Atomic<UInt64>(0)
    let msiByController = Atomic<UInt64>(0)
    let msiByIRQFD = Atomic<UInt64>(0)
    let msiRouteUpdates = Atomic<UInt64>(0)
    let iothreadNotifies = Atomic<UInt64>(0)

    var snapshot: VirtioPCIStatistics {
        var s = VirtioPCIStatistics()
        s.trappedNotifies = trappedNotifies.load(ordering: .relaxed)
        s.eventFDNotifies = eventFDNotifies.load(ordering: .relaxed)
        s.msiByController = msiByController.load(ordering: .relaxed)
        s.msiByIRQFD = msiByIRQFD.load(ordering: .relaxed)
        s.msiRouteUpdates = msiRouteUpdates.load(ordering: .relaxed)
        s.iothreadNotifies = iothreadNotifies.load(ordering: .relaxed)
        return s
    }
}

/// What a device given to an iothread needs from the rest of the machine: the thread that owns
/// its queues, and the big lock and main loop for the state that stays under the big lock
/// (MSI-X table and pending bits, ISR and INTx, the irqfd routes).
public struct VirtioIOThreadContext {
    public let iothread: IOThread
    public let bigLock: BigLock
    /// The main loop (its callbacks run with the big lock held).
    public let mainLoop: EventLoop
    public init(iothread: IOThread, bigLock: BigLock, mainLoop: EventLoop) {
        self.iothread = iothread; self.bigLock = bigLock; self.mainLoop = mainLoop
    }
}

/// The MSI-X vectors the driver assigned (config and queues), published by the queues' owner for
/// the irqfd routing done under the big lock; and the irqfds routed, published for the owner's
/// interrupts. Each under its own small mutex.
final class VirtioVectorState: @unchecked Sendable {
    let used = Mutex<Set<Int>>([])
    /// Vector -> irqfd, only while MSI-X is live and the vector routed; empty while routes change.
    let irqfds = Mutex<[Int: EventFD]>([:])
}

// Threading of a VirtioPCIDevice with an iothread:
// - queue state (status, features, queues, the device model, the ioeventfd registrations) belongs
//   to the iothread; register accesses from vCPUs reach it through `onOwner` (run on the
//   iothread while the vCPU waits holding the big lock, so that work may also touch big-lock
//   state);
// - MSI-X, ISR/INTx and the irqfd routes stay under the big lock; the iothread's own interrupts
//   go through an irqfd when one is routed, else take the big lock if it is free, else are
//   handed to the main loop (tcg's LocalAPIC and PCIMSIX are not thread-safe).
extension VirtioPCIDevice {
    /// Runs `work` with the queue state in hand: on the iothread (waiting for it), or right here.
    func onOwner(_ work: () -> Void) {
        guard let t = ioThreadContext?.iothread, !t.isCurrent else { return work() }
        t.runSync {
            ownerSyncDepth += 1
            work()
            ownerSyncDepth -= 1
        }
    }

    /// Whether this thread may touch the big-lock state now: no iothread (everything runs under
    /// the big lock), or running inside `onOwner` for a caller holding it.
    var holdsBigLockState: Bool {
        guard let t = ioThreadContext?.iothread else { return true }
        return !t.isCurrent || ownerSyncDepth > 0
    }

    /// Runs `work` under the big lock: here if we hold it, else on the main loop.
    func withBigLockState(_ work: @escaping () -> Void) {
        if holdsBigLockState { return work() }
        ioThreadContext?.mainLoop.post(work) ?? work()
    }

    /// Queue and config interrupts raised by the queues' owner.
    func interrupt(vector: UInt16, isrBit: UInt8) {
        if holdsBigLockState { return interruptLocked(vector: vector, isrBit: isrBit) }
        let signalled = vectors.irqfds.withLock { fds -> Bool in
            guard vector != Virtio.noVector, let fd = fds[Int(vector)] else { return false }
            fd.signal()
            return true
        }
        if signalled { counters.msiByIRQFD.add(1, ordering: .relaxed); return }
        if let c = ioThreadContext, c.bigLock.tryLock() {
            interruptLocked(vector: vector, isrBit: isrBit)
            c.bigLock.unlock()
            return
        }
        withBigLockState { [weak self] in self?.interruptLocked(vector: vector, isrBit: isrBit) }
    }

    /// Publishes the vectors the driver uses (owner side) and re-routes them.
    func vectorsAssigned() {
        var used = Set<Int>()
        if configVector != Virtio.noVector { used.insert(Int(configVector)) }
        for q in queues where q.msixVector != Virtio.noVector { used.insert(Int(q.msixVector)) }
        vectors.used.withLock { $0 = used }
        withBigLockState { [weak self] in self?.msiRoutesChanged() }
    }

    /// The name of the thread running this code (pthread_getname_np), for the statistics.
    static func currentThreadName() -> String {
        var buffer = [CChar](repeating: 0, count: 32)
        guard ckeel_get_thread_name(&buffer, buffer.count) == 0 else { return "?" }
        return String(cString: buffer)
    }

    /// QMP stop/cont (QEMU's vm_stop stops the dataplane): while paused no chain is taken from
    /// the rings (a vhost back-end's rings are stopped too), requests in flight still complete;
    /// on resume every ready queue is looked at again, so what the driver queued meanwhile is
    /// processed.
    public func setQueuesPaused(_ paused: Bool) {
        onOwner {
            guard isPaused != paused else { return }
            isPaused = paused
            device.setBackendPaused(paused)
            if !paused { kickReadyQueues() }
        }
    }

    /// Machine reset: no new request may start between the drain and the reset (an iothread
    /// keeps running while the vCPUs are stopped). `pciReset` lifts it.
    public func quiesce() {
        onOwner { isQuiesced = true }
    }

    func kickReadyQueues() {
        for (i, q) in queues.enumerated() where q.isReady && acceptsRequests { device.queueNotified(i) }
    }
}
