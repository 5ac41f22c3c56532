import Block
import Devices
import Glibc
import Loop
import SCSI

/// PCI bus 0 on Keel's PC: the host bridge (0xCF8/0xCFC and ECAM), the configured virtio-pci
/// devices with their backends, BARs placed as firmware would, INTx wired per the DSDT's _PRT
/// and MSI-X delivered to the current interrupt controller.
final class PCIBusDevices {
    /// ECAM for buses 0-255 right above the 32-bit MMIO window, below the IOAPIC and LAPIC.
    static let ecamBase: UInt64 = 0xE000_0000
    static let busCount = 256
    static let memory32Window: ClosedRange<UInt64> = 0xC000_0000...0xDFFF_FFFF
    static let ioWindow: ClosedRange<UInt64> = 0x0...0xFFFF
    /// 64-bit BARs go above RAM, on a 1 GiB boundary, 32 GiB of them (QEMU's pci-hole64-size).
    static let memory64Size: UInt64 = 32 << 30

    let bridge: PCIHostBridge
    let root: PCIRootConfiguration
    let msi: MSIRouting
    private(set) var virtio: [VirtioPCIDevice] = []
    /// Per device in `virtio`: whether its notifications may bypass Keel (ioeventfd=on).
    private var ioeventfdAllowed: [Bool] = []
    private let loop: EventLoop
    private var backends: [BlockDevice] = []
    private var workers: WorkerPool?
    private var nics: [VirtioNet] = []
    /// Per block device: waits until none of its requests touches guest memory.
    private var drains: [() -> Void] = []
    /// aio=io_uring executors by index in `virtio` (KEEL_DEBUG_VIRTIO counts their operations).
    private var rings: [Int: IoUringExecutor] = [:]
    /// `-object iothread` threads that own devices, by id.
    private var iothreads: [String: IOThread] = [:]
    private var iothreadPolling: [String: PollParameters] = [:]
    /// Per device in `virtio`: the loop that owns its queues (the main loop or an iothread's).
    private var ownerLoops: [EventLoop] = []

    init(board: PCBoard) throws {
        let c = board.configuration
        iothreadPolling = c.iothreadPolling
        let highEnd = PCMemoryMap.highRAMBase + board.map.highRAMSize
        let m64Base = (highEnd + PCMemoryMap.gibibyte - 1) & ~(PCMemoryMap.gibibyte - 1)
        root = PCIRootConfiguration(ecamBase: Self.ecamBase, busCount: Self.busCount, ioWindow: Self.ioWindow,
                                    memory32Window: Self.memory32Window, memory64Window: m64Base...(m64Base + Self.memory64Size - 1))
        bridge = PCIHostBridge(pio: board.pioBus, mmio: board.mmioBus)
        msi = MSIRouting(board.interrupts)
        loop = board.loop
        try bridge.attach(ecamBase: Self.ecamBase, busCount: Self.busCount)
        do {
            for d in c.pciDevices {
                let model: VirtioDevice
                var ioeventfd = true
                var iothread: IOThread?
                switch d {
                case .virtioBlock(let b):
                    guard let drive = c.drives.first(where: { $0.id == b.drive }) else {
                        throw ConfigurationError("virtio-blk-pci: no -drive with id=\(b.drive)")
                    }
                    let backend = try openDriveBackend(drive)
                    backends.append(backend)
                    let pool = workers ?? WorkerPool(threads: 4)
                    workers = pool
                    ioeventfd = b.ioeventfd
                    if let id = b.iothread { iothread = try startIOThread(id) }
                    var v = VirtioBlock.Configuration()
                    v.queueCount = b.queueCount; v.queueSize = b.queueSize; v.serial = b.serial; v.readOnly = drive.readOnly
                    let executor = try makeExecutor(drive, backend: backend, pool: pool, loop: iothread?.loop ?? board.loop, iothread: iothread)
                    if let ring = executor as? IoUringExecutor { rings[virtio.count] = ring }
                    model = VirtioBlock(backend: backend, configuration: v, executor: executor)
                case .virtioSCSI(let s):
                    if let id = s.iothread { iothread = try startIOThread(id) }
                    model = try makeVirtioSCSI(s, c, loop: iothread?.loop ?? board.loop)
                    ioeventfd = s.ioeventfd
                case .virtioRNG:
                    model = VirtioRNG()
                case .virtioSerial(let v):
                    var chardevs: [Chardev] = []
                    for port in v.ports {
                        let c = try openChardev(port.backend, loop: board.loop, muxEscape: false, option: "-chardev") {}
                        board.chardevs.append(c)
                        chardevs.append(c)
                    }
                    model = VirtioConsole(chardevs: chardevs)
                case .virtioNet(let n):
                    guard let netdev = c.netdevs.first(where: { $0.id == n.netdev }) else {
                        throw ConfigurationError("virtio-net-pci: no -netdev with id=\(n.netdev)")
                    }
                    if case .vhostUser(let u) = netdev.backend {
                        ioeventfd = true
                        model = try Self.vhostUserNet(u, nic: n, board: board)
                        break
                    }
                    if case .tap(let t) = netdev.backend, t.vhost {
                        ioeventfd = true
                        model = try Self.vhostKernelNet(t, id: netdev.id, nic: n, board: board)
                        break
                    }
                    let backends = try openNetBackends(netdev, queuePairs: netdev.queues)
                    var v = VirtioNet.Configuration(mac: n.mac)
                    v.multiqueue = n.multiqueue
                    v.queueSize = n.queueSize
                    let nic = try VirtioNet(backends: backends, configuration: v, loop: board.loop)
                    nics.append(nic)
                    model = nic
                case .vhostUserBlock(let v):
                    ioeventfd = true
                    model = try Self.vhostUserBlock(v, board: board)
                case .vhostUserSCSI(let v):
                    model = try Self.vhostUserSCSI(v, board: board)
                case .vhostVsock(let v):
                    ioeventfd = true
                    model = try Self.vhostVsock(v, board: board)
                }
                let dev = VirtioPCIDevice(device: model, memory: board.memory, msiController: msi)
                if let iothread { dev.assign(to: VirtioIOThreadContext(iothread: iothread, bigLock: board.lock, mainLoop: board.loop)) }
                ownerLoops.append(iothread?.loop ?? board.loop)
                let slot = try bridge.plug(dev)
                dev.pci.intxLine = board.interrupts.line(root.intxGSI(slot: slot, pin: 0))
                virtio.append(dev)
                ioeventfdAllowed.append(ioeventfd)
            }
            try assignResources()
        } catch {
            close()
            throw error
        }
    }

