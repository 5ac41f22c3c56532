import Glibc
import Loop
import Memory

/// A virtio device whose first rings are served by Linux's vhost (drivers/vhost): /dev/vhost-net
/// or /dev/vhost-vsock. Keel decides the guest's view (features, config space) and at DRIVER_OK
/// hands over, as QEMU's vhost_dev_start does: SET_FEATURES (what the driver acked of what the
/// kernel offers), SET_MEM_TABLE, then each ring (`VhostRings`), then the device's own start
/// (vhost-net's tap per ring, vhost-vsock's SET_RUNNING). A reset runs it backwards and asks each
/// ring's base. Queues past the handed-over ones (vsock's event queue) stay with `keptQueue`.
public final class VhostKernelDevice: VirtioDevice {
    /// The device-specific start and stop around the ring handover.
    public struct Hooks {
        public var start: (VhostKernelDevice) throws(VhostKernelError) -> Void
        public var stop: (VhostKernelDevice) throws(VhostKernelError) -> Void
        public init(start: @escaping (VhostKernelDevice) throws(VhostKernelError) -> Void,
                    stop: @escaping (VhostKernelDevice) throws(VhostKernelError) -> Void) {
            self.start = start; self.stop = stop
        }
    }

    public let deviceType: UInt16
    public let pciClassCode: UInt32
    public let deviceFeatures: UInt64
    public let transportFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public var inflightRequests: Int { 0 }
    /// What the driver acked (0 before DRIVER_OK).
    public var driverFeatures: UInt64 { vhostRings.transport?.driverFeatures ?? 0 }
    /// The vhost devices (vhost-net: one per queue pair), each already owned (SET_OWNER).
    public let vhosts: [VhostKernelFD]
    /// What the kernel offered (VHOST_GET_FEATURES), the same for every fd.
    public let kernelFeatures: UInt64
    /// Bits Keel asks for besides the driver's (VHOST_NET_F_VIRTIO_NET_HDR for a tap without a vnet header).
    public let backendFeatures: UInt64
    public let memory: GuestMemory
    let hooks: Hooks
    let vhostRings: VhostRings<VhostKernelFD>
    /// VHOST_SET_VRING_ERR: the kernel signals a ring it could not use (a bad descriptor).
    var config: [UInt8]
    public private(set) var started = false
    /// QMP stop: stopped until cont, which starts it again if it was running.
    var paused = false
    var resumeAfterPause = false
    /// The queues Keel keeps (past the handed-over rings): notified here, never the kernel's.
    public var keptQueue: ((Int) -> Void)?
    /// One line per failure (default stderr).
    public var log: (String) -> Void = { line in
        let s = "keel: vhost: " + line + "\n"
        s.withCString { _ = write(2, $0, strlen($0)) }
    }
    /// Ring errors the kernel reported (tests, debugging).
    public private(set) var ringErrors = 0

    /// `rings`: per handed-over device queue, the vhost fd and its ring index there.
    /// `keptQueueCount` more queues follow them with Keel.
    public init(deviceType: UInt16, pciClassCode: UInt32, deviceFeatures: UInt64, config: [UInt8], vhosts: [VhostKernelFD],
                rings: [(vhost: Int, index: UInt32)], keptQueueCount: Int = 0, queueSize: UInt16, backendFeatures: UInt64 = 0,
                hooks: Hooks, memory: GuestMemory, loop: EventLoop) throws {
        precondition(!vhosts.isEmpty && queueSize.nonzeroBitCount == 1 && rings.allSatisfy { vhosts.indices.contains($0.vhost) })
        var offered = UInt64.max
        for v in vhosts {
            try v.setOwner()
            offered &= try v.features()
        }
        kernelFeatures = offered
        guard offered & Virtio.featureVersion1 != 0 else {
            throw VhostKernelError("\(vhosts[0].path) does not offer VIRTIO_F_VERSION_1 (features 0x\(String(offered, radix: 16)))")
        }
        self.deviceType = deviceType
        self.pciClassCode = pciClassCode
        // Device bits the kernel handles must be the kernel's; the rest are Keel's own choice.
        self.deviceFeatures = deviceFeatures
        transportFeatures = offered & (Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex)
        queueMaxSizes = Array(repeating: queueSize, count: rings.count + keptQueueCount)
        self.vhosts = vhosts
        self.backendFeatures = backendFeatures
        self.config = config
        self.memory = memory
        self.hooks = hooks
        vhostRings = try VhostRings(rings: rings.map { .init(backend: vhosts[$0.vhost], index: $0.index) }, loop: loop)
        vhostRings.errorReported = { [unowned self] i in
            self.ringErrors += 1
            // The guest can repeat the fault at will: one line, then only the count.
            if self.ringErrors == 1 {
                let r = self.vhostRings.rings[i]
                self.log("\(r.backend.path): ring \(r.index) (queue \(i)) reported an error (the guest's ring is malformed)")
            }
        }
    }

