import Devices
import Synchronization
import Loop
import Memory

/// What the tcg vCPUs of one machine share: guest RAM, the PIO and MMIO buses (reached with the
/// big lock held only around a device access), and the map of physical pages that hold decoded code.
public final class TCGPlatform: @unchecked Sendable {
    public let memory: GuestMemory
    public let pio: Bus
    public let mmio: Bus
    public let lock: BigLock
    let codePages: CodePageMap
    /// Whether the machine has a stop pending (a device write raised a machine request); the
    /// accelerator sets it. Asked after every device write.
    public var stopPending: () -> Bool = { false }
    /// Every vCPU's software TLB, so that marking a code page can revoke their store fast path.
    let tlbs = Loop.Mutex<[UnsafeMutablePointer<TLBEntry>]>([])

    public init(memory: GuestMemory, pio: Bus, mmio: Bus, lock: BigLock) {
        self.memory = memory; self.pio = pio; self.mmio = mmio; self.lock = lock
        var end: UInt64 = 0
        for r in memory.regions { end = max(end, r.end) }
        codePages = CodePageMap(physicalEnd: end)
    }

    func register(tlb: UnsafeMutablePointer<TLBEntry>) { tlbs.withLock { $0.append(tlb) } }
    func unregister(tlb: UnsafeMutablePointer<TLBEntry>) { tlbs.withLock { $0.removeAll { $0 == tlb } } }

    /// A page now holds decoded code: no vCPU may store to it without the slow path (which
    /// invalidates). Clears the write tags with atomic stores, as the owning vCPU may be using
    /// its TLB meanwhile; a TLB fill racing with this re-checks the page after filling.
    func revokeStoreFastPath(_ physical: UInt64) {
        let page = physical & ~0xFFF
        let writeTag = MemoryLayout<TLBEntry>.offset(of: \TLBEntry.writeTag) ?? 8
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        tlbs.withLock { all in
            for tlb in all {
                for k in 0..<TLBEntry.total where (tlb + k).pointee.physicalPage == page && (tlb + k).pointee.writeTag != ~0 {
                    let p = UnsafeMutableRawPointer(tlb + k) + writeTag
                    p.assumingMemoryBound(to: Atomic<UInt64>.self).pointee.store(~0, ordering: .relaxed)
                }
            }
        }
    }

    /// An MMIO read; the xAPIC page of the reading vCPU's own `apic` comes before the shared bus.
    func mmioRead(_ physical: UInt64, size: Int, apic: LocalAPIC?) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { buf in
            let data = UnsafeMutableRawBufferPointer(rebasing: buf[0..<size])
            lock.lock()
            if let apic, apic.isXAPICMMIOEnabled, physical &- apic.mmioBase < 4096 {
                apic.read(offset: physical &- apic.mmioBase, data: data)
            } else {
                mmio.read(physical, data: data)
            }
            lock.unlock()
        }
        return v
    }

    func mmioWrite(_ physical: UInt64, size: Int, value: UInt64, apic: LocalAPIC?) {
        var v = value
        withUnsafeBytes(of: &v) { buf in
            let data = UnsafeRawBufferPointer(rebasing: buf[0..<size])
            lock.lock()
            if let apic, apic.isXAPICMMIOEnabled, physical &- apic.mmioBase < 4096 {
                apic.write(offset: physical &- apic.mmioBase, data: data)
            } else {
                mmio.write(physical, data: data)
            }
            lock.unlock()
        }
    }

    func portRead(_ port: UInt16, size: Int) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { buf in
            lock.lock()
            pio.read(UInt64(port), data: UnsafeMutableRawBufferPointer(rebasing: buf[0..<size]))
            lock.unlock()
        }
        return v
    }

    func portWrite(_ port: UInt16, size: Int, value: UInt64) {
        var v = value
        withUnsafeBytes(of: &v) { buf in
            lock.lock()
            pio.write(UInt64(port), data: UnsafeRawBufferPointer(rebasing: buf[0..<size]))
            lock.unlock()
        }
    }
}

/// Per physical 4 KiB page, shared by all vCPUs: a word `generation << 1 | hasCode`. A vCPU that
/// decodes code on a page sets `hasCode` and tags its blocks with the word; a store to a page
/// with `hasCode` (the slow path: no vCPU's TLB lets stores to such a page skip it) adds one,
/// which clears the bit and moves to the next generation, so every vCPU's blocks from the page
/// stop matching at once — cross-modifying code without a cross-vCPU flush.
final class CodePageMap: @unchecked Sendable {
    let words: UnsafeMutablePointer<Atomic<UInt32>>
    let pageCount: UInt64

    init(physicalEnd: UInt64) {
        pageCount = (physicalEnd + 4095) >> 12
        let n = Int(pageCount) + 1
        words = .allocate(capacity: n)
        for k in 0..<n { (words + k).initialize(to: Atomic<UInt32>(0)) }
    }

    deinit { words.deallocate() }

    /// The page's word (0 for pages outside RAM, which never hold cached blocks).
    @inline(__always) func tag(_ physical: UInt64) -> UInt32 {
        let page = physical >> 12
        guard page < pageCount else { return 0 }
        return words[Int(page)].load(ordering: .relaxed)
    }

    @inline(__always) func contains(_ physical: UInt64) -> Bool { tag(physical) & 1 != 0 }

    /// Marks the page as holding decoded code. Returns the word to tag blocks with, and whether
    /// this call set the bit (then TLBs must stop skipping the store slow path to the page).
    func mark(_ physical: UInt64) -> (tag: UInt32, new: Bool) {
        let page = physical >> 12
        guard page < pageCount else { return (0, false) }
        var w = words[Int(page)].load(ordering: .sequentiallyConsistent)
        while w & 1 == 0 {
            let (ok, seen) = words[Int(page)].compareExchange(expected: w, desired: w | 1, ordering: .sequentiallyConsistent)
            if ok { return (w | 1, true) }
            w = seen
        }
        return (w, false)
    }

    /// A store reached the page: blocks decoded from it are stale on every vCPU.
    func invalidate(_ physical: UInt64) {
        let page = physical >> 12
        guard page < pageCount else { return }
        var w = words[Int(page)].load(ordering: .relaxed)
        while true {
            let (ok, seen) = words[Int(page)].compareExchange(expected: w, desired: (w | 1) &+ 1, ordering: .sequentiallyConsistent)
            if ok { return }
            w = seen
        }
    }
}
