import Foundation
import Loop
import Net
import XCTest

/// A NIC stand-in: records frames, can refuse them, counts writable/link notifications.
final class FrameCollector: NetReceiver {
    var frames: [[UInt8]] = []
    var accepting = true
    var refused = 0
    var writable = 0
    var links: [Bool] = []
    /// Called for each taken frame (e.g. to answer ARP like a guest would).
    var onFrame: (([UInt8]) -> Void)?

    func receive(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard accepting else { refused += 1; return false }
        let f = Array(frame)
        frames.append(f)
        onFrame?(f)
        return true
    }
    func backendWritable() { writable += 1 }
    func linkChanged(up: Bool) { links.append(up) }
}

/// Runs `loop` on the calling thread until `condition` holds or `timeout` passes; returns
/// whether it held. Everything (backends, collectors) stays on this one thread.
@discardableResult
func spin(_ loop: EventLoop, timeout: TimeInterval = 5, until condition: () -> Bool) -> Bool {
    if condition() { return true }
    let deadline = Date().addingTimeInterval(timeout)
    var met = false
    withoutActuallyEscaping(condition) { cond in
        let timer = try! loop.makeTimer {
            if cond() { met = true; loop.stop() } else if Date() > deadline { loop.stop() }
        }
        timer.arm(afterNanoseconds: 1_000_000, intervalNanoseconds: 2_000_000)
        loop.run()
        loop.remove(fd: timer.fd)
    }
    return met || condition()
}

/// Runs the loop for a while regardless (to show that something does NOT happen).
func idle(_ loop: EventLoop, seconds: TimeInterval) {
    _ = spin(loop, timeout: seconds) { false }
}

func send(_ backend: NetBackend, _ frame: [UInt8]) -> NetSendResult {
    frame.withUnsafeBytes { raw in
        var seg = [NetSegment(base: raw.baseAddress!, count: raw.count)]
        return seg.withUnsafeMutableBufferPointer { backend.send(UnsafeBufferPointer($0)) }
    }
}

/// Sends `frame` split into `pieces` segments (a descriptor chain's worth of buffers).
func sendSplit(_ backend: NetBackend, _ frame: [UInt8], pieces: Int) -> NetSendResult {
    frame.withUnsafeBytes { raw in
        var segs: [NetSegment] = []
        let step = max(1, raw.count / pieces)
        var at = 0
        while at < raw.count {
            let n = min(step, raw.count - at)
            segs.append(NetSegment(base: raw.baseAddress! + at, count: n))
            at += n
        }
        return segs.withUnsafeBufferPointer { backend.send($0) }
    }
}

/// A frame of `length` bytes whose content identifies it (`tag`) and its size.
func patternFrame(length: Int, tag: UInt8) -> [UInt8] {
    (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(tag) &* 7 &+ ($0 >> 8)) }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
func freeLoopbackPort(udp: Bool = false) -> UInt16 {
    let fd = socket(AF_INET, udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: a.sin_port)
}

/// A plain TCP socket to 127.0.0.1:`port` (blocking connect; the caller sets non-blocking if it wants).
func connectLoopback(port: UInt16, nonBlocking: Bool = false, receiveBuffer: Int32? = nil) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    // Before connect, so the window TCP advertises matches the buffer.
    if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4) }
    if nonBlocking { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    if rc != 0 && errno != EINPROGRESS { close(fd); return -1 }
    return fd
}

/// A non-blocking TCP listener on 127.0.0.1 (ephemeral port).
func listenLoopback() -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    listen(fd, 4)
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
    return (fd, UInt16(bigEndian: a.sin_port))
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var at = 0
    while at < bytes.count {
        let n = bytes[at...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n <= 0 { if errno == EINTR || errno == EAGAIN { usleep(1000); continue }; return }
        at += n
    }
}

func lengthPrefixed(_ frame: [UInt8]) -> [UInt8] {
    let n = UInt32(frame.count)
    return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + frame
}

/// Splits a captured byte stream into its length-prefixed frames; nil if it does not parse whole.
func parseFramedStream(_ bytes: [UInt8]) -> [[UInt8]]? {
    var frames: [[UInt8]] = []
    var at = 0
    while at < bytes.count {
        guard bytes.count - at >= 4 else { return nil }
        let n = Int(bytes[at]) << 24 | Int(bytes[at + 1]) << 16 | Int(bytes[at + 2]) << 8 | Int(bytes[at + 3])
        guard bytes.count - at - 4 >= n else { return nil }
        frames.append(Array(bytes[(at + 4)..<(at + 4 + n)]))
        at += 4 + n
    }
    return frames
}
