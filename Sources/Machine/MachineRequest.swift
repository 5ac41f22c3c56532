import Loop
import Synchronization

/// Something the guest or the host asked of the whole machine. Devices raise these (with the big
/// lock held, on any thread); the main loop acts on the first one after the vCPUs have stopped.
public enum MachineRequest: Sendable, Equatable {
    /// ACPI S5 or a host quit: Keel ends with status 0.
    case powerOff
    /// i8042 / 0xCF9 / ACPI reset register, or a triple fault.
    case reset
    /// isa-debug-exit: Keel ends with this status.
    case exit(status: Int32)
    /// The host asked Keel to quit (Ctrl-A x, SIGTERM): status 0.
    case quit(reason: String)
    /// The accelerator failed in a way the machine cannot survive: status 1.
    case failure(String)
}

/// Collects machine requests from any thread and wakes the main loop. The first request wins
/// until the main loop takes it.
public final class MachineRequestQueue: @unchecked Sendable {
    private let pending = Mutex<MachineRequest?>(nil)
    private let loop: EventLoop
    private let raised = Atomic<Bool>(false)

    /// Whether a request waits for the main loop. A vCPU checks it after each exit so that the
    /// one that raised it (say, by writing to isa-debug-exit) runs no further guest code.
    @inline(__always) public var isPending: Bool { raised.load(ordering: .acquiring) }

    public init(loop: EventLoop) { self.loop = loop }

    public func raise(_ request: MachineRequest) {
        let first = pending.withLock { p -> Bool in
            guard p == nil else { return false }
            p = request
            raised.store(true, ordering: .releasing)
            return true
        }
        if first { loop.stop() }
    }

    public func take() -> MachineRequest? {
        pending.withLock { p in
            defer { p = nil; raised.store(false, ordering: .releasing) }
            return p
        }
    }
}
