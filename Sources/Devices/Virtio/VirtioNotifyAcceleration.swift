import Loop

/// The accelerator hook for virtio's fast paths. Under kvm, a guest write to a queue's notify
/// register signals an eventfd inside the kernel (ioeventfd) and the owning loop wakes without
/// any vCPU exit; an eventfd signal becomes an MSI inside the kernel (irqfd on an MSI GSI route,
/// which kvm's split irqchip needs). Under tcg nothing implements it and the same device code is
/// reached straight from the MMIO write.
public protocol IOEventAccelerator: AnyObject {
    /// Guest writes of `length` bytes at `address` (MMIO) signal `fd` instead of exiting.
    func addIOEvent(fd: Int32, address: UInt64, length: UInt32) throws
    func removeIOEvent(fd: Int32, address: UInt64, length: UInt32)
    /// Signals on `fd` deliver the MSI `address`/`data` in the kernel; call again to move the
    /// route when the guest reprograms the vector, `removeMSIRoute` when it is masked or gone.
    func setMSIRoute(fd: Int32, address: UInt64, data: UInt32) throws
    func removeMSIRoute(fd: Int32)
}

/// Which accelerator and which loop a virtio-pci device's queue notifications are bound to.
public struct VirtioNotifyAcceleration {
    public let accelerator: IOEventAccelerator
    /// The loop that owns the device (the main loop, or an iothread's).
    public let loop: EventLoop
    public init(accelerator: IOEventAccelerator, loop: EventLoop) { self.accelerator = accelerator; self.loop = loop }
}

/// Counters of the paths a device's notifications and interrupts took: with ioeventfd and
/// irqfd working, a busy queue shows eventfd notifies and irqfd MSIs only.
public struct VirtioPCIStatistics: Sendable, Equatable {
    /// Notify writes that exited to Keel and reached BAR 4 through the MMIO bus.
    public var trappedNotifies: UInt64 = 0
    /// Notifies that arrived as an ioeventfd signal on the owning loop.
    public var eventFDNotifies: UInt64 = 0
    /// MSI-X messages raised by asking the interrupt controller (KVM_SIGNAL_MSI, tcg's APIC bus).
    public var msiByController: UInt64 = 0
    /// MSI-X messages raised by signalling an irqfd.
    public var msiByIRQFD: UInt64 = 0
    /// GSI route changes the device asked the accelerator for (each costs a routing commit).
    public var msiRouteUpdates: UInt64 = 0
    /// Notifies handled on the device's iothread (0 without one).
    public var iothreadNotifies: UInt64 = 0
    public init() {}
}

/// The irqfds of one device's MSI-X vectors: a vector has one while MSI-X is enabled, the
/// function and the vector are unmasked and a queue or the config change uses it. Masking or
/// reprogramming moves or withdraws the route at once, so a routed vector never needs PCIMSIX's
/// pending bit.
final class VirtioMSIBinding {
    struct Route { let fd: EventFD; var address: UInt64; var data: UInt32 }
    let accelerator: IOEventAccelerator
    private(set) var routes: [Int: Route] = [:]
    init(_ a: IOEventAccelerator) { accelerator = a }

    func eventFD(vector: Int) -> EventFD? { routes[vector]?.fd }

    /// Returns whether the accelerator was asked for anything.
    @discardableResult
    func route(vector: Int, address: UInt64, data: UInt32) -> Bool {
        if let r = routes[vector], r.address == address, r.data == data { return false }
        guard let fd = routes[vector]?.fd ?? (try? EventFD()) else { return false }
        do {
            try accelerator.setMSIRoute(fd: fd.fd, address: address, data: data)
            routes[vector] = Route(fd: fd, address: address, data: data)
        } catch {
            // The fallback (KVM_SIGNAL_MSI) still delivers the vector.
            unroute(vector: vector)
        }
        return true
    }

    func unroute(vector: Int) {
        guard let r = routes.removeValue(forKey: vector) else { return }
        accelerator.removeMSIRoute(fd: r.fd.fd)
    }

    func unbind() {
        for v in Array(routes.keys) { unroute(vector: v) }
    }
}

/// The ioeventfds currently registered for one device: one per ready queue, at the queue's
/// notify address in BAR 4.
final class VirtioNotifyBinding {
    struct Entry { let queue: Int; let fd: EventFD; let address: UInt64 }
    let acceleration: VirtioNotifyAcceleration
    var entries: [Entry] = []
    /// Queue pollers registered with the owning iothread's loop.
    var pollers: [Int] = []
    init(_ a: VirtioNotifyAcceleration) { acceleration = a }

    func unbind() {
        for id in pollers { acceleration.loop.removePoller(id) }
        pollers.removeAll()
        for e in entries {
            acceleration.accelerator.removeIOEvent(fd: e.fd.fd, address: e.address, length: 2)
            acceleration.loop.remove(fd: e.fd.fd)
        }
        entries.removeAll()
    }
}

