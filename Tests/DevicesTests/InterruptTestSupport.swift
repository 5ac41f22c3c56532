import Devices
@testable import Devices

/// A clock the test moves by hand; timers fire in deadline order as time passes them.
final class FakeClock: GuestClock {
    var nanoseconds: UInt64 = 0
    let tscFrequencyHz: UInt64
    var tscOffset: UInt64 = 0
    private(set) var timers: [FakeTimer] = []

    init(tscFrequencyHz: UInt64 = 2_000_000_000) { self.tscFrequencyHz = tscFrequencyHz }

    var tsc: UInt64 { mulDiv(nanoseconds, tscFrequencyHz, 1_000_000_000) &+ tscOffset }

    func makeTimer(_ callback: @escaping () -> Void) throws -> GuestTimer {
        let t = FakeTimer(callback)
        timers.append(t)
        return t
    }

    /// Moves time to `t`, firing each due timer at its own deadline (a timer may re-arm).
    func advance(to t: UInt64) {
        while true {
            let due = timers.filter { $0.deadline.map { $0 <= t } ?? false }
            guard let next = due.min(by: { $0.deadline! < $1.deadline! }), let d = next.deadline else { break }
            nanoseconds = max(nanoseconds, d)
            next.deadline = nil
            next.fireCount += 1
            next.callback()
        }
        nanoseconds = max(nanoseconds, t)
    }

    func advance(by ns: UInt64) { advance(to: nanoseconds + ns) }
}

final class FakeTimer: GuestTimer {
    let callback: () -> Void
    var deadline: UInt64?
    var fireCount = 0
    init(_ callback: @escaping () -> Void) { self.callback = callback }
    func arm(atNanoseconds deadline: UInt64) { self.deadline = deadline }
    func disarm() { deadline = nil }
}

/// Records every level change of a line.
final class RecordingLine: InterruptLine {
    var level = false
    var rises = 0
    func setLevel(_ asserted: Bool) {
        if asserted && !level { rises += 1 }
        level = asserted
    }
}

extension BusDevice {
    func read32(_ offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: read(offset, width: 4)) }
    func write32(_ offset: UInt64, _ v: UInt32) { write(offset, UInt64(v), width: 4) }
    func read8(_ offset: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: read(offset, width: 1)) }
    func write8(_ offset: UInt64, _ v: UInt8) { write(offset, UInt64(v), width: 1) }

    func read(_ offset: UInt64, width: Int) -> UInt64 {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: width, alignment: 8)
        defer { p.deallocate() }
        read(offset: offset, data: p)
        return UnsafeRawBufferPointer(p).littleEndianValue
    }

    func write(_ offset: UInt64, _ v: UInt64, width: Int) {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: width, alignment: 8)
        defer { p.deallocate() }
        p.storeLittleEndian(v)
        write(offset: offset, data: UnsafeRawBufferPointer(p))
    }
}

/// A machine's worth of controllers on a fake clock.
struct InterruptRig {
    let clock = FakeClock()
    let bus = APICBus()
    let apics: [LocalAPIC]

    init(cpus: Int = 1) throws {
        var a: [LocalAPIC] = []
        for i in 0..<cpus { a.append(try LocalAPIC(index: i, bus: bus, clock: clock)) }
        apics = a
    }
}

// xAPIC register offsets used by the tests.
enum APICReg {
    static let id: UInt64 = 0x20, version: UInt64 = 0x30, tpr: UInt64 = 0x80, apr: UInt64 = 0x90
    static let ppr: UInt64 = 0xA0, eoi: UInt64 = 0xB0, ldr: UInt64 = 0xD0, dfr: UInt64 = 0xE0
    static let svr: UInt64 = 0xF0, isr: UInt64 = 0x100, tmr: UInt64 = 0x180, irr: UInt64 = 0x200
    static let esr: UInt64 = 0x280, icrLow: UInt64 = 0x300, icrHigh: UInt64 = 0x310
    static let lvtTimer: UInt64 = 0x320, lvtLINT0: UInt64 = 0x350, lvtLINT1: UInt64 = 0x360
    static let lvtError: UInt64 = 0x370, initialCount: UInt64 = 0x380, currentCount: UInt64 = 0x390
    static let divide: UInt64 = 0x3E0
}

extension LocalAPIC {
    /// Software-enables the APIC with spurious vector 0xFF, as Linux's setup_local_APIC.
    func enableForTest() { write32(APICReg.svr, 0x1FF) }
    /// Sets `vector` in IRR through a self-IPI (fixed, edge).
    func selfIPI(_ vector: UInt8) { write32(APICReg.icrLow, 0x40000 | UInt32(vector)) }
    /// INTA then EOI: the vector the CPU would have handled.
    func take() -> UInt8? {
        guard let v = acknowledgeInterrupt() else { return nil }
        write32(APICReg.eoi, 0)
        return v
    }
    func bitSet(_ base: UInt64, _ v: UInt8) -> Bool { read32(base + UInt64(v >> 5) * 0x10) & (1 << UInt32(v & 31)) != 0 }
}
