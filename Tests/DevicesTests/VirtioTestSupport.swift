import Block
@testable import Devices
import Memory
import XCTest

/// A disk in host memory (the Block target's RawFileDevice lands separately).
final class MemoryBlockDevice: BlockDevice {
    var bytes: [UInt8]
    let isReadOnly: Bool
    var flushes = 0
    var discards: [(UInt64, UInt64)] = []
    /// Stands for an O_DIRECT file (cache=none).
    var direct = false
    var bypassesPageCache: Bool { direct }
    init(size: Int, readOnly: Bool = false) { bytes = [UInt8](repeating: 0, count: size); isReadOnly = readOnly }
    var size: UInt64 { UInt64(bytes.count) }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try checkRange(offset: offset, length: UInt64(buffer.count))
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "read-only") }
        try checkRange(offset: offset, length: UInt64(data.count))
        bytes.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
    }
    func flush() throws(BlockError) { flushes += 1 }
    func discard(offset: UInt64, length: UInt64) throws(BlockError) { discards.append((offset, length)) }
    func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {
        try checkRange(offset: offset, length: length)
        for i in Int(offset)..<Int(offset + length) { bytes[i] = 0 }
    }
    func close() {}
}

/// An executor that holds work until the test releases it (requests in flight).
final class DeferredExecutor: VirtioRequestExecutor {
    var queued: [(() -> UInt8, (UInt8) -> Void)] = []
    func execute(_ work: @escaping () -> UInt8, completion: @escaping (UInt8) -> Void) { queued.append((work, completion)) }
    func runAll() { let q = queued; queued.removeAll(); for (w, c) in q { c(w()) } }
}

/// Linux's virtio_pci_modern probe, done through the PCI bus exactly as the driver does it:
/// capability walk, BAR addresses, reset, feature negotiation, MSI-X vectors, queue set-up.
final class TestVirtioPCIDriver {
    let bridge: PCIHostBridge
    let mmio: Bus
    let slot: Int
    var common: UInt64 = 0, isr: UInt64 = 0, deviceCfg: UInt64 = 0, notifyBase: UInt64 = 0
    var notifyMultiplier: UInt64 = 0
    var msixTable: UInt64 = 0, msixCap = 0
    var queues: [TestVirtqueueDriver] = []
    var notifyOffsets: [UInt64] = []

    init(bridge: PCIHostBridge, mmio: Bus, slot: Int) { self.bridge = bridge; self.mmio = mmio; self.slot = slot }

    func cfg(_ off: Int, _ width: Int) -> UInt64 { bridge.configRead(bus: 0, device: slot, function: 0, offset: off, length: width) }
    func setCfg(_ off: Int, _ width: Int, _ v: UInt64) { bridge.configWrite(bus: 0, device: slot, function: 0, offset: off, length: width, value: v) }
    func bar(_ i: Int) -> UInt64 { cfg(0x10 + 4 * i, 4) & ~0xF }

    func findCapabilities() {
        var p = Int(cfg(0x34, 1))
        var hops = 0
        while p != 0 && hops < 48 {
            let id = cfg(p, 1)
            if id == 0x09 {
                let type = cfg(p + 3, 1), b = Int(cfg(p + 4, 1)), off = cfg(p + 8, 4)
                let base = bar(b) + off
                switch type {
                case 1: common = base
                case 2: notifyBase = base; notifyMultiplier = cfg(p + 16, 4)
                case 3: isr = base
                case 4: deviceCfg = base
                default: break
                }
            } else if id == 0x11 {
                msixCap = p
                let t = cfg(p + 4, 4)
                msixTable = bar(Int(t & 7)) + (t & ~7)
            }
            p = Int(cfg(p + 1, 1))
            hops += 1
        }
    }

    func r(_ off: UInt64, _ w: Int) -> UInt64 { mmio.inp(common + off, width: w) }
    func w(_ off: UInt64, _ width: Int, _ v: UInt64) { mmio.out(common + off, width: width, v) }
    var status: UInt8 { UInt8(r(0x14, 1)) }
    func setStatus(_ s: UInt8) { w(0x14, 1, UInt64(s)) }

    /// Through FEATURES_OK; returns whether the device accepted the features.
    func negotiate(accept: (UInt64) -> UInt64) -> Bool {
        setStatus(0)
        XCTAssertEqual(status, 0)
        setStatus(Virtio.statusAcknowledge)
        setStatus(Virtio.statusAcknowledge | Virtio.statusDriver)
        w(0x00, 4, 0); let lo = r(0x04, 4)
        w(0x00, 4, 1); let hi = r(0x04, 4)
        let chosen = accept(lo | hi << 32)
        w(0x08, 4, 0); w(0x0C, 4, chosen & 0xFFFF_FFFF)
        w(0x08, 4, 1); w(0x0C, 4, chosen >> 32)
        setStatus(Virtio.statusAcknowledge | Virtio.statusDriver | Virtio.statusFeaturesOK)
        return status & Virtio.statusFeaturesOK != 0
    }

    /// MSI-X vector v -> message data 0x40 + v; vector 0 for config, 1 + i for queue i.
    func enableMSIX(vectors: Int) {
        setCfg(msixCap + 2, 2, 0x8000 | 0x4000)
        for v in 0..<vectors {
            let e = msixTable + 16 * UInt64(v)
            mmio.out(e, width: 4, 0xFEE0_0000); mmio.out(e + 4, width: 4, 0); mmio.out(e + 8, width: 4, 0x40 + UInt64(v))
            mmio.out(e + 12, width: 4, 0)
        }
        setCfg(msixCap + 2, 2, 0x8000)
        w(0x10, 2, 0)
        XCTAssertEqual(r(0x10, 2), 0)
    }

    func setUpQueues(memory: GuestMemory, count: Int, msix: Bool) throws {
        for i in 0..<count {
            w(0x16, 2, UInt64(i))
            let size = UInt16(r(0x18, 2))
            XCTAssertGreaterThan(size, 0)
            let q = try TestVirtqueueDriver(memory: memory, size: size, base: 0x100000 + 0x10000 * UInt64(i),
                                            indirectArena: 0x800000 + 0x10000 * UInt64(i))
            if msix { w(0x1A, 2, UInt64(i + 1)); XCTAssertEqual(r(0x1A, 2), UInt64(i + 1)) }
            w(0x20, 4, q.desc & 0xFFFF_FFFF); w(0x24, 4, q.desc >> 32)
            w(0x28, 4, q.avail & 0xFFFF_FFFF); w(0x2C, 4, q.avail >> 32)
            w(0x30, 4, q.used & 0xFFFF_FFFF); w(0x34, 4, q.used >> 32)
            notifyOffsets.append(notifyBase + r(0x1E, 2) * notifyMultiplier)
            w(0x1C, 2, 1)
            XCTAssertEqual(r(0x1C, 2), 1)
            queues.append(q)
        }
    }

    func kick(_ i: Int) { mmio.out(notifyOffsets[i], width: 2, UInt64(i)) }
}
