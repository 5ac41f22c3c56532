import Accel
import CKeel
import Devices
import Glibc
import Loop
import Machine

/// A running Keel machine: the main loop on the calling thread, the board, and an accelerator
/// rebuilt at every machine reset. The Swift API and the `keel` command both use it.
public final class VirtualMachineInstance {
    public let configuration: MachineConfiguration
    let lock = BigLock()
    let loop: EventLoop
    let requests: MachineRequestQueue
    let board: PCBoard

    /// Validates `configuration` and builds the board (guest RAM, devices, chardevs, kernel
    /// loaded from disk). Nothing runs yet.
    public init(configuration: MachineConfiguration) throws {
        try configuration.validate()
        try AcceleratorSupport.checkAvailable(configuration.accelerator)
        self.configuration = configuration
        loop = try EventLoop(lock: lock)
        requests = MachineRequestQueue(loop: loop)
        board = try PCBoard(configuration: configuration, loop: loop, lock: lock, requests: requests)
    }

    /// Runs until the guest powers off, exits through isa-debug-exit, or the host quits.
    /// Returns the process exit status QEMU would use.
    public func run() throws -> Int32 {
        defer { board.close() }
        try watchTerminationSignals()
        while true {
            let accel = try AcceleratorSupport.make(configuration.accelerator, board: board)
            try accel.prepare(boot: try board.loadBootImages())
            accel.start()
            var request: MachineRequest?
            while request == nil {
                loop.run()
                request = requests.take()
            }
            accel.stop()
            switch request! {
            case .reset where !configuration.noReboot:
                board.reset()
                continue
            case .reset, .powerOff:
                return 0
            case .exit(let status):
                return status
            case .quit(let reason):
                if !reason.isEmpty { board.hostMessage("keel: \(reason)") }
                return 0
            case .failure(let message):
                throw ConfigurationError(message)
            }
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
        try loop.addReadable(fd: fd) { [requests] _ in
            var info = signalfd_siginfo()
            if Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size) > 0 {
                requests.raise(.quit(reason: "terminating on signal \(info.ssi_signo)"))
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