    /// One SCSITarget per scsi-id, a logical unit per scsi-hd on its drive's backend; completions
    /// come back to `loop` (the main loop, or the controller's iothread).
    private func makeVirtioSCSI(_ s: VirtioSCSIConfiguration, _ c: MachineConfiguration, loop: EventLoop) throws -> VirtioDevice {
        var targets: [Int: SCSITarget] = [:]
        for disk in s.disks {
            guard let drive = c.drives.first(where: { $0.id == disk.drive }) else {
                throw ConfigurationError("scsi-hd: no -drive with id=\(disk.drive)")
            }
            let backend = try openDriveBackend(drive)
            backends.append(backend)
            var u = SCSILogicalUnit.Configuration()
            u.serial = disk.serial
            u.readOnly = drive.readOnly
            let target = targets[disk.target] ?? SCSITarget()
            targets[disk.target] = target
            guard target.attach(SCSILogicalUnit(backend: backend, configuration: u), lun: disk.lun) else {
                throw ConfigurationError("scsi-hd,drive=\(disk.drive): lun=\(disk.lun) is taken")
            }
        }
        let pool = workers ?? WorkerPool(threads: 4)
        workers = pool
        // SCSI LUNs stay on the worker pool whatever their drive's aio= says.
        let executor = WorkerPoolExecutor(pool: pool, loop: loop)
        drains.append { executor.waitUntilIdle() }
        var v = VirtioSCSI.Configuration()
        v.queueCount = s.queueCount; v.queueSize = s.queueSize
        return VirtioSCSI(targets: targets, configuration: v, executor: executor)
    }

    /// virtio-scsi over vhost-user: control, event and `queueCount` request queues; the config
    /// (max_target, max_lun, sizes) is the back-end's, num_queues Keel's.
    static func vhostUserSCSI(_ v: VhostUserBlockConfiguration, board: PCBoard) throws -> VirtioDevice {
        let frontend = VhostUserFrontend(endpoint: v.server ? .listen(v.path) : .connect(v.path))
        let queues: [UInt8] = (0..<4).map { UInt8(truncatingIfNeeded: v.queueCount >> (8 * $0)) }
        do {
            return try VhostUserDevice(deviceType: 8, pciClassCode: 0x01_0000, configSize: 36, configOverrides: [(0, queues)],
                                       queueCount: v.queueCount + 2, queueSize: v.queueSize, frontend: frontend,
                                       memory: board.memory, loop: board.loop, reconnectSeconds: v.reconnectSeconds)
        } catch {
            throw ConfigurationError("-device vhost-user-scsi-pci,chardev=\(v.chardev): \(error)")
        }
    }

