import Glibc

/// A block backend: what a disk's bytes live in on the host (a raw file, a qcow2 image, a chain
/// of them). Positional and synchronous: the worker pool (or an iothread) calls it, never a
/// loop callback. Implementations are safe to call from several threads at once.
public protocol BlockDevice: AnyObject {
    /// The virtual disk size in bytes.
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Reads `buffer.count` bytes at `offset`; past the end is an error, holes read as zeroes.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError)
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError)
    /// One request over several buffers (a virtio-blk chain's segments), in order from `offset`.
    func readVectored(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError)
    func writeVectored(_ segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError)
    /// Makes every completed write durable (fdatasync on the files underneath).
    func flush() throws(BlockError)
    /// The range's contents become undefined (zero where the format can say so cheaply).
    func discard(offset: UInt64, length: UInt64) throws(BlockError)
    /// The range reads as zeroes afterwards; `mayUnmap` allows freeing the space.
    func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError)
    /// Whether [offset, offset + length) starts with data or with a range known to read as zeroes,
    /// and how long that run is (at least 1 byte, at most `length`). Lets copies skip holes.
    func blockStatus(offset: UInt64, length: UInt64) throws(BlockError) -> BlockStatus
    /// Whether data transfers go to the disk without the host's page cache (cache=none,
    /// O_DIRECT): each request is then a disk operation, so fewer, larger ones are cheaper.
    var bypassesPageCache: Bool { get }
    /// Reads the request only where that waits for no disk: every byte already in the host's
    /// page cache and no metadata to read (preadv2 RWF_NOWAIT). True when the buffers hold the
    /// data; false when the caller must use `readVectored` on a thread that may block (the
    /// buffers may then hold part of it). Lets a loop finish a cached read without a thread
    /// hand-off, as io_uring does for its own submissions.
    func readVectoredIfCached(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) -> Bool
    func close()
}

/// One run of a device's address space, as `blockStatus` reports it.
public struct BlockStatus: Equatable, Sendable {
    public var isZero: Bool
    public var length: UInt64
    public init(isZero: Bool, length: UInt64) { self.isZero = isZero; self.length = length }
}

/// Why a block request failed, with the errno a virtio-blk or SCSI status is derived from.
public struct BlockError: Error, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case io              // EIO and friends
        case noSpace         // ENOSPC
        case readOnly        // EROFS / write to a read-only device
        case outOfRange      // request past the end of the device
        case unsupported     // the backend cannot do this operation
        case corrupt         // the image's metadata is inconsistent
    }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) { self.kind = kind; self.message = message }
    public var description: String { message }
}

extension BlockDevice {
    public var bypassesPageCache: Bool { false }
    public func readVectoredIfCached(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) -> Bool { false }

    public func readVectored(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        var at = offset
        for s in segments {
            try read(into: s, at: at)
            at &+= UInt64(s.count)
        }
    }

    public func writeVectored(_ segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        var at = offset
        for s in segments {
            try write(UnsafeRawBufferPointer(s), at: at)
            at &+= UInt64(s.count)
        }
    }

    /// Backends that cannot tell report everything as data.
    public func blockStatus(offset: UInt64, length: UInt64) throws(BlockError) -> BlockStatus {
        BlockStatus(isZero: false, length: length)
    }

    /// Checks that [offset, offset + length) lies inside the device, overflow-safe.
    public func checkRange(offset: UInt64, length: UInt64) throws(BlockError) {
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, end <= size else {
            throw BlockError(.outOfRange, "request [\(offset), +\(length)) is past the end of the \(size)-byte device")
        }
    }
}

/// A backend whose data requests can map onto one host file without format work (qcow2's
/// allocated clusters): an asynchronous engine (io_uring) then issues the transfers itself.
public protocol DirectMappedBlockDevice: BlockDevice {
    var dataFile: RawFileDevice { get }
    /// Maps [offset, offset + length) onto `dataFile` when that needs no metadata change and no
    /// format work (no allocation, backing file or compressed cluster); false otherwise, and the
    /// caller takes the synchronous path. After true, the caller issues the transfers and then
    /// calls `endDirectIO()` exactly once.
    func beginDirectIO(offset: UInt64, length: Int, isWrite: Bool, into extents: inout [BlockHostExtent]) -> Bool
    func endDirectIO()
}

/// Part of a request on the host file: `length` bytes from `requestOffset` in the request's
/// buffers at `hostOffset`, or (reads only, hostOffset nil) bytes that read as zeroes.
public struct BlockHostExtent: Sendable, Equatable {
    public var requestOffset: Int
    public var length: Int
    public var hostOffset: UInt64?
    public init(requestOffset: Int, length: Int, hostOffset: UInt64?) {
        self.requestOffset = requestOffset; self.length = length; self.hostOffset = hostOffset
    }
}

/// The total length of a request's buffers, nil on overflow.
public func totalLength(_ segments: [UnsafeMutableRawBufferPointer]) -> Int? {
    var total = 0
    for s in segments {
        let (t, o) = total.addingReportingOverflow(s.count)
        if o { return nil }
        total = t
    }
    return total
}

/// Appends iovecs for bytes [start, start + count) of the concatenated `segments`.
public func appendIOVecs(_ segments: [UnsafeMutableRawBufferPointer], from start: Int, count: Int,
                         to v: inout [iovec]) {
    var skip = start, left = count
    for s in segments where left > 0 {
        if skip >= s.count { skip -= s.count; continue }
        let n = min(s.count - skip, left)
        v.append(iovec(iov_base: s.baseAddress.map { $0 + skip }, iov_len: n))
        left -= n
        skip = 0
    }
}

/// Zeroes bytes [start, start + count) of the concatenated `segments`.
public func zeroSegments(_ segments: [UnsafeMutableRawBufferPointer], from start: Int, count: Int) {
    var skip = start, left = count
    for s in segments where left > 0 {
        if skip >= s.count { skip -= s.count; continue }
        let n = min(s.count - skip, left)
        if let b = s.baseAddress { memset(b + skip, 0, n) }
        left -= n
        skip = 0
    }
}

/// Copies between a contiguous buffer and bytes [start, start + buffer.count) of `segments`.
func copySegments(_ segments: [UnsafeMutableRawBufferPointer], from start: Int,
                  _ buffer: UnsafeMutableRawBufferPointer, toSegments: Bool) {
    var skip = start, done = 0
    for s in segments where done < buffer.count {
        if skip >= s.count { skip -= s.count; continue }
        let n = min(s.count - skip, buffer.count - done)
        if let sb = s.baseAddress, let bb = buffer.baseAddress {
            if toSegments { memcpy(sb + skip, bb + done, n) } else { memcpy(bb + done, sb + skip, n) }
        }
        done += n
        skip = 0
    }
}

/// The buffers covering bytes [start, start + count) of `segments`.
func sliceSegments(_ segments: [UnsafeMutableRawBufferPointer], from start: Int, count: Int) -> [UnsafeMutableRawBufferPointer] {
    var out: [UnsafeMutableRawBufferPointer] = []
    var skip = start, left = count
    for s in segments where left > 0 {
        if skip >= s.count { skip -= s.count; continue }
        let n = min(s.count - skip, left)
        if let b = s.baseAddress { out.append(UnsafeMutableRawBufferPointer(start: b + skip, count: n)) }
        left -= n
        skip = 0
    }
    return out
}
