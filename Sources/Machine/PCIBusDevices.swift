import Block
import Devices
import Loop

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
    private var backends: [BlockDevice] = []
    private var workers: WorkerPool?

    init(board: PCBoard) throws {
        let c = board.configuration
        let highEnd = PCMemoryMap.highRAMBase + board.map.highRAMSize
        let m64Base = (highEnd + PCMemoryMap.gibibyte - 1) & ~(PCMemoryMap.gibibyte - 1)
        root = PCIRootConfiguration(ecamBase: Self.ecamBase, busCount: Self.busCount, ioWindow: Self.ioWindow,
                                    memory32Window: Self.memory32Window, memory64Window: m64Base...(m64Base + Self.memory64Size - 1))
        bridge = PCIHostBridge(pio: board.pioBus, mmio: board.mmioBus)
        msi = MSIRouting(board.interrupts)
        try bridge.attach(ecamBase: Self.ecamBase, busCount: Self.busCount)
        do {
            for d in c.pciDevices {
                let model: VirtioDevice
                switch d {
                case .virtioBlock(let b):
                    guard let drive = c.drives.first(where: { $0.id == b.drive }) else {
                        throw ConfigurationError("virtio-blk-pci: no -drive with id=\(b.drive)")
                    }
                    let backend = try openDriveBackend(drive)
                    backends.append(backend)
                    if workers == nil { workers = WorkerPool(threads: 4) }
                    var v = VirtioBlock.Configuration()
                    v.queueCount = b.queueCount; v.queueSize = b.queueSize; v.serial = b.serial; v.readOnly = drive.readOnly
                    model = VirtioBlock(backend: backend, configuration: v,
                                        executor: WorkerPoolExecutor(pool: workers!, loop: board.loop))
                case .virtioRNG:
                    model = VirtioRNG()
                }
                let dev = VirtioPCIDevice(device: model, memory: board.memory, msiController: msi)
                let slot = try bridge.plug(dev)
                dev.pci.intxLine = board.interrupts.line(root.intxGSI(slot: slot, pin: 0))
                virtio.append(dev)
            }
            try assignResources()
        } catch {
            close()
            throw error
        }
    }

    func assignResources() throws {
        try bridge.assignResources(io: 0xC000..<0x1_0000,
                                   memory32: root.memory32Window.lowerBound..<root.memory32Window.upperBound + 1,
                                   memory64: root.memory64Window.map { $0.lowerBound..<$0.upperBound + 1 } ?? 0..<0)
    }

    /// Machine reset with the big lock held: headers back to power-on, then BARs placed again.
    func reset() {
        bridge.reset()
        try? assignResources()
    }

    func close() {
        workers?.shutdown()
        workers = nil
        for b in backends { b.close() }
        backends.removeAll()
    }
}

/// Opens a drive's image. The Block target's image backends (raw, qcow2) are merged
/// separately; until then a drive cannot be opened.
func openDriveBackend(_ d: DriveConfiguration) throws -> BlockDevice {
    throw ConfigurationError("-drive file=\(d.file): this build has no image backends yet (the Block target's raw/qcow2 devices)")
}

/// MSI-X messages to whichever interrupt controller is current (kvm's or tcg's).
final class MSIRouting: MSIController {
    unowned let routing: InterruptRouting
    init(_ routing: InterruptRouting) { self.routing = routing }
    func signalMSI(address: UInt64, data: UInt32) { routing.controller?.signalMSI(address: address, data: data) }
}
