import KVM
import Machine

/// The vCPU side of a machine, behind which kvm and tcg sit (QEMU's AccelClass). An accelerator
/// is built for one boot of a board: a machine reset throws it away and builds a fresh one.
public protocol Accelerator: AnyObject {
    /// Creates the vCPUs in their power-on state, the boot vCPU in `boot`'s state.
    func prepare(boot: BootCPUState) throws
    /// Starts one thread per vCPU.
    func start()
    /// Makes every vCPU leave guest code and its thread end; returns when all have ended.
    /// Call without the big lock held (a vCPU may be waiting for it).
    func stop()
    /// Parks every vCPU outside guest code (QMP `stop`); returns when all are parked.
    /// Call with the big lock held: it is released while waiting.
    func pauseLocked()
    /// Lets parked vCPUs run again (QMP `cont`). Call with the big lock held.
    func resumeLocked()
    /// Per vCPU: its index and host thread ID (QMP query-cpus-fast), once started.
    var vcpuThreadIDs: [Int32] { get }
}

/// Which accelerators this host and this build of Keel can offer, with the reason when not.
public enum AcceleratorSupport {
    /// Fails, naming the reason, if `kind` cannot run here; checked before anything is built.
    public static func checkAvailable(_ kind: MachineConfiguration.Accelerator) throws {
        switch kind {
        case .kvm: _ = try KVMSystem()
        case .tcg: return
        }
    }

    public static func make(_ kind: MachineConfiguration.Accelerator, board: PCBoard) throws -> Accelerator {
        switch kind {
        case .kvm: return try KVMAccelerator(board: board)
        case .tcg: return TCGAccelerator(board: board)
        }
    }
}

public struct AcceleratorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