extension VirtioPCIDevice {
    /// Re-registers the notify ioeventfds after anything they depend on changed: BAR 4's
    /// address or decode, queue readiness, DRIVER_OK, reset. A failure leaves the trapped path.
    func ioEventsChanged() {
        notifyBinding?.unbind()
        guard let acceleration = ioEvents else { notifyBinding = nil; return }
        let binding = VirtioNotifyBinding(acceleration)
        notifyBinding = binding
        guard status & Virtio.statusDriverOK != 0 else { return }
        for (i, q) in queues.enumerated() where q.isReady {
            if let direct = device.queueNotifyEventFD(i), let address = notifyAddress(queue: i) {
                // Read by a vhost back-end: the guest's notify reaches it without Keel.
                if (try? acceleration.accelerator.addIOEvent(fd: direct.fd, address: address, length: 2)) != nil {
                    binding.entries.append(.init(queue: i, fd: direct, address: address))
                }
                continue
            }
            guard let address = notifyAddress(queue: i), let fd = try? EventFD() else { continue }
            do {
                try acceleration.accelerator.addIOEvent(fd: fd.fd, address: address, length: 2)
                try acceleration.loop.addReadable(fd: fd.fd) { [unowned self, fd] _ in
                    fd.consume()
                    self.counters.eventFDNotifies.add(1, ordering: .relaxed)
                    self.notify(queue: i)
                }
                binding.entries.append(.init(queue: i, fd: fd, address: address))
            } catch {
                acceleration.accelerator.removeIOEvent(fd: fd.fd, address: address, length: 2)
                continue
            }
            if ioThreadContext != nil && device.pollsQueues { binding.pollers.append(acceleration.loop.addPoller(queuePoller(i))) }
        }
    }

    /// The iothread polls queue `index`'s available ring before sleeping, with the driver's
    /// notifications off meanwhile (QEMU's virtio_queue_host_notifier_aio_poll); re-enabling
    /// them re-checks the ring (virtio 1.2 §2.7.10).
    func queuePoller(_ index: Int) -> Poller {
        let q = queues[index], memory = self.memory
        return Poller(poll: { [unowned self] in
            guard acceptsRequests, q.hasAvailable(memory) else { return false }
            device.queueNotified(index)
            return true
        }, begin: { [unowned self] in
            guard isProcessing, q.isReady else { return }
            q.notificationsPolled = true
            do throws(VirtqueueError) { try q.setNotification(memory, enabled: false) } catch { deviceNeedsReset(error) }
        }, end: { [unowned self] in
            guard q.notificationsPolled else { return false }
            q.notificationsPolled = false
            guard isProcessing, q.isReady else { return false }
            do throws(VirtqueueError) { return try q.setNotification(memory, enabled: true) } catch { deviceNeedsReset(error); return false }
        })
    }
}

extension VirtioPCIDevice {
    /// Brings the irqfd routes in line with the MSI-X table, the function's enable/mask bits and
    /// the vectors the queues and config changes use. Called on every change to any of them,
    /// with the big lock held. The owner's lock-free view of the routes is withdrawn meanwhile.
    func msiRoutesChanged() {
        defer { device.interruptRoutesChanged() }
        vectors.irqfds.withLock { $0.removeAll() }
        guard let acceleration = ioEvents else {
            msiBinding?.unbind()
            msiBinding = nil
            return
        }
        if let b = msiBinding, b.accelerator !== acceleration.accelerator {
            b.unbind()
            msiBinding = nil
        }
        let binding = msiBinding ?? VirtioMSIBinding(acceleration.accelerator)
        msiBinding = binding
        let used = vectors.used.withLock { $0 }
        let live = msix.isEnabled && !msix.isFunctionMasked
        var routed: [Int: EventFD] = [:]
        for v in 0..<msix.vectorCount {
            if live, used.contains(v), let e = msix.entry(v), !e.masked {
                if binding.route(vector: v, address: e.address, data: e.data) { counters.msiRouteUpdates.add(1, ordering: .relaxed) }
                if let fd = binding.eventFD(vector: v) { routed[v] = fd }
            } else if binding.eventFD(vector: v) != nil {
                binding.unroute(vector: v)
                counters.msiRouteUpdates.add(1, ordering: .relaxed)
            }
        }
        if ioThreadContext != nil { vectors.irqfds.withLock { $0 = routed } }
    }
}

extension VirtioPCIDevice {
    /// The irqfd that raises queue `index`'s MSI-X vector inside kvm, while it has one.
    public func interruptEventFD(queue index: Int) -> EventFD? {
        guard index >= 0, index < queues.count, msix.isEnabled else { return nil }
        let v = queues[index].msixVector
        guard v != Virtio.noVector else { return nil }
        return msiBinding?.eventFD(vector: Int(v))
    }
}