    /// Connects to the back-end (or waits for it with server=on) and reads its features and config.
    static func vhostUserBlock(_ v: VhostUserBlockConfiguration, board: PCBoard) throws -> VirtioDevice {
        let frontend = VhostUserFrontend(endpoint: v.server ? .listen(v.path) : .connect(v.path))
        // num_queues (virtio 1.2 §5.2.4, offset 34) is Keel's choice, not the back-end's.
        let queues: [UInt8] = [UInt8(truncatingIfNeeded: v.queueCount), UInt8(truncatingIfNeeded: v.queueCount >> 8)]
        do {
            return try VhostUserDevice(deviceType: 2, pciClassCode: 0x01_8000, configSize: 60, configOverrides: [(34, queues)],
                                       queueCount: v.queueCount, queueSize: v.queueSize, frontend: frontend,
                                       memory: board.memory, loop: board.loop, reconnectSeconds: v.reconnectSeconds)
        } catch {
            throw ConfigurationError("-device vhost-user-blk-pci,chardev=\(v.chardev): \(error)")
        }
    }

    /// The back-end's features and config, with the MAC from `-device` (QEMU keeps it in the
    /// front-end's config space); the rx/tx rings are handed over at DRIVER_OK.
    static func vhostUserNet(_ u: VhostUserNetdevConfiguration, nic: VirtioNetConfiguration, board: PCBoard) throws -> VirtioDevice {
        let frontend = VhostUserFrontend(endpoint: u.server ? .listen(u.path) : .connect(u.path))
        do {
            // mac and max_virtqueue_pairs (§5.1.4) are the front-end's, as in QEMU.
            let pairs = [UInt8(truncatingIfNeeded: u.queues), UInt8(truncatingIfNeeded: u.queues >> 8)]
            let rings = try VhostUserDevice(deviceType: 1, pciClassCode: 0x02_00_00, configSize: 12,
                                            configOverrides: [(0, nic.mac), (VirtioNetConfig.maxPairsOffset, pairs)],
                                            queueCount: 2 * u.queues, queueSize: nic.queueSize, frontend: frontend,
                                            memory: board.memory, loop: board.loop, reconnectSeconds: u.reconnectSeconds)
            return VhostNetDevice(rings: rings, mac: nic.mac, multiqueue: nic.multiqueue)
        } catch {
            throw ConfigurationError("-netdev vhost-user,chardev=\(u.chardev): \(error)")
        }
    }

    func assignResources() throws {
        try bridge.assignResources(io: 0xC000..<0x1_0000,
                                   memory32: root.memory32Window.lowerBound..<root.memory32Window.upperBound + 1,
                                   memory64: root.memory64Window.map { $0.lowerBound..<$0.upperBound + 1 } ?? 0..<0)
    }

    /// aio=io_uring for raw files and qcow2 images (whose allocated clusters the ring reads and
    /// writes directly; the rest of qcow2's work runs on the worker pool); aio=threads or native
    /// use the worker pool.
    private func makeExecutor(_ drive: DriveConfiguration, backend: BlockDevice, pool: WorkerPool, loop: EventLoop,
                              iothread: IOThread?) throws -> VirtioRequestExecutor {
        if drive.aio == .io_uring, backend is RawFileDevice || backend is DirectMappedBlockDevice {
            do {
                let e = try IoUringExecutor(pool: pool, loop: loop) { fd, handler in
                    var failure: Error?
                    let add = { do { try loop.addReadable(fd: fd, handler) } catch { failure = error } }
                    if let iothread { iothread.runSync(add) } else { add() }
                    if let failure { throw failure }
                }
                drains.append { e.waitUntilIdle() }
                return e
            } catch {
                throw ConfigurationError("-drive file=\(drive.file): \(error)")
            }
        }
        let e = WorkerPoolExecutor(pool: pool, loop: loop)
        drains.append { e.waitUntilIdle() }
        return e
    }

    /// The iothreads running devices, by id.
    var iothreadThreads: [(id: String, threadID: Int32, polling: PollParameters)] {
        iothreads.values.sorted { $0.id < $1.id }.map { ($0.id, $0.threadID, $0.loop.pollParameters) }
    }

    private func startIOThread(_ id: String) throws -> IOThread {
        if let t = iothreads[id] { return t }
        let t = try IOThread(id: id, polling: iothreadPolling[id] ?? PollParameters())
        try t.start()
        iothreads[id] = t
        return t
    }

    /// Waits until no block request is reading or writing guest memory (vCPUs stopped, before a
    /// machine reset wipes RAM; QEMU drains all block I/O there too). Call without the big lock.
    /// Devices on iothreads stop taking requests first (their threads keep running); `reset`
    /// lets them go again.
    func drainRequests() {
        for dev in virtio where dev.ioThreadContext != nil { dev.quiesce() }
        for d in drains { d() }
    }

