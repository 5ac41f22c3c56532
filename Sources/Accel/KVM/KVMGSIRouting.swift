import Devices
import KVM

/// KVM's GSI routing table kept in one place. KVM_SET_GSI_ROUTING replaces the whole table and
/// every commit waits for an RCU grace period, so the board's own routes (the PC irqchip pins,
/// or a split irqchip's mirrored IOAPIC pins, GSIs 0-23) and the virtio devices' MSI routes
/// (GSIs 24 and up, each bound to an irqfd) are merged here and committed only when they change.
/// Under the big lock.
final class KVMGSIRouting {
    static let firstMSIGSI: UInt32 = 24
    /// KVM_MAX_IRQ_ROUTES on x86: GSIs at or past it are refused by the kernel.
    static let gsiLimit: UInt32 = 4096

    struct MSIRoute: Equatable { let gsi: UInt32; var address: UInt64; var data: UInt32 }

    let vm: VirtualMachine
    private var base: [GSIRoute] = []
    /// Keyed by the irqfd's eventfd.
    private(set) var msi: [Int32: MSIRoute] = [:]
    private var committed: [GSIRoute]?
    /// Commits made (for tests and KEEL_DEBUG_VIRTIO).
    private(set) var commits = 0

    init(vm: VirtualMachine) { self.vm = vm }

    /// Replaces the board's routes (GSIs below `firstMSIGSI`).
    func setBase(_ routes: [GSIRoute]) throws {
        let old = base
        base = routes
        do { try commit() } catch { base = old; throw error }
    }

    private func commit() throws {
        let all = base + msi.values.sorted { $0.gsi < $1.gsi }.map { GSIRoute.msi(gsi: $0.gsi, address: $0.address, data: $0.data) }
        guard all != committed else { return }
        try vm.setGSIRouting(all)
        committed = all
        commits += 1
    }

    private func freeGSI() -> UInt32? {
        let used = Set(msi.values.map(\.gsi))
        var g = Self.firstMSIGSI
        while g < Self.gsiLimit {
            if !used.contains(g) { return g }
            g += 1
        }
        return nil
    }

    /// Routes signals on `fd` to the MSI `address`/`data`: a new GSI and irqfd the first time,
    /// the same GSI with a new message afterwards.
    func setMSI(fd: Int32, address: UInt64, data: UInt32) throws {
        if var r = msi[fd] {
            guard r.address != address || r.data != data else { return }
            let old = r
            r.address = address; r.data = data
            msi[fd] = r
            do { try commit() } catch { msi[fd] = old; throw error }
            return
        }
        guard let gsi = freeGSI() else { throw AcceleratorError("no free GSI for another MSI route") }
        msi[fd] = MSIRoute(gsi: gsi, address: address, data: data)
        do {
            try commit()
            try vm.registerIRQFD(fd, gsi: gsi)
        } catch {
            msi[fd] = nil
            try? commit()
            throw error
        }
    }

    func removeMSI(fd: Int32) {
        guard let r = msi.removeValue(forKey: fd) else { return }
        try? vm.unregisterIRQFD(fd, gsi: r.gsi)
        // A route left behind after a failed commit is harmless: nothing signals its GSI now.
        try? commit()
    }
}

extension KVMAccelerator: IOEventAccelerator {
    public func addIOEvent(fd: Int32, address: UInt64, length: UInt32) throws {
        try vm.registerIOEventFD(fd, space: .mmio, address: address, length: length)
    }

    public func removeIOEvent(fd: Int32, address: UInt64, length: UInt32) {
        try? vm.registerIOEventFD(fd, space: .mmio, address: address, length: length, deassign: true)
    }

    public func setMSIRoute(fd: Int32, address: UInt64, data: UInt32) throws {
        try routing.setMSI(fd: fd, address: address, data: data)
    }

    public func removeMSIRoute(fd: Int32) {
        routing.removeMSI(fd: fd)
    }
}
