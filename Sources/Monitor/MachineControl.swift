import Loop
/// What the monitor needs from the machine it controls. KeelKit's VirtualMachineInstance
/// implements it. Every member is used from the main loop with the big lock held.
public protocol MachineControl: AnyObject {
    var runState: RunState { get }
    /// QMP `stop`: parks every vCPU and the devices' queue processing. A no-op unless running.
    func stopLocked()
    /// QMP `cont`: resumes a paused machine. A no-op when running.
    func continueLocked() throws
    /// QMP `system_reset`: a host-requested reset (or, with -no-reboot, a shutdown).
    func systemResetLocked()
    /// QMP `system_powerdown`: presses the ACPI power button.
    func systemPowerdownLocked()
    /// QMP `quit`: ends Keel after the reply and the SHUTDOWN event are sent.
    func quitLocked()

    var machineInfo: MachineInfo { get }
    /// One entry per vCPU, in index order.
    var cpus: [CPUInfo] { get }
    /// The machine's chardevs (serial ports); the monitor adds its own.
    var chardevs: [ChardevInfo] { get }
    /// The devices for `info qtree`.
    var devices: [DeviceInfo] { get }
    /// `-object iothread` threads that run devices (QMP query-iothreads).
    var iothreads: [IOThreadInfo] { get }
}

extension MachineControl {
    public var iothreads: [IOThreadInfo] { [] }
}

public struct IOThreadInfo: Sendable, Equatable {
    public var id: String
    /// Host thread ID of the iothread.
    public var threadID: Int32
    /// The adaptive-polling properties (poll-max-ns, poll-grow, poll-shrink).
    public var polling: PollParameters
    public init(id: String, threadID: Int32, polling: PollParameters = PollParameters()) {
        self.id = id; self.threadID = threadID; self.polling = polling
    }
}

/// QEMU's RunState names (qapi/run-state.json), for the states Keel can be in.
public enum RunState: String, Sendable {
    case prelaunch, running, paused, shutdown
    case internalError = "internal-error"
    case guestPanicked = "guest-panicked"

    public var isRunning: Bool { self == .running }
}

/// QEMU's ShutdownCause names, as SHUTDOWN and RESET events carry them.
public enum ShutdownCause: String, Sendable {
    case hostError = "host-error"
    case hostQMPQuit = "host-qmp-quit"
    case hostQMPSystemReset = "host-qmp-system-reset"
    case hostSignal = "host-signal"
    case hostUI = "host-ui"
    case guestShutdown = "guest-shutdown"
    case guestReset = "guest-reset"
    case guestPanic = "guest-panic"

    /// QMP's `guest` member: whether the guest asked for it.
    public var isGuest: Bool { self == .guestShutdown || self == .guestReset || self == .guestPanic }
}

public struct MachineInfo: Sendable {
    public var name: String?
    public var acceleratorIsKVM: Bool
    public var kvmPresent: Bool
    public var memorySize: UInt64
    public var machineTypes: [String]
    public var defaultMachineType: String
    public var maxCPUs: Int
    public init(name: String?, acceleratorIsKVM: Bool, kvmPresent: Bool, memorySize: UInt64,
                machineTypes: [String], defaultMachineType: String, maxCPUs: Int) {
        self.name = name
        self.acceleratorIsKVM = acceleratorIsKVM
        self.kvmPresent = kvmPresent
        self.memorySize = memorySize
        self.machineTypes = machineTypes
        self.defaultMachineType = defaultMachineType
        self.maxCPUs = maxCPUs
    }
}

public struct CPUInfo: Sendable, Equatable {
    public var index: Int
    /// Host thread ID of the vCPU thread (0 before it started).
    public var threadID: Int32
    public var socketID = 0, coreID: Int, threadIDInCore = 0
    public init(index: Int, threadID: Int32) {
        self.index = index
        self.threadID = threadID
        self.coreID = index
    }
}

public struct ChardevInfo: Sendable, Equatable {
    public var label: String
    public var filename: String
    public var frontendOpen: Bool
    public init(label: String, filename: String, frontendOpen: Bool = true) {
        self.label = label
        self.filename = filename
        self.frontendOpen = frontendOpen
    }
}

/// One device for `info qtree`: its type, id, and properties already formatted as QEMU prints
/// them (`iobase = 1016 (0x3f8)`).
public struct DeviceInfo: Sendable, Equatable {
    public var type: String
    public var id: String
    public var properties: [String]
    public init(type: String, id: String = "", properties: [String] = []) {
        self.type = type
        self.id = id
        self.properties = properties
    }
}
