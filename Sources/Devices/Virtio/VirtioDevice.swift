import Loop
import Memory

/// Feature bits and status bits shared by every virtio device (virtio 1.2 §2.1, §6).
public enum Virtio {
    public static let featureIndirectDescriptors: UInt64 = 1 << 28
    public static let featureEventIndex: UInt64 = 1 << 29
    public static let featureVersion1: UInt64 = 1 << 32

    public static let statusAcknowledge: UInt8 = 1
    public static let statusDriver: UInt8 = 2
    public static let statusDriverOK: UInt8 = 4
    public static let statusFeaturesOK: UInt8 = 8
    public static let statusNeedsReset: UInt8 = 64
    public static let statusFailed: UInt8 = 128

    public static let noVector: UInt16 = 0xFFFF
}

/// A virtio device model (blk, rng, console...), independent of the transport. It runs on the
/// loop that owns it: notifications, completions and resets all arrive there.
public protocol VirtioDevice: AnyObject {
    /// Virtio device ID (§5): 2 block, 3 console, 4 entropy.
    var deviceType: UInt16 { get }
    /// Device-specific feature bits; the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX.
    var deviceFeatures: UInt64 { get }
    /// The transport feature bits offered besides `deviceFeatures` (VERSION_1, INDIRECT_DESC and
    /// EVENT_IDX for Keel's own devices; a vhost-user device offers only what its back-end does).
    var transportFeatures: UInt64 { get }
    /// The maximum size of each queue; the count is the device's number of queues.
    var queueMaxSizes: [UInt16] { get }
    /// PCI class code (base, sub, prog-if) for the transport's header.
    var pciClassCode: UInt32 { get }
    /// The device-specific configuration structure; `offset` and width are guest-chosen.
    func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer)
    /// The driver set DRIVER_OK: `transport` has the negotiated features and ready queues.
    func activate(_ transport: VirtioTransport)
    /// The driver notified queue `index` (new available buffers).
    func queueNotified(_ index: Int)
    /// An eventfd that someone other than Keel reads for queue `index`'s notifications (a vhost
    /// back-end's kick): under kvm the notify register signals it directly (ioeventfd).
    func queueNotifyEventFD(_ index: Int) -> EventFD?
    /// The transport's irqfds changed (MSI-X programmed, masked, moved): a device whose
    /// interrupts come from elsewhere (a vhost back-end's call) re-points them.
    func interruptRoutesChanged()
    /// A vhost-user back-end's transport started, stopped, enabled or disabled queue `index`.
    func queueReadinessChanged(_ index: Int)
    /// QMP stop/cont: a device whose rings another party moves (vhost) stops and restarts them.
    func setBackendPaused(_ paused: Bool)
    /// Whether an iothread owning the device polls its queues before sleeping (block devices;
    /// not queues whose available buffers wait for host data, such as a receive queue).
    var pollsQueues: Bool { get }
    /// Requests handed to another thread that still touch guest memory; a reset waits for them.
    var inflightRequests: Int { get }
    /// Forget every request and queue-derived state (the transport resets the queues themselves).
    func reset()
}

extension VirtioDevice {
    public func queueNotifyEventFD(_ index: Int) -> EventFD? { nil }
    public func interruptRoutesChanged() {}
    public func queueReadinessChanged(_ index: Int) {}
    public func setBackendPaused(_ paused: Bool) {}
    public var pollsQueues: Bool { false }
    public var transportFeatures: UInt64 { Virtio.featureVersion1 | Virtio.featureIndirectDescriptors | Virtio.featureEventIndex }
}

/// What a transport offers the device behind it.
public protocol VirtioTransport: AnyObject {
    var memory: GuestMemory { get }
    var queues: [SplitVirtqueue] { get }
    var driverFeatures: UInt64 { get }
    /// Puts a chain on the used ring and interrupts the driver if it asked for it.
    func complete(queue: Int, head: UInt16, length: UInt32)
    /// Puts several chains on the used ring behind one index update, then interrupts once if asked.
    func complete(queue: Int, used: [(head: UInt16, length: UInt32)])
    /// The driver broke the rules: NEEDS_RESET, and no more queue processing until a reset.
    func deviceNeedsReset(_ why: VirtqueueError)
    /// The device's configuration changed (config generation, config interrupt).
    func configChanged()
    /// The last in-flight request finished (a pending reset may now complete).
    func requestsDrained()
    /// False once the device needs a reset or is being reset: its buffers are not the device's.
    var isProcessing: Bool { get }
    /// False also while the machine is stopped (QMP stop): take no new chains, but requests in
    /// flight still complete.
    var acceptsRequests: Bool { get }
}

extension VirtioTransport {
    public var acceptsRequests: Bool { isProcessing }
}

extension VirtioTransport {
    /// For transports without a batch path: one chain at a time.
    public func complete(queue: Int, used: [(head: UInt16, length: UInt32)]) {
        for u in used { complete(queue: queue, head: u.head, length: u.length) }
    }

    /// Drains queue `index` with `handle`, re-enabling notifications before sleeping and looking
    /// again if the driver added chains meanwhile (the race virtio_ring's callers close this way).
    public func processQueue(_ index: Int, _ handle: (DescriptorChain) -> Void) {
        guard index >= 0, index < queues.count else { return }
        let q = queues[index]
        guard q.isReady else { return }
        do throws(VirtqueueError) {
            if q.notificationsPolled {
                // The loop polls this queue: notifications stay off until it sleeps.
                while acceptsRequests, let chain = try q.pop(memory) { handle(chain) }
                return
            }
            var again = true
            while again && acceptsRequests {
                try q.setNotification(memory, enabled: false)
                while acceptsRequests, let chain = try q.pop(memory) { handle(chain) }
                again = try q.setNotification(memory, enabled: true)
            }
        } catch {
            deviceNeedsReset(error)
        }
    }
}
