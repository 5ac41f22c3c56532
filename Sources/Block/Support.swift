import Glibc

/// A plain pthread mutex: the backends' metadata lock (Block depends on nothing but the C shim).
final class BlockLock: @unchecked Sendable {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    private let c: UnsafeMutablePointer<pthread_cond_t>
    init() {
        m = .allocate(capacity: 1); pthread_mutex_init(m, nil)
        c = .allocate(capacity: 1); pthread_cond_init(c, nil)
    }
    deinit { pthread_mutex_destroy(m); m.deallocate(); pthread_cond_destroy(c); c.deallocate() }
    @inline(__always) func lock() { pthread_mutex_lock(m) }
    @inline(__always) func unlock() { pthread_mutex_unlock(m) }
    /// With the lock held: sleeps until `broadcast` (or spuriously); the caller re-checks.
    func wait() { pthread_cond_wait(c, m) }
    func broadcast() { pthread_cond_broadcast(c) }
}

extension BlockError {
    /// The errno of a failed system call, as a block status: ENOSPC and EROFS keep their meaning.
    static func errno(_ what: String, _ code: Int32 = Glibc.errno) -> BlockError {
        let text = String(cString: strerror(code))
        switch code {
        case ENOSPC, EDQUOT: return BlockError(.noSpace, "\(what): \(text)")
        case EROFS: return BlockError(.readOnly, "\(what): \(text)")
        case EOPNOTSUPP, ENOTSUP, ENOSYS: return BlockError(.unsupported, "\(what): \(text)")
        default: return BlockError(.io, "\(what): \(text)")
        }
    }
    static func corrupt(_ message: String) -> BlockError { BlockError(.corrupt, message) }
}

/// Big-endian field access in a byte array (qcow2 stores everything big-endian), never trapping:
/// a field past the end reads as zero and a store past the end is dropped.
extension Array where Element == UInt8 {
    func be64(_ at: Int) -> UInt64 {
        guard at >= 0, at <= count - 8 else { return 0 }
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(self[at + i]) }
        return v
    }
    func be32(_ at: Int) -> UInt32 {
        guard at >= 0, at <= count - 4 else { return 0 }
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(self[at + i]) }
        return v
    }
    func be16(_ at: Int) -> UInt16 {
        guard at >= 0, at <= count - 2 else { return 0 }
        return UInt16(self[at]) << 8 | UInt16(self[at + 1])
    }
    mutating func putBE64(_ v: UInt64, at: Int) {
        guard at >= 0, at <= count - 8 else { return }
        for i in 0..<8 { self[at + i] = UInt8(truncatingIfNeeded: v >> UInt64(56 - 8 * i)) }
    }
    mutating func putBE32(_ v: UInt32, at: Int) {
        guard at >= 0, at <= count - 4 else { return }
        for i in 0..<4 { self[at + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
    mutating func putBE16(_ v: UInt16, at: Int) {
        guard at >= 0, at <= count - 2 else { return }
        self[at] = UInt8(truncatingIfNeeded: v >> 8); self[at + 1] = UInt8(truncatingIfNeeded: v)
    }
}

/// True if every byte of the buffer is zero (word at a time).
public func isAllZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
    guard let base = buffer.baseAddress else { return true }
    var i = 0
    let n = buffer.count
    while i < n && (Int(bitPattern: base + i) & 7) != 0 { if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }; i += 1 }
    while i + 32 <= n {
        let a = base.load(fromByteOffset: i, as: UInt64.self) | base.load(fromByteOffset: i + 8, as: UInt64.self)
        let b = base.load(fromByteOffset: i + 16, as: UInt64.self) | base.load(fromByteOffset: i + 24, as: UInt64.self)
        if a | b != 0 { return false }
        i += 32
    }
    while i < n { if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }; i += 1 }
    return true
}

/// Directory part of a path ("." for a bare name), for resolving backing files as QEMU does.
func directoryOf(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    if slash == path.startIndex { return "/" }
    return String(path[..<slash])
}

/// A relative backing file name is relative to the directory of the image that names it.
public func resolveBackingPath(_ name: String, of imagePath: String) -> String { resolveRelative(name, to: imagePath) }

func resolveRelative(_ name: String, to imagePath: String) -> String {
    if name.hasPrefix("/") { return name }
    let dir = directoryOf(imagePath)
    return dir == "." ? name : dir + "/" + name
}

func canonicalPath(_ path: String) -> String {
    guard let p = realpath(path, nil) else { return path }
    defer { free(p) }
    return String(cString: p)
}

// Array.withUnsafe*Bytes rethrow untyped errors; these keep BlockError typed through the body.
func mutatingBytes<T>(_ a: inout [T], _ body: (UnsafeMutableRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
    var failure: BlockError? = nil
    a.withUnsafeMutableBytes { p in do throws(BlockError) { try body(p) } catch { failure = error } }
    if let failure { throw failure }
}

func bytesOf<T>(_ a: [T], _ body: (UnsafeRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
    var failure: BlockError? = nil
    a.withUnsafeBytes { p in do throws(BlockError) { try body(p) } catch { failure = error } }
    if let failure { throw failure }
}

func bytesOf<T>(value: T, _ body: (UnsafeRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
    var failure: BlockError? = nil
    withUnsafeBytes(of: value) { p in do throws(BlockError) { try body(p) } catch { failure = error } }
    if let failure { throw failure }
}
