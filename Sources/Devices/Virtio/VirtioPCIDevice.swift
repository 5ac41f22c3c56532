import Glibc
import Memory
import Loop

/// The virtio-pci modern transport (virtio 1.2 §4.1): a PCI function (vendor 0x1AF4, device
/// 0x1040 + type) whose vendor capabilities point at the common, ISR, device and notify
/// structures in BAR 4, with MSI-X (one vector per queue plus one for config changes) in BAR 1.
public final class VirtioPCIDevice: PCIDevice, VirtioTransport {
    public static let msixBar = 1
    public static let virtioBar = 4
    static let commonOffset: UInt64 = 0x0000, isrOffset: UInt64 = 0x1000
    static let deviceOffset: UInt64 = 0x2000, notifyOffset: UInt64 = 0x3000
    static let regionSize: UInt64 = 0x1000
    public static let notifyMultiplier: UInt64 = 4
    static let offeredTransportFeatures = Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex
    // virtio_pci_cap cfg_type values (§4.1.4).
    static let capCommon: UInt8 = 1, capNotify: UInt8 = 2, capISR: UInt8 = 3, capDevice: UInt8 = 4

    public let pci: PCIFunction
    public let msix: PCIMSIX
    public let device: VirtioDevice
    public let memory: GuestMemory
    public private(set) var queues: [SplitVirtqueue]
    public let offeredFeatures: UInt64
    public private(set) var driverFeatures: UInt64 = 0
    public private(set) var status: UInt8 = 0
    public private(set) var configGeneration: UInt8 = 0
    var deviceFeatureSelect: UInt32 = 0
    var driverFeatureSelect: UInt32 = 0
    var queueSelect: UInt16 = 0
    public private(set) var configVector: UInt16 = Virtio.noVector
    var isr: UInt8 = 0
    /// The driver wrote 0 while requests were in flight: the reset finishes when they drain.
    var resetPending = false
    public private(set) var lastError: VirtqueueError?
    private var reportedNeedsReset = false
    private var _ioEvents: VirtioNotifyAcceleration?
    /// Where queue notifications can arrive without an exit (kvm's ioeventfd), if anywhere.
    /// Set with the big lock held.
    public var ioEvents: VirtioNotifyAcceleration? {
        get { _ioEvents }
        set {
            onOwner {
                _ioEvents = newValue
                ioEventsChanged()
            }
            msiRoutesChanged()
        }
    }
    var notifyBinding: VirtioNotifyBinding?
    /// The MSI-X vectors currently raised through irqfds rather than by asking the controller.
    var msiBinding: VirtioMSIBinding?
    let counters = VirtioPCICounters()
    /// How notifications and interrupts travelled (KEEL_DEBUG_VIRTIO, tests).
    public var statistics: VirtioPCIStatistics { counters.snapshot }
    /// The thread that handled the first notify (KEEL_DEBUG_VIRTIO: "iothread io0" with one).
    public internal(set) var notifyThreadName: String?
    /// The iothread owning the queues, with the big lock and main loop; nil: the main loop owns
    /// them, under the big lock. Set once, before the guest runs.
    public private(set) var ioThreadContext: VirtioIOThreadContext?
    /// Depth of `onOwner` calls running on the iothread for a big-lock holder.
    var ownerSyncDepth = 0
    let vectors = VirtioVectorState()
    /// QMP stop: no chains are taken from the rings (owner state).
    var isPaused = false
    /// Between a machine reset's drain and the reset itself (owner state).
    var isQuiesced = false