    /// A vhost back-end (the kernel's vhost-net or vhost-vsock, a vhost-user process) writes
    /// guest RAM on its own: its rings are stopped before a machine reset discards that RAM, so
    /// nothing lands in the next boot's memory. The device resets again with the bus. Big lock held.
    func stopVhostBackendsLocked() {
        for dev in virtio where dev.device is VhostKernelDevice || dev.device is VhostNetDevice || dev.device is VhostUserDevice {
            dev.device.reset()
        }
    }

    /// QMP stop/cont: device queue processing stops and resumes with the vCPUs. Big lock held.
    func setQueuesPausedLocked(_ paused: Bool) {
        for dev in virtio { dev.setQueuesPaused(paused) }
    }

    /// Machine reset with the big lock held: headers back to power-on, then BARs placed again.
    func reset() {
        bridge.reset()
        try? assignResources()
    }

    /// Hands the running accelerator's ioeventfd/irqfd hooks to the virtio devices, or takes
    /// them back (nil) before that accelerator's VM goes away. Call with the big lock held.
    func setIOEventsLocked(_ accelerator: IOEventAccelerator?) {
        for (i, dev) in virtio.enumerated() {
            dev.ioEvents = ioeventfdAllowed[i] ? accelerator.map { VirtioNotifyAcceleration(accelerator: $0, loop: ownerLoops[i]) } : nil
        }
    }

    /// KEEL_DEBUG_VIRTIO=1: per device, how its notifications and interrupts travelled.
    private var reported = false
    func reportStatistics() {
        guard !reported, getenv("KEEL_DEBUG_VIRTIO") != nil else { return }
        reported = true
        for (i, dev) in virtio.enumerated() {
            let s = dev.statistics
            var line = "keel: virtio-pci \(i) (type \(dev.device.deviceType)): notify trapped \(s.trappedNotifies) eventfd \(s.eventFDNotifies); "
            line += "msi ioctl \(s.msiByController) irqfd \(s.msiByIRQFD); routes set \(s.msiRouteUpdates); "
            line += "notify thread '\(dev.notifyThreadName ?? "")' iothread notifies \(s.iothreadNotifies)"
            if let ring = rings[i] { line += "; io_uring operations \(ring.ringOperations) submissions \(ring.ringSubmissions)" }
            if let blk = dev.device as? VirtioBlock { line += "; merged requests \(blk.mergedRequests)" }
            line += "\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
    }

    func close() {
        for t in iothreads.values { t.stop() }
        if !reported, getenv("KEEL_DEBUG_VIRTIO") != nil {
            for t in iothreads.values.sorted(by: { $0.id < $1.id }) {
                let p = t.loop.pollStatistics, w = t.loop.pollParameters
                var line = "keel: iothread \(t.id): poll-max-ns \(w.maxNanoseconds) window \(t.loop.pollNanoseconds) ns; "
                line += "polls that found work \(p.successes), ran out \(p.timeouts), found on re-arming \(p.foundWhenEnding)\n"
                line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            }
        }
        iothreads.removeAll()
        reportStatistics()
        workers?.shutdown()
        workers = nil
        for b in backends { b.close() }
        backends.removeAll()
        for n in nics { n.close() }
        nics.removeAll()
    }
}

/// Opens a drive's image with the Block target's backends: the format given (or probed), the
/// cache mode, read-only when asked. Errors name the file.
func openDriveBackend(_ d: DriveConfiguration) throws -> BlockDevice {
    var format: ImageFormat? = nil
    if let f = d.format {
        guard let known = ImageFormat(rawValue: f) else {
            throw ConfigurationError("-drive file=\(d.file): format=\(f) is not supported (raw or qcow2)")
        }
        format = known
    }
    guard let cache = CacheMode(rawValue: d.cache.rawValue) else {
        throw ConfigurationError("-drive file=\(d.file): cache=\(d.cache.rawValue) is not supported")
    }
    do {
        return try openImage(path: d.file, options: ImageOpenOptions(format: format, readOnly: d.readOnly, cache: cache))
    } catch {
        throw ConfigurationError("-drive file=\(d.file): \(error)")
    }
}

/// MSI-X messages to whichever interrupt controller is current (kvm's or tcg's).
final class MSIRouting: MSIController {
    unowned let routing: InterruptRouting
    init(_ routing: InterruptRouting) { self.routing = routing }
    func signalMSI(address: UInt64, data: UInt32) { routing.controller?.signalMSI(address: address, data: data) }
}
