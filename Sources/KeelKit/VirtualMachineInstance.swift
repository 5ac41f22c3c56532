import Accel
import CKeel
import Devices
import Glibc
import Loop
import Machine
import Monitor

/// A running Keel machine: the main loop on the calling thread, the board, an accelerator
/// rebuilt at every machine reset, and the monitors (QMP, human) that control it. The Swift API
/// and the `keel` command both use it.
public final class VirtualMachineInstance {
    public let configuration: MachineConfiguration
    let lock = BigLock()
    let loop: EventLoop
    let requests: MachineRequestQueue
    let board: PCBoard
    private(set) var monitor: Monitor!
    /// The current boot's accelerator; nil between boots. Under the big lock.
    var accelerator: Accelerator?
    /// Under the big lock.
    public internal(set) var runState: RunState
    /// Why the host raised the pending reset or quit request (QMP, a signal); nil when the
    /// guest did. Under the big lock.
    var hostCause: ShutdownCause?

    /// Validates `configuration` and builds the board (guest RAM, devices, chardevs, kernel
    /// loaded from disk). Nothing runs yet; monitors open in `run()`.
    public init(configuration: MachineConfiguration) throws {
        try configuration.validate()
        try AcceleratorSupport.checkAvailable(configuration.accelerator)
        self.configuration = configuration
        loop = try EventLoop(lock: lock)
        requests = MachineRequestQueue(loop: loop)
        board = try PCBoard(configuration: configuration, loop: loop, lock: lock, requests: requests)
        runState = configuration.startPaused ? .prelaunch : .running
        monitor = Monitor(machine: self, loop: loop, version: Self.monitorVersion)
    }

    /// The QEMU version Keel's QMP reports (the QAPI schema it follows), and Keel's own.
    static let monitorVersion = Monitor.Version(major: 7, minor: 2, micro: 0, package: "Keel \(KeelCommandLine.version)")

    /// Runs until the guest powers off, exits through isa-debug-exit, or the host quits.
    /// Returns the process exit status QEMU would use.
    public func run() throws -> Int32 {
        defer {
            monitor.shutdown()
            board.close()
        }
        try watchTerminationSignals()
        try lock.withLock {
            try monitor.start(configuration.monitors)
            if let console = board.muxedConsole { monitor.attachMuxedHMP(console) }
        }
        while true {
            let accel = try AcceleratorSupport.make(configuration.accelerator, board: board)
            try accel.prepare(boot: try board.loadBootImages())
            lock.withLock {
                accelerator = accel
                accel.start()
                // Paused (-S, or a reset while stopped): the vCPUs park before any guest code.
                if !runState.isRunning { accel.pauseLocked() }
            }
            var request: MachineRequest?
            while request == nil {
                loop.run()
                request = requests.take()
            }
            accel.stop()
            let cause = lock.withLock { () -> ShutdownCause? in
                accelerator = nil
                defer { hostCause = nil }
                return hostCause
            }
            switch request! {
            case .reset:
                let c = cause ?? .guestReset
                if configuration.noReboot {
                    shutdown(c)
                    return 0
                }
                lock.withLock { monitor.emit("RESET", data: Monitor.causeData(c)) }
                board.reset()
                continue
            case .powerOff:
                shutdown(.guestShutdown)
                return 0
            case .exit(let status):
                return status
            case .quit(let reason):
                if !reason.isEmpty { board.hostMessage("keel: \(reason)") }
                shutdown(cause ?? .hostQMPQuit)
                return 0
            case .failure(let message):
                lock.withLock { runState = .internalError }
                throw ConfigurationError(message)
            }
        }
    }

    private func shutdown(_ cause: ShutdownCause) {
        lock.withLock {
            runState = .shutdown
            monitor.emit("SHUTDOWN", data: Monitor.causeData(cause))
        }
    }

    /// SIGINT, SIGTERM and SIGHUP end the machine cleanly from the main loop (terminal restored),
    /// as QEMU's "terminating on signal" does. They are blocked in every thread and read through a
    /// signalfd; vCPU threads inherit the mask because they start later.
    private func watchTerminationSignals() throws {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let fd = signalfd(-1, &set, Int32(SFD_CLOEXEC | SFD_NONBLOCK))
        guard fd >= 0 else { throw SystemError(errno: errno, "signalfd") }
        try loop.addReadable(fd: fd) { [weak self] _ in
            var info = signalfd_siginfo()
            if Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size) > 0, let self {
                if !self.requests.isPending { self.hostCause = .hostSignal }
                self.requests.raise(.quit(reason: "terminating on signal \(info.ssi_signo)"))
            }
        }
    }
}

/// The `keel` command: parses QEMU's command line and runs the machine.
public enum KeelMain {
    public static func main(_ arguments: [String]) -> Int32 {
        let request: CommandLineRequest
        do { request = try KeelCommandLine.parse(arguments) } catch {
            return fail("\(error)")
        }
        switch request {
        case .help: print(KeelCommandLine.helpText); return 0
        case .version: print("Keel version \(KeelCommandLine.version) (qemu-system-x86_64 compatible command line)"); return 0
        case .listMachines: print(KeelCommandLine.machineList); return 0
        case .listDevices: print(KeelCommandLine.deviceList); return 0
        case .run(let configuration):
            do {
                let vm = try VirtualMachineInstance(configuration: configuration)
                return try vm.run()
            } catch {
                return fail("\(error)")
            }
        }
    }

    static func fail(_ message: String) -> Int32 {
        StdioChardev.restoreTerminal()
        var line = "keel: \(message)\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
        return 1
    }
}
