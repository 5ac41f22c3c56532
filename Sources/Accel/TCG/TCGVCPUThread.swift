import CKeel
import Glibc
import Machine
import Synchronization
import TCG

/// One tcg vCPU's thread: runs the interpreter in slices; between slices (and whenever the CPU
/// is kicked, which it notices at the next block boundary) it looks at stop and pause requests.
final class TCGVCPUThread: @unchecked Sendable {
    let cpu: X86CPU
    unowned let board: PCBoard
    unowned let accelerator: TCGAccelerator
    let stopRequested = Atomic<Bool>(false)
    var thread: pthread_t?
    /// The host thread ID, under the big lock.
    private(set) var threadID: Int32 = 0
    /// Under the big lock: parked by a pause, or the thread has ended.
    private(set) var parkedOrDone = false

    init(cpu: X86CPU, board: PCBoard, accelerator: TCGAccelerator) {
        self.cpu = cpu
        self.board = board
        self.accelerator = accelerator
    }

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

    func requestStop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        cpu.kick()
    }

    func kick() { cpu.kick() }

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
            case .halted:
                // Woken by an interrupt (injected through the CPU) or a stop/pause kick.
                var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                nanosleep(&ts, nil)
                parkIfPaused()
            case .haltedForever:
                // Interrupts off and halted: as under kvm, this CPU is done.
                return
            case .tripleFault:
                board.requests.raise(.reset)
                return
            }
        }
    }
}
