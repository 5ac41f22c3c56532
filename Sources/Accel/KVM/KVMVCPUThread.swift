import CKeel
import Devices
import Glibc
import KVM
import Machine

/// One vCPU's thread: KVM_RUN in a loop; a port or MMIO exit is emulated here, holding the big
/// lock only for the device access. Stopping sets immediate_exit and sends a signal, so a vCPU
/// inside KVM_RUN (or about to enter it) returns at once.
final class KVMVCPUThread: @unchecked Sendable {
    let vcpu: VCPU
    unowned let board: PCBoard
    unowned let accelerator: KVMAccelerator
    let pio: Bus
    let mmio: Bus
    let control: VCPUThreadControl

    init(vcpu: VCPU, board: PCBoard, accelerator: KVMAccelerator) {
        self.vcpu = vcpu
        self.board = board
        self.accelerator = accelerator
        control = VCPUThreadControl(lock: board.lock, gate: accelerator.pauseGate)
        self.pio = board.pioBus
        self.mmio = board.mmioBus
    }

    func start() {
        control.start(name: "CPU \(vcpu.id)/KVM") { [self] in main() }
    }

    func requestStop() {
        control.requestStop()
        kick()
    }

    /// Makes KVM_RUN return now, or right away if the vCPU is about to enter it.
    func kick() {
        vcpu.setImmediateExit(true)
        control.signal(KVMAccelerator.kickSignal)
    }

    func join() { control.join() }

    private func main() {
        let lock = board.lock
        let requests = board.requests
        while !control.isStopRequested && !requests.isPending {
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
                control.parkIfPaused()
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
