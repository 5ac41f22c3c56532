/// Where message-signalled interrupts go: the machine's interrupt controller (KVM's LAPICs, or
/// tcg's APIC bus). The board implements it.
public protocol MSIController: AnyObject {
    func signalMSI(address: UInt64, data: UInt32)
}

/// MSI-X (PCI Local Bus 3.0 §6.8.2): the capability in config space, the vector table and the
/// pending bit array, both living in a memory BAR. A vector fires its message unless it or the
/// whole function is masked; then its pending bit is set and the message goes out on unmask.
public final class PCIMSIX {
    public static let entrySize = 16
    static let controlEnable: UInt16 = 1 << 15
    static let controlFunctionMask: UInt16 = 1 << 14
    static let vectorControlMask: UInt32 = 1

    public let vectorCount: Int
    unowned let function: PCIFunction
    let capabilityOffset: Int
    public let tableOffset: UInt64
    public let pbaOffset: UInt64
    /// Table: per vector address low, address high, data, vector control (as stored by the guest).
    private var table: [UInt32]
    private var pending: [Bool]
    public weak var controller: MSIController?
    /// Called when a vector's message or mask changed, or MSI-X was enabled/disabled (for
    /// accelerators that route vectors in the kernel: irqfd GSI routes).
    public var vectorsChanged: (() -> Void)?

    /// Adds the capability to `function`; the table and PBA live in BAR `bar` at the given offsets
    /// (map `tableRegion`/`pbaRegion`, or the BAR from `makeBar`, there).
    public init(function: PCIFunction, vectors: Int, bar: Int, tableOffset: UInt64 = 0, pbaOffset: UInt64 = 0x800) {
        precondition((1...2048).contains(vectors) && tableOffset % 8 == 0 && pbaOffset % 8 == 0)
        precondition(tableOffset + UInt64(vectors * Self.entrySize) <= pbaOffset || pbaOffset + UInt64((vectors + 63) / 64 * 8) <= tableOffset)
        vectorCount = vectors
        self.function = function
        self.tableOffset = tableOffset
        self.pbaOffset = pbaOffset
        table = Array(repeating: 0, count: vectors * 4)
        for v in 0..<vectors { table[v * 4 + 3] = Self.vectorControlMask }
        pending = Array(repeating: false, count: vectors)
        var body: [UInt8] = []
        let control = UInt16(vectors - 1)
        body += [UInt8(truncatingIfNeeded: control), UInt8(truncatingIfNeeded: control >> 8)]
        let t = UInt32(truncatingIfNeeded: tableOffset) | UInt32(bar)
        let p = UInt32(truncatingIfNeeded: pbaOffset) | UInt32(bar)
        for v in [t, p] { for i in 0..<4 { body.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        // Only the enable and function-mask bits of Message Control are writable.
        let mask: [UInt8] = [0x00, 0xC0]
        capabilityOffset = function.addCapability(id: PCIConfig.capabilityMSIX, body: body, writableMask: mask)
        function.msix = self
    }

    /// The size of a BAR that holds the table and PBA (at least 4 KiB, as Linux maps a page).
    public var barSize: UInt64 {
        let end = max(tableOffset + UInt64(vectorCount * Self.entrySize), pbaOffset + UInt64((vectorCount + 63) / 64 * 8))
        var s: UInt64 = 4096
        while s < end { s <<= 1 }
        return s
    }

    var control: UInt16 { function.config.u16(capabilityOffset + 2) }
    public var isEnabled: Bool { control & Self.controlEnable != 0 }
    public var isFunctionMasked: Bool { control & Self.controlFunctionMask != 0 }

    /// The message of `vector` (address, data) and whether it is masked.
    public func entry(_ vector: Int) -> (address: UInt64, data: UInt32, masked: Bool)? {
        guard vector >= 0, vector < vectorCount else { return nil }
        let b = vector * 4
        return (UInt64(table[b]) | UInt64(table[b + 1]) << 32, table[b + 2], table[b + 3] & Self.vectorControlMask != 0)
    }

    public func isPending(_ vector: Int) -> Bool { vector >= 0 && vector < vectorCount && pending[vector] }

    /// Raises `vector`. Returns false if MSI-X is off (the caller may fall back to INTx).
    @discardableResult
    public func notify(vector: Int) -> Bool {
        guard isEnabled else { return false }
        guard let e = entry(vector) else { return true }
        if e.masked || isFunctionMasked {
            pending[vector] = true
        } else {
            controller?.signalMSI(address: e.address, data: e.data)
        }
        return true
    }

    /// Call after a write to the capability (the function forwards config writes).
    func controlWritten() {
        deliverUnmaskedPending()
        vectorsChanged?()
    }

    private func deliverUnmaskedPending() {
        guard isEnabled, !isFunctionMasked else { return }
        for v in 0..<vectorCount where pending[v] {
            guard let e = entry(v), !e.masked else { continue }
            pending[v] = false
            controller?.signalMSI(address: e.address, data: e.data)
        }
    }

    /// Is a config write at [offset, +length) on this capability's Message Control?
    func covers(_ offset: Int, _ length: Int) -> Bool {
        offset < capabilityOffset + 4 && offset + length > capabilityOffset + 2
    }

    // MARK: table and PBA access (offsets relative to the BAR)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let n = UInt64(data.count)
        guard n == 4 || n == 8, offset % n == 0 else { data.storeLittleEndian(0); return }
        var v: UInt64 = 0
        for k in 0..<(n / 4) { v |= UInt64(readDword(offset + 4 * k)) << (32 * k) }
        data.storeLittleEndian(v)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let n = UInt64(data.count)
        guard n == 4 || n == 8, offset % n == 0 else { return }
        let v = data.littleEndianValue
        for k in 0..<(n / 4) { writeDword(offset + 4 * k, UInt32(truncatingIfNeeded: v >> (32 * k))) }
    }

    private func readDword(_ offset: UInt64) -> UInt32 {
        if offset >= tableOffset, offset - tableOffset < UInt64(vectorCount * Self.entrySize) {
            return table[Int((offset - tableOffset) / 4)]
        }
        if offset >= pbaOffset, offset - pbaOffset < UInt64((vectorCount + 63) / 64 * 8) {
            let first = Int((offset - pbaOffset) * 8)
            var v: UInt32 = 0
            for bit in 0..<32 where first + bit < vectorCount && pending[first + bit] { v |= 1 << UInt32(bit) }
            return v
        }
        return 0
    }

    private func writeDword(_ offset: UInt64, _ value: UInt32) {
        guard offset >= tableOffset, offset - tableOffset < UInt64(vectorCount * Self.entrySize) else { return }
        let i = Int((offset - tableOffset) / 4)
        let field = i % 4
        let stored = field == 3 ? value & Self.vectorControlMask : value
        guard table[i] != stored else { return }
        table[i] = stored
        if field == 3 && stored & Self.vectorControlMask == 0 { deliverUnmaskedPending() }
        vectorsChanged?()
    }

    /// Machine or device reset: every vector masked, nothing pending.
    public func reset() {
        for v in 0..<vectorCount {
            table[v * 4] = 0; table[v * 4 + 1] = 0; table[v * 4 + 2] = 0
            table[v * 4 + 3] = Self.vectorControlMask
            pending[v] = false
        }
        vectorsChanged?()
    }
}

/// The MSI-X table and PBA as a BAR of their own.
public final class PCIMSIXRegion: BusDevice {
    unowned let msix: PCIMSIX
    public init(_ msix: PCIMSIX) { self.msix = msix }
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { msix.read(offset: offset, data: data) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) { msix.write(offset: offset, data: data) }
}
