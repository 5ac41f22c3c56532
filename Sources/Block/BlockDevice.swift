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
    /// Makes every completed write durable (fdatasync on the files underneath).
    func flush() throws(BlockError)
    /// The range's contents become undefined (zero where the format can say so cheaply).
    func discard(offset: UInt64, length: UInt64) throws(BlockError)
    /// The range reads as zeroes afterwards; `mayUnmap` allows freeing the space.
    func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError)
    /// Whether [offset, offset + length) starts with data or with a range known to read as zeroes,
    /// and how long that run is (at least 1 byte, at most `length`). Lets copies skip holes.
    func blockStatus(offset: UInt64, length: UInt64) throws(BlockError) -> BlockStatus
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
