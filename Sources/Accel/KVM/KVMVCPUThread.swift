import CKeel
import Devices
import Glibc
import KVM
import Machine
import Synchronization

/// One vCPU's thread: KVM_RUN in a loop; a port or MMIO exit is emulated here, holding the big
/// lock only for the device access. Stopping sets immediate_exit and sends a signal, so a vCPU
/// inside KVM_RUN (or about to enter it) returns at once.
final class KVMVCPUThread: @unchecked Sendable {
    let vcpu: VCPU
    unowned let board: PCBoard
    unowned let accelerator: KVMAccelerator
    let pio: Bus
    let mmio: Bus
    let stopRequested = Atomic<Bool>(false)
    var thread: pthread_t?
    /// The host thread ID (gettid), for QMP and for people reading `top -H`; under the big lock.
    private(set) var threadID: Int32 = 0
    /// Under the big lock: parked by a pause, or the thread has ended.
    private(set) var parkedOrDone = false

    init(vcpu: VCPU, board: PCBoard, accelerator: KVMAccelerator) {
        self.vcpu = vcpu
        self.board = board
        self.accelerator = accelerator
        self.pio = board.pioBus
        self.mmio = board.mmioBus
    }

    func start() {
        var t = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&t, nil, { arg in
            let v = Unmanaged<KVMVCPUThread>.fromOpaque(arg!).takeRetainedValue()
            v.main()
            return nil
        }, me)
        thread = t
    }

    func requestStop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        kick()
    }

    /// Makes KVM_RUN return now, or right away if the vCPU is about to enter it.
    func kick() {
        vcpu.setImmediateExit(true)
        if let t = thread { pthread_kill(t, KVMAccelerator.kickSignal) }
    }

    /// Waits, outside guest code, while a pause is requested. The big lock is held on entry to
    /// the wait and released by it.
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

    func join() {
        if let t = thread { pthread_join(t, nil) }
        thread = nil
    }

    private func main() {
        board.lock.withLock { threadID = ckeel_gettid() }
        defer { finish() }
        _ = ckeel_set_thread_name(String("CPU \(vcpu.id)/KVM".prefix(15)))
        let lock = board.lock
        let requests = board.requests
        while !stopRequested.load(ordering: .relaxed) && !requests.isPending {
            let exit: VCPUExit
            do { exit = try vcpu.runOnce() } catch {
                board.requests.raise(.failure("vCPU \(vcpu.id): \(error)"))
                return
            }
            switch exit {
            case .ioOut(let port, let size, let count, let data):
                lock.lock()
                for i in 0..<count {
                    pio.write(UInt64(port), data: UnsafeRawBufferPointer(start: data + i * size, count: size))
                }
                lock.unlock()
            case .ioIn(let port, let size, let count, let data):
                lock.lock()
                for i in 0..<count {
                    pio.read(UInt64(port), data: UnsafeMutableRawBufferPointer(start: data + i * size, count: size))
                }
                lock.unlock()
            case .mmioWrite(let address, let data):
                lock.lock()
                mmio.write(address, data: data)
                lock.unlock()
            case .mmioRead(let address, let data):
                lock.lock()
                mmio.read(address, data: data)
                lock.unlock()
            case .ioapicEOI(let vector):
                lock.lock()
                accelerator.ioapicEndOfInterrupt?(vector)
                lock.unlock()
            case .interrupted:
                // A kick: a pause, a stop, or a signal. Clear immediate_exit before looking at
                // the reason, so a kick sent after this point is not lost (it sets it again).
                vcpu.setImmediateExit(false)
                parkIfPaused()
                continue
            case .halt:
                // With the in-kernel LAPIC, HLT is handled inside KVM; a halt exit means the vCPU
                // can never wake (interrupts off): treat as a powered-off CPU and stop this thread.
                return
            case .shutdown:
                board.requests.raise(.reset)
                return
            case .systemEvent(let type):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: board.requests.raise(.powerOff)
                case KVM_SYSTEM_EVENT_RESET: board.requests.raise(.reset)
                default: board.requests.raise(.failure("vCPU \(vcpu.id): guest crash (KVM system event \(type))"))
                }
                return
            case .failEntry(let reason):
                board.requests.raise(.failure("vCPU \(vcpu.id): KVM could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))"))
                return
            case .internalError(let sub):
                board.requests.raise(.failure("vCPU \(vcpu.id): KVM internal error (suberror \(sub))\(registerDump())"))
                return
            case .unknown(let reason):
                board.requests.raise(.failure("vCPU \(vcpu.id): unexpected KVM exit reason \(reason)"))
                return
            }
        }
    }

    private func registerDump() -> String {
        guard let r = try? vcpu.getRegisters() else { return "" }
        return " at RIP 0x\(String(r.rip, radix: 16))"
    }
}
