import Devices
import Loop
import Foundation
import XCTest

/// An interrupt line that records every level change.
final class RecordingInterruptLine: InterruptLine {
    private(set) var levels: [Bool] = []
    var asserted: Bool { levels.last ?? false }
    func setLevel(_ asserted: Bool) { levels.append(asserted) }
}

/// A chardev that records output and resume requests.
final class RecordingChardev: Chardev {
    weak var frontend: ChardevFrontend?
    private(set) var written: [UInt8] = []
    private(set) var resumeCount = 0
    func write(_ bytes: UnsafeRawBufferPointer) { written.append(contentsOf: bytes) }
    func frontendCanReceive() { resumeCount += 1 }
    func close() {}
}

/// A frontend with a settable capacity, guarded by the loop's big lock.
final class RecordingFrontend: ChardevFrontend {
    var capacity: Int
    private(set) var received: [UInt8] = []
    init(capacity: Int = 4096) { self.capacity = capacity }
    func receiveCapacity() -> Int { capacity - received.count + consumed }
    private var consumed = 0
    /// Pretends the guest consumed everything received so far.
    func drain() { consumed = received.count }
    func receive(_ bytes: UnsafeRawBufferPointer) {
        XCTAssertLessThanOrEqual(bytes.count, receiveCapacity(), "chardev delivered beyond capacity")
        received.append(contentsOf: bytes)
    }
}

extension BusDevice {
    func outb(_ offset: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { write(offset: offset, data: $0) }
    }
    func inb(_ offset: UInt64) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { read(offset: offset, data: $0) }
        return v
    }
    func out(_ offset: UInt64, width: Int, _ value: UInt64) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { write(offset: offset, data: UnsafeRawBufferPointer(rebasing: $0[0..<width])) }
    }
    func inp(_ offset: UInt64, width: Int) -> UInt64 {
        var buf = [UInt8](repeating: 0xEE, count: width)
        buf.withUnsafeMutableBytes { read(offset: offset, data: $0) }
        var v: UInt64 = 0
        for (i, b) in buf.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}

/// An event loop running on its own thread, with the big lock, for chardev tests.
final class LoopThread {
    let lock = BigLock()
    let loop: EventLoop
    private let done = DispatchSemaphore(value: 0)
    private var thread: Thread?

    init() throws { loop = try EventLoop(lock: lock) }

    func start() {
        let t = Thread { [loop, done] in
            loop.run()
            done.signal()
        }
        thread = t
        t.start()
    }

    func stop() {
        guard thread != nil else { return }
        loop.stop()
        _ = done.wait(timeout: .now() + 5)
        thread = nil
    }
}

/// Polls `condition` (taking the big lock) until it holds or `timeout` passes.
func waitUntil(_ lock: BigLock, timeout: TimeInterval = 3, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if lock.withLock(condition) { return true }
        usleep(2000)
    }
    return lock.withLock(condition)
}

func temporaryPath(_ name: String) -> String {
    let dir = NSTemporaryDirectory()
    return (dir as NSString).appendingPathComponent("keel-\(getpid())-\(UUID().uuidString.prefix(8))-\(name)")
}
