import Devices
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

    public init(memory: GuestMemory, pio: Bus, mmio: Bus, lock: BigLock) {
        self.memory = memory; self.pio = pio; self.mmio = mmio; self.lock = lock
        var end: UInt64 = 0
        for r in memory.regions { end = max(end, r.end) }
        codePages = CodePageMap(physicalEnd: end)
    }

    /// Host pointer to the 4 KiB RAM page holding `physical`, or nil (MMIO or nothing).
    @inline(__always) func ramPage(_ physical: UInt64) -> UnsafeMutableRawPointer? {
        memory.hostPointer(physical & ~0xFFF, length: 4096)
    }

    func mmioRead(_ physical: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { buf in
            lock.lock()
            mmio.read(physical, data: UnsafeMutableRawBufferPointer(rebasing: buf[0..<size]))
            lock.unlock()
        }
        return v
    }

    func mmioWrite(_ physical: UInt64, size: Int, value: UInt64) {
        var v = value
        withUnsafeBytes(of: &v) { buf in
            lock.lock()
            mmio.write(physical, data: UnsafeRawBufferPointer(rebasing: buf[0..<size]))
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

/// One bit per physical 4 KiB page: set while some vCPU's decode cache holds code from the page,
/// so the store slow path knows when a write must invalidate decoded blocks.
final class CodePageMap: @unchecked Sendable {
    let words: UnsafeMutablePointer<UInt64>
    let pageCount: UInt64

    init(physicalEnd: UInt64) {
        pageCount = (physicalEnd + 4095) >> 12
        let n = Int((pageCount + 63) >> 6) + 1
        words = .allocate(capacity: n)
        words.initialize(repeating: 0, count: n)
    }

    deinit { words.deallocate() }

    @inline(__always) func contains(_ physical: UInt64) -> Bool {
        let page = physical >> 12
        guard page < pageCount else { return false }
        return words[Int(page >> 6)] & (1 << (page & 63)) != 0
    }

    @inline(__always) func insert(_ physical: UInt64) {
        let page = physical >> 12
        guard page < pageCount else { return }
        words[Int(page >> 6)] |= 1 << (page & 63)
    }

    @inline(__always) func remove(_ physical: UInt64) {
        let page = physical >> 12
        guard page < pageCount else { return }
        words[Int(page >> 6)] &= ~(1 << (page & 63))
    }
}
