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

/// The ioeventfds currently registered for one device: one per ready queue, at the queue's
/// notify address in BAR 4.
final class VirtioNotifyBinding {
    struct Entry { let queue: Int; let fd: EventFD; let address: UInt64 }
    let acceleration: VirtioNotifyAcceleration
    var entries: [Entry] = []
    init(_ a: VirtioNotifyAcceleration) { acceleration = a }

    func unbind() {
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
        let binding = notifyBinding ?? VirtioNotifyBinding(acceleration)
        notifyBinding = binding
        guard status & Virtio.statusDriverOK != 0 else { return }
        for (i, q) in queues.enumerated() where q.isReady {
            guard let address = notifyAddress(queue: i), let fd = try? EventFD() else { continue }
            do {
                try acceleration.accelerator.addIOEvent(fd: fd.fd, address: address, length: 2)
                try acceleration.loop.addReadable(fd: fd.fd) { [unowned self, fd] _ in
                    fd.consume()
                    self.notify(queue: i)
                }
                binding.entries.append(.init(queue: i, fd: fd, address: address))
            } catch {
                acceleration.accelerator.removeIOEvent(fd: fd.fd, address: address, length: 2)
            }
        }
    }
}
