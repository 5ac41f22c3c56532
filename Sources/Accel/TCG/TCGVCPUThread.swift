import CKeel
import Glibc
import Loop
import Machine
import Synchronization
import TCG

/// One tcg vCPU's thread: runs the interpreter in slices; between slices (and whenever the CPU
/// is kicked, which it notices at the next block boundary) it looks at stop and pause requests.
/// In HLT or wait-for-SIPI it sleeps on `wakeup` (the big lock's condition) until its LocalAPIC
/// has an event that ends the wait (the APIC broadcasts it, under the lock, when one appears),
/// or a stop or pause request: no polling.
final class TCGVCPUThread: @unchecked Sendable {
    let cpu: X86CPU
    unowned let board: PCBoard
    unowned let accelerator: TCGAccelerator
    let stopRequested = Atomic<Bool>(false)
    let wakeup: BigLock.Condition
    var thread: pthread_t?
    /// The host thread ID, under the big lock.
    private(set) var threadID: Int32 = 0
    /// Under the big lock: parked by a pause, or the thread has ended.
    private(set) var parkedOrDone = false

    init(cpu: X86CPU, board: PCBoard, accelerator: TCGAccelerator) {
        self.cpu = cpu
        self.board = board
        self.accelerator = accelerator
        wakeup = BigLock.Condition(lock: board.lock)
    }

    /// Big lock held: the LocalAPIC wakes this thread when an event appears.
    func connectWakeup() {
        cpu.apic?.wakeup = { [unowned(unsafe) wakeup] in wakeup.broadcast() }
    }

    /// Big lock held, after the thread ended (the APIC outlives this boot's accelerator).
    func disconnectWakeup() { cpu.apic?.wakeup = nil }

    func start() {
        var t = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&t, nil, { arg in
            let v = Unmanaged<TCGVCPUThread>.fromOpaque(arg!).takeRetainedValue()
            v.main()
            return nil
        }, me)
        thread = t
    }

    /// Big lock held.
    func requestStop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        kickLocked()
    }

    /// Big lock held: leave guest code at the next block boundary, or the HLT sleep.
    func kickLocked() {
        cpu.kick()
        wakeup.broadcast()
    }

    func join() {
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    private func parkIfPaused() {
        let lock = board.lock
        lock.lock()
        while accelerator.pauseRequested && !stopRequested.load(ordering: .relaxed) {
            parkedOrDone = true
            accelerator.parkedChanged.broadcast()
            accelerator.resumed.wait()
        }
        parkedOrDone = false
        lock.unlock()
    }

    /// HLT or wait-for-SIPI: sleeps until the CPU has an event to take, or a stop or pause.
    private func waitForEvent() {
        let lock = board.lock
        lock.lock()
        while !cpu.hasWakeupEvent && !stopRequested.load(ordering: .relaxed)
                && !accelerator.pauseRequested && !board.requests.isPending {
            wakeup.wait()
        }
        lock.unlock()
    }

    private func finish() {
        board.lock.withLock {
            parkedOrDone = true
            accelerator.parkedChanged.broadcast()
        }
    }

    private func main() {
        board.lock.withLock { threadID = ckeel_gettid() }
        defer { finish() }
        _ = ckeel_set_thread_name(String("CPU \(cpu.index)/TCG".prefix(15)))
        let requests = board.requests
        while !stopRequested.load(ordering: .relaxed) && !requests.isPending {
            switch cpu.run(budget: 1 << 20) {
            case .budget:
                continue
            case .requested:
                parkIfPaused()
            case .halted, .haltedForever:
                waitForEvent()
                parkIfPaused()
            case .tripleFault:
                board.requests.raise(.reset)
                return
            }
        }
    }
}
