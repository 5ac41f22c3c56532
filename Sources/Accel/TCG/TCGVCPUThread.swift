import CKeel
import Glibc
import Loop
import Machine
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

    init(cpu: X86CPU, board: PCBoard, accelerator: TCGAccelerator) {
        self.cpu = cpu
        self.board = board
        self.accelerator = accelerator
        control = VCPUThreadControl(lock: board.lock, gate: accelerator.pauseGate)
        wakeup = BigLock.Condition(lock: board.lock)
    }

    /// Big lock held: the LocalAPIC wakes this thread when an event appears.
    func connectWakeup() {
        cpu.apic?.wakeup = { [unowned(unsafe) wakeup] in wakeup.broadcast() }
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
        wakeup.broadcast()
    }

    func join() { control.join() }

    /// HLT or wait-for-SIPI: sleeps until the CPU has an event to take, or a stop or pause.
    private func waitForEvent() {
        let lock = board.lock
        lock.lock()
        while !cpu.hasWakeupEvent && !control.isStopRequested
                && !accelerator.pauseGate.pauseRequested && !board.requests.isPending {
            wakeup.wait()
        }
        lock.unlock()
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