    /// The features SET_FEATURES carries: what the driver acked among the kernel's, with Keel's
    /// back-end bits; never logging or IOTLB (Keel offers neither).
    public static func vhostFeatures(driver: UInt64, kernel: UInt64, backend: UInt64) -> UInt64 {
        (driver & kernel | backend) & ~(VhostFeature.logAll | VhostFeature.accessPlatform)
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { readConfigBytes(config, offset: offset, into: data) }

    /// Both config spaces here are read-only for the driver (virtio-net §5.1.4.2, vsock §5.10.4).
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(_ transport: VirtioTransport) {
        guard let t = transport as? VirtioPCIDevice else { return }
        vhostRings.transport = t
        if !paused { start(t) }
    }

    /// As QEMU's vm_stop: the device stopped and each ring's base read; on cont the same start
    /// as at DRIVER_OK, from those bases.
    public func setBackendPaused(_ paused: Bool) {
        guard paused != self.paused else { return }
        self.paused = paused
        if paused {
            resumeAfterPause = started
            stop()
        } else if resumeAfterPause, let t = vhostRings.transport {
            resumeAfterPause = false
            start(t)
        }
    }

    func start(_ t: VirtioPCIDevice) {
        do throws(VhostKernelError) {
            let features = Self.vhostFeatures(driver: t.driverFeatures, kernel: kernelFeatures, backend: backendFeatures)
            let table = VhostMemoryRegion.regions(of: memory)
            for v in vhosts {
                try v.setFeatures(features)
                try v.setMemoryTable(table)
            }
            try vhostRings.start(t, memory: memory)
            try hooks.start(self)
            started = true
        } catch {
            log("cannot start: \(error)")
            stop()
        }
    }

    public func interruptRoutesChanged() {
        do { try vhostRings.interruptRoutesChanged() } catch { log("\(error)") }
    }

    public func queueNotifyEventFD(_ index: Int) -> EventFD? { vhostRings.queueNotifyEventFD(index) }

    public func queueNotified(_ index: Int) {
        if index >= vhostRings.count { keptQueue?(index) } else { vhostRings.notify(index) }
    }

    public func reset() {
        stop()
        resumeAfterPause = false
        vhostRings.forget()
        vhostRings.transport = nil
    }

    /// The device's own stop first (the tap detached, vsock not running), then each ring's base.
    func stop() {
        if started || vhostRings.anyRunning {
            do { try hooks.stop(self) } catch { log("\(error)") }
        }
        started = false
        do { try vhostRings.stop() } catch { log("\(error)") }
    }
}

extension VhostKernelDevice: VhostNetRings {
    public func setStationAddress(_ mac: [UInt8]) {
        VirtioNetConfig.setStationAddress(mac, in: &config)
    }

    /// Keel's vhost-net carries one pair: nothing to enable or disable.
    public func setQueuePairs(usable: Int, active: Int) {}
}
