@testable import Devices
import Memory
import XCTest

/// The driver half of a split virtqueue, as Linux's virtio_ring does it: a descriptor free
/// list, chains (or one indirect table) published through the avail ring with a release
/// barrier, event-index bookkeeping, and used-ring harvesting.
final class TestVirtqueueDriver {
    let memory: GuestMemory
    let size: UInt16
    let desc: UInt64, avail: UInt64, used: UInt64
    var freeHead: UInt16 = 0
    var numFree: Int
    var availIdx: UInt16 = 0
    var lastUsed: UInt16 = 0
    var indirectArena: UInt64
    /// Heads in flight -> descriptor count, to free on completion.
    var inflight: [UInt16: Int] = [:]
    var eventIndex = false

    init(memory: GuestMemory, size: UInt16, base: UInt64, indirectArena: UInt64 = 0x80_0000) throws {
        self.memory = memory
        self.size = size
        desc = base
        avail = base + 16 * UInt64(size)
        used = (avail + 6 + 2 * UInt64(size) + 4095) & ~4095
        self.indirectArena = indirectArena
        numFree = Int(size)
        try memory.write([UInt8](repeating: 0, count: Int(used - base) + 6 + 8 * Int(size) + 2), at: base)
        for i in 0..<size { try memory.store(UInt16((i + 1) % size), at: desc + 16 * UInt64(i) + 14) }
    }

    struct Buf { var address: UInt64; var length: UInt32; var writable: Bool }

    func writeDescriptor(_ table: UInt64, _ i: UInt16, _ b: Buf, next: UInt16?, indirect: Bool = false) throws {
        let at = table + 16 * UInt64(i)
        try memory.store(b.address, at: at)
        try memory.store(b.length, at: at + 8)
        var flags: UInt16 = b.writable ? 2 : 0
        if next != nil { flags |= 1 }
        if indirect { flags |= 4 }
        try memory.store(flags, at: at + 12)
        try memory.store(next ?? 0, at: at + 14)
    }

    /// Adds a chain; returns its head. `indirect` puts the buffers in an indirect table.
    @discardableResult
    func add(_ bufs: [Buf], indirect: Bool = false) throws -> UInt16 {
        let head = freeHead
        if indirect {
            let table = indirectArena
            indirectArena += 16 * UInt64(bufs.count + 1)
            indirectArena = (indirectArena + 15) & ~15
            for (i, b) in bufs.enumerated() {
                try writeDescriptor(table, UInt16(i), b, next: i + 1 < bufs.count ? UInt16(i + 1) : nil)
            }
            let next = try memory.load(UInt16.self, at: desc + 16 * UInt64(head) + 14)
            try writeDescriptor(desc, head, Buf(address: table, length: UInt32(16 * bufs.count), writable: false), next: nil, indirect: true)
            try memory.store(next, at: desc + 16 * UInt64(head) + 14) // keep the free list link
            freeHead = next
            numFree -= 1
            inflight[head] = 1
        } else {
            precondition(bufs.count <= numFree)
            var i = head
            for (k, b) in bufs.enumerated() {
                let next = try memory.load(UInt16.self, at: desc + 16 * UInt64(i) + 14)
                try writeDescriptor(desc, i, b, next: k + 1 < bufs.count ? next : nil)
                try memory.store(next, at: desc + 16 * UInt64(i) + 14)
                i = next
            }
            freeHead = i
            numFree -= bufs.count
            inflight[head] = bufs.count
        }
        try memory.store(head, at: avail + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        try memory.store(availIdx, at: avail + 2)
        return head
    }

    /// Whether the device asked to be notified for what was just added (virtqueue_kick_prepare).
    func kickNeeded(oldAvail: UInt16) throws -> Bool {
        if eventIndex {
            let ev = try memory.load(UInt16.self, at: used + 4 + 8 * UInt64(size))
            return SplitVirtqueue.needEvent(ev, new: availIdx, old: oldAvail)
        }
        return try memory.load(UInt16.self, at: used) & 1 == 0
    }

    /// Harvests used entries: (head, length).
    func harvest() throws -> [(UInt16, UInt32)] {
        var out: [(UInt16, UInt32)] = []
        let usedIdx = try memory.load(UInt16.self, at: used + 2)
        while lastUsed != usedIdx {
            let e = used + 4 + 8 * UInt64(lastUsed % size)
            let id = UInt16(truncatingIfNeeded: try memory.load(UInt32.self, at: e))
            let len = try memory.load(UInt32.self, at: e + 4)
            out.append((id, len))
            lastUsed &+= 1
            if let n = inflight.removeValue(forKey: id) {
                // Return the chain to the free list (its last link already points at the old head).
                var last = id
                for _ in 1..<max(n, 1) { last = try memory.load(UInt16.self, at: desc + 16 * UInt64(last) + 14) }
                try memory.store(freeHead, at: desc + 16 * UInt64(last) + 14)
                freeHead = id
                numFree += n
            }
        }
        if eventIndex { try memory.store(lastUsed, at: avail + 4 + 2 * UInt64(size)) }
        return out
    }

    func setNoInterrupt(_ on: Bool) throws { try memory.store(UInt16(on ? 1 : 0), at: avail) }
}

func makeGuestMemory(_ size: UInt64 = 16 << 20) throws -> GuestMemory {
    try GuestMemory(layout: [(guestAddress: 0, size: size)])
}
