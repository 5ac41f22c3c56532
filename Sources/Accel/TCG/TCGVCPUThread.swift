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
    let control: VCPUThreadControl
    let wakeup: BigLock.Condition
    /// Bumped (under the big lock) whenever this vCPU is woken or kicked, so halt polling can
    /// watch for a wake-up without the lock.
    private let wakeups = Atomic<UInt64>(0)
    /// How long a HLT spins for a wake-up before sleeping (KVM's halt polling): the request,
    /// completion, interrupt round trips of a disk or network device are often shorter than
    /// putting the thread to sleep and waking it. Adapts between 0 and `maxHaltPoll`.
    private var haltPoll: UInt64 = 0
    static let maxHaltPoll: UInt64 = 200_000
    static let initialHaltPoll: UInt64 = 10_000

    init(cpu: X86CPU, board: PCBoard, accelerator: TCGAccelerator) {
        self.cpu = cpu
        self.board = board
        self.accelerator = accelerator
        control = VCPUThreadControl(lock: board.lock, gate: accelerator.pauseGate)
        wakeup = BigLock.Condition(lock: board.lock)
    }

    /// Big lock held: the LocalAPIC wakes this thread when an event appears.
    func connectWakeup() {
        cpu.apic?.wakeup = { [unowned(unsafe) self] in
            self.wakeups.add(1, ordering: .releasing)
            self.wakeup.broadcast()
        }
    }

    /// Big lock held, after the thread ended (the APIC outlives this boot's accelerator).
    func disconnectWakeup() { cpu.apic?.wakeup = nil }

    func start() {
        control.start(name: "CPU \(cpu.index)/TCG") { [self] in main() }
    }

    /// Big lock held.
    func requestStop() {
        control.requestStop()
        kickLocked()
    }

    /// Big lock held: leave guest code at the next block boundary, or the HLT sleep.
    func kickLocked() {
        cpu.kick()
        wakeups.add(1, ordering: .releasing)
        wakeup.broadcast()
    }

    func join() { control.join() }

    /// HLT or wait-for-SIPI: polls for a wake-up for `haltPoll` ns, then sleeps until the CPU
    /// has an event to take, or a stop or pause.
    private func waitForEvent() {
        let seen = wakeups.load(ordering: .acquiring)
        let start = monotonicNanoseconds()
        var now = start
        if haltPoll > 0 {
            while now &- start < haltPoll && wakeups.load(ordering: .acquiring) == seen {
                for _ in 0..<64 { ckeel_cpu_relax() }
                now = monotonicNanoseconds()
            }
        }
        let polled = wakeups.load(ordering: .acquiring) != seen
        let lock = board.lock
        lock.lock()
        while !cpu.hasWakeupEvent && !control.isStopRequested
                && !accelerator.pauseGate.pauseRequested && !board.requests.isPending {
            wakeup.wait()
        }
        lock.unlock()
        // KVM's rule (halt_poll_ns_grow/shrink = 2): a wake-up within the maximum after polling
        // too little doubles the window; a longer halt halves it, and below the initial window
        // polling stops. A request/response guest (a long idle halt, then a short one waiting
        // for the reply) keeps polling; an idle guest stops within a few halts.
        if !polled {
            let halted = monotonicNanoseconds() &- start
            if halted <= Self.maxHaltPoll {
                haltPoll = min(max(haltPoll * 2, Self.initialHaltPoll), Self.maxHaltPoll)
            } else {
                haltPoll /= 2
                if haltPoll < Self.initialHaltPoll { haltPoll = 0 }
            }
        }
    }

    private func main() {
        let requests = board.requests
        while !control.isStopRequested && !requests.isPending {
            switch cpu.run(budget: 1 << 20) {
            case .budget:
                continue
            case .requested:
                control.parkIfPaused()
            case .halted, .haltedForever:
                waitForEvent()
                control.parkIfPaused()
            case .tripleFault:
                board.requests.raise(.reset)
                return
            }
        }
    }
}