    public init(device: VirtioDevice, memory: GuestMemory, msiController: MSIController?) {
        self.device = device
        self.memory = memory
        queues = device.queueMaxSizes.map { SplitVirtqueue(maxSize: $0) }
        offeredFeatures = device.deviceFeatures | (device.transportFeatures & Self.offeredTransportFeatures)
        let pci = PCIFunction(vendorID: 0x1AF4, deviceID: 0x1040 &+ device.deviceType, classCode: device.pciClassCode,
                          revision: 1, subsystemVendorID: 0x1AF4, subsystemID: 0x1100, interruptPin: 1)
        func cap(_ type: UInt8, _ offset: UInt64, _ length: UInt64, extra: [UInt8] = []) {
            // cap_len, cfg_type, bar, id, padding[2], offset, length (+ notify_off_multiplier).
            var body: [UInt8] = [UInt8(4 + 12 + extra.count), type, UInt8(Self.virtioBar), 0, 0, 0]
            for v in [UInt32(offset), UInt32(length)] { for i in 0..<4 { body.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
            pci.addCapability(id: PCIConfig.capabilityVendor, body: body + extra)

        }
        cap(Self.capCommon, Self.commonOffset, Self.regionSize)
        cap(Self.capISR, Self.isrOffset, Self.regionSize)
        cap(Self.capDevice, Self.deviceOffset, Self.regionSize)
        let m = UInt32(Self.notifyMultiplier)
        cap(Self.capNotify, Self.notifyOffset, Self.regionSize, extra: (0..<4).map { UInt8(truncatingIfNeeded: m >> (8 * UInt32($0))) })
        let msix = PCIMSIX(function: pci, vectors: device.queueMaxSizes.count + 1, bar: Self.msixBar)
        msix.controller = msiController
        self.pci = pci
        self.msix = msix
        pci.setBar(Self.msixBar, PCIBar(kind: .memory32, size: msix.barSize, region: PCIMSIXRegion(msix), name: "virtio-msix"))
        pci.setBar(Self.virtioBar, PCIBar(kind: .memory32, size: 4 * Self.regionSize, region: VirtioPCIRegisters(self), name: "virtio-pci"))
        pci.barMoved = { [unowned self] i, _ in if i == Self.virtioBar { self.onOwner { self.ioEventsChanged() } } }
        msix.vectorsChanged = { [unowned self] in self.msiRoutesChanged() }
    }

    /// Gives the queues to `context.iothread` (before the guest runs; the device keeps it).
    public func assign(to context: VirtioIOThreadContext) {
        ioThreadContext = context
    }

    /// With the big lock held (machine reset).
    public func pciReset() {
        onOwner {
            resetDevice()
            resetPending = false
            isQuiesced = false
        }
        msix.reset()
    }

    public var isProcessing: Bool { status & Virtio.statusDriverOK != 0 && status & Virtio.statusNeedsReset == 0 && !resetPending }
    public var acceptsRequests: Bool { isProcessing && !isPaused && !isQuiesced }

    /// The guest address of queue `index`'s notify register (while BAR 4 decodes).
    public func notifyAddress(queue index: Int) -> UInt64? {
        pci.mappedAddresses[Self.virtioBar].map { $0 + Self.notifyOffset + Self.notifyMultiplier * UInt64(index) }
    }

    // MARK: VirtioTransport

    public func complete(queue index: Int, head: UInt16, length: UInt32) {
        guard !resetPending, status & Virtio.statusDriverOK != 0, index >= 0, index < queues.count else { return }
        let q = queues[index]
        do {
            try q.pushUsed(memory, head: head, length: length)
            if try q.needsInterrupt(memory) { interrupt(vector: q.msixVector, isrBit: 1) }
        } catch {
            deviceNeedsReset(error)
        }
    }

    public func complete(queue index: Int, used: [(head: UInt16, length: UInt32)]) {
        guard !resetPending, status & Virtio.statusDriverOK != 0, index >= 0, index < queues.count, !used.isEmpty else { return }
        let q = queues[index]
        do {
            try q.pushUsed(memory, elements: used)
            if try q.needsInterrupt(memory) { interrupt(vector: q.msixVector, isrBit: 1) }
        } catch {
            deviceNeedsReset(error)
        }
    }

    public func deviceNeedsReset(_ why: VirtqueueError) {
        lastError = why
        guard status & Virtio.statusNeedsReset == 0 else { return }
        if !reportedNeedsReset {
            // Once per device: a guest that keeps breaking its rings cannot flood the log.
            reportedNeedsReset = true
            var line = "keel: virtio device (type \(device.deviceType)) needs a reset: \(why)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        status |= Virtio.statusNeedsReset
        if status & Virtio.statusDriverOK != 0 { interrupt(vector: configVector, isrBit: 2) }
    }

    public func configChanged() {
        configGeneration &+= 1
        if status & Virtio.statusDriverOK != 0 { interrupt(vector: configVector, isrBit: 2) }
    }

    public func requestsDrained() {
        if resetPending && device.inflightRequests == 0 {
            resetPending = false
            resetDevice()
        }
    }

    /// Queue interrupts and config changes: the MSI-X vector, or INTx with the ISR bit (§4.1.4.5).
    /// With the big lock held (see `interrupt` for the owner's side).
    func interruptLocked(vector: UInt16, isrBit: UInt8) {
        if msix.isEnabled {
            guard vector != Virtio.noVector else { return }
            // A routed vector is unmasked by construction: masking it withdraws the route, so
            // the pending-bit rules below stay with PCIMSIX.
            if let fd = msiBinding?.eventFD(vector: Int(vector)) {
                counters.msiByIRQFD.add(1, ordering: .relaxed)
                fd.signal()
            } else {
                counters.msiByController.add(1, ordering: .relaxed)
                msix.notify(vector: Int(vector))
            }
        } else {
            isr |= isrBit
            pci.setINTx(true)
        }
    }

    // MARK: status and reset

    /// On the queues' owner.
    func resetDevice() {
        device.reset()
        for q in queues { q.reset() }
        status = 0
        driverFeatures = 0
        deviceFeatureSelect = 0; driverFeatureSelect = 0; queueSelect = 0
        configVector = Virtio.noVector
        lastError = nil
        ioEventsChanged()
        vectors.used.withLock { $0.removeAll() }
        withBigLockState { [weak self] in
            guard let self else { return }
            self.isr = 0
            self.pci.setINTx(false)
            self.msiRoutesChanged()
        }
    }

    func writeStatus(_ value: UInt8) {
        if value == 0 {
            if device.inflightRequests > 0 { resetPending = true } else { resetDevice() }
            return
        }
        var new = value | (status & Virtio.statusNeedsReset)
        let rising = new & ~status
        if rising & Virtio.statusFeaturesOK != 0 {
            let acceptable = driverFeatures & ~offeredFeatures == 0 && driverFeatures & Virtio.featureVersion1 != 0
            if !acceptable { new &= ~Virtio.statusFeaturesOK }
        }
        if rising & Virtio.statusDriverOK != 0 && new & Virtio.statusFeaturesOK == 0 { new &= ~Virtio.statusDriverOK }
        status = new
        if rising & Virtio.statusDriverOK != 0 && new & Virtio.statusDriverOK != 0 {
            for q in queues {
                q.eventIndex = driverFeatures & Virtio.featureEventIndex != 0
                q.indirectDescriptors = driverFeatures & Virtio.featureIndirectDescriptors != 0
            }
            ioEventsChanged()
            device.activate(self)
        }
    }

    func validVector(_ v: UInt16) -> UInt16 { Int(v) < msix.vectorCount ? v : Virtio.noVector }

    var selectedQueue: SplitVirtqueue? { Int(queueSelect) < queues.count ? queues[Int(queueSelect)] : nil }

    // MARK: common configuration structure (§4.1.4.3)

    func readCommon(_ offset: UInt64, _ width: Int) -> UInt64 {
        let q = selectedQueue
        switch (offset, width) {
        case (0x00, 4): return UInt64(deviceFeatureSelect)
        case (0x04, 4): return deviceFeatureSelect < 2 ? (offeredFeatures >> (32 * UInt64(deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case (0x08, 4): return UInt64(driverFeatureSelect)
        case (0x0C, 4): return driverFeatureSelect < 2 ? (driverFeatures >> (32 * UInt64(driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case (0x10, 2): return UInt64(configVector)
        case (0x12, 2): return UInt64(queues.count)
        case (0x14, 1): return UInt64(resetPending ? max(status, 1) : status)
        case (0x15, 1): return UInt64(configGeneration)
        case (0x16, 2): return UInt64(queueSelect)
        case (0x18, 2): return UInt64(q?.size ?? 0)
        case (0x1A, 2): return UInt64(q?.msixVector ?? Virtio.noVector)
        case (0x1C, 2): return q?.isReady == true ? 1 : 0
        case (0x1E, 2): return q == nil ? 0 : UInt64(queueSelect)
        case (0x20...0x37, 4), (0x20...0x37, 8):
            guard let q, offset % UInt64(width) == 0 || width == 4 && offset % 4 == 0 else { return 0 }
            let field = offset < 0x28 ? q.descriptorTable : offset < 0x30 ? q.driverArea : q.deviceArea
            return width == 8 ? field : (field >> (offset % 8 == 4 ? 32 : 0)) & 0xFFFF_FFFF
        default: return 0
        }
    }

    func writeCommon(_ offset: UInt64, _ width: Int, _ value: UInt64) {
        let v32 = UInt32(truncatingIfNeeded: value), v16 = UInt16(truncatingIfNeeded: value)
        let q = selectedQueue
        switch (offset, width) {
        case (0x00, 4): deviceFeatureSelect = v32
        case (0x08, 4): driverFeatureSelect = v32
        case (0x0C, 4):
            guard status & Virtio.statusFeaturesOK == 0, driverFeatureSelect < 2 else { return }
            let shift = 32 * UInt64(driverFeatureSelect)
            driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | UInt64(v32) << shift
        case (0x10, 2): configVector = validVector(v16); vectorsAssigned()
        case (0x14, 1): writeStatus(UInt8(truncatingIfNeeded: value))
        case (0x16, 2): queueSelect = v16
        case (0x18, 2): if let q, !q.isReady, q.isAcceptableSize(v16) { q.size = v16 }
        case (0x1A, 2): if let q { q.msixVector = validVector(v16); vectorsAssigned() }
        case (0x1C, 2):
            guard let q, v16 == 1, !q.isReady else { return }
            do {
                try q.validate(memory)
                q.isReady = true
                ioEventsChanged()
            } catch {
                deviceNeedsReset(error)
            }
        case (0x20...0x37, 4), (0x20...0x37, 8):
            guard let q, !q.isReady, offset % 4 == 0, width == 4 || offset % 8 == 0 else { return }
            func merge(_ old: UInt64) -> UInt64 {
                if width == 8 { return value }
                return offset % 8 == 4 ? (old & 0xFFFF_FFFF) | UInt64(v32) << 32 : (old & ~0xFFFF_FFFF) | UInt64(v32)
            }
            if offset < 0x28 { q.descriptorTable = merge(q.descriptorTable) }
            else if offset < 0x30 { q.driverArea = merge(q.driverArea) }
            else { q.deviceArea = merge(q.deviceArea) }
        default: break
        }
    }

    /// Reading the ISR acknowledges it and lowers INTx (§4.1.4.5).
    func readISR() -> UInt8 {
        let v = isr
        isr = 0
        pci.setINTx(false)
        return v
    }

    /// A write to queue `index`'s notify register (the value is the queue index; the offset says
    /// it), on the queues' owner.
    public func notify(queue index: Int) {
        if let t = ioThreadContext?.iothread, t.isCurrent {
            counters.iothreadNotifies.add(1, ordering: .relaxed)
            if notifyThreadName == nil { notifyThreadName = Self.currentThreadName() }
        } else if notifyThreadName == nil {
            notifyThreadName = Self.currentThreadName()
        }
        guard acceptsRequests, index >= 0, index < queues.count, queues[index].isReady else { return }
        device.queueNotified(index)
    }
}

/// BAR 4: common, ISR, device-specific and notify structures, one 4 KiB page each.
final class VirtioPCIRegisters: BusDevice {
    unowned let transport: VirtioPCIDevice
    init(_ t: VirtioPCIDevice) { transport = t }

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let page = offset / VirtioPCIDevice.regionSize, within = offset % VirtioPCIDevice.regionSize
        switch page {
        case 0:
            var v: UInt64 = 0
            transport.onOwner { v = transport.readCommon(within, data.count) }
            data.storeLittleEndian(v)
        case 1: data.storeLittleEndian(within == 0 ? UInt64(transport.readISR()) : 0)
        case 2: transport.onOwner { transport.device.readConfig(offset: Int(within), data: data) }
        default: data.storeLittleEndian(0)
        }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let page = offset / VirtioPCIDevice.regionSize, within = offset % VirtioPCIDevice.regionSize
        switch page {
        case 0:
            let v = data.littleEndianValue
            transport.onOwner { transport.writeCommon(within, data.count, v) }
        case 2: transport.onOwner { transport.device.writeConfig(offset: Int(within), data: data) }
        case 3:
            guard within % VirtioPCIDevice.notifyMultiplier == 0 else { return }
            transport.counters.trappedNotifies.add(1, ordering: .relaxed)
            let queue = Int(within / VirtioPCIDevice.notifyMultiplier)
            // tcg (or ioeventfd=off) with an iothread: the notify is posted to it, as an
            // ioeventfd signal would wake it.
            if let t = transport.ioThreadContext?.iothread {
                t.post { [weak transport = self.transport] in transport?.notify(queue: queue) }
            } else {
                transport.notify(queue: queue)
            }
        default: break
        }
    }
}
