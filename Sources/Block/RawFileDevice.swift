import CKeel
import Glibc
import Synchronization

/// How the host page cache is used, as QEMU's -drive cache= modes.
public enum CacheMode: String, Sendable, CaseIterable {
    case writeback      // page cache; flush = fdatasync
    case writethrough   // page cache; every write is followed by fdatasync
    case none           // O_DIRECT; flush = fdatasync
    case directsync     // O_DIRECT and fdatasync after every write
    case unsafe         // page cache; flush does nothing

    public var direct: Bool { self == .none || self == .directsync }
    public var syncEachWrite: Bool { self == .writethrough || self == .directsync }
}

/// A raw image: a regular file or a block device whose bytes are the disk's bytes. Also the
/// protocol layer a format driver (qcow2) reads and writes its file through (`pread`/`pwrite`,
/// not bounded by `size`).
public final class RawFileDevice: BlockDevice, @unchecked Sendable {
    public let path: String
    public let isReadOnly: Bool
    public let cache: CacheMode
    public let isBlockDevice: Bool
    private(set) public var fd: Int32
    private var cachedSize: UInt64
    private let sizeLock = BlockLock()
    /// O_DIRECT needs buffer address, offset and length aligned; 4 KiB suits every sector size.
    static let directAlignment = 4096
    /// Set when the format was guessed: a write may not put a qcow2 magic into sector 0.
    public var guardsFormatProbe = false
    /// Serializes read-modify-write cycles of unaligned O_DIRECT writes.
    private let bounceLock = BlockLock()
    /// A tmpfs or ramfs file: its pages are memory, so a read waits for no disk (bar swap-in,
    /// which guest RAM may need as much), and these file systems refuse RWF_NOWAIT.
    public let isInMemoryFileSystem: Bool
    /// The kernel answered RWF_NOWAIT with EOPNOTSUPP for this file: cached reads are not tried.
    private let noWaitRefused = Atomic<Bool>(false)

    public init(path: String, readOnly: Bool, cache: CacheMode = .writeback) throws(BlockError) {
        self.path = path
        self.isReadOnly = readOnly
        self.cache = cache
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if cache.direct { flags |= ckeel_o_direct() }
        let fd = ckeel_open(path, flags, 0)
        guard fd >= 0 else {
            if cache.direct && errno == EINVAL {
                throw BlockError(.unsupported, "cannot open '\(path)' with O_DIRECT for cache=\(cache.rawValue): its file system does not support direct I/O")
            }
            throw BlockError.errno("cannot open '\(path)'")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = BlockError.errno("cannot stat '\(path)'"); Glibc.close(fd); throw e }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            Glibc.close(fd)
            throw BlockError(.unsupported, "'\(path)' is neither a regular file nor a block device")
        }
        self.fd = fd
        isBlockDevice = kind == S_IFBLK
        if isBlockDevice {
            var n: UInt64 = 0
            guard ckeel_blkgetsize64(fd, &n) == 0 else {
                let e = BlockError.errno("BLKGETSIZE64 on '\(path)'"); Glibc.close(fd); throw e
            }
            cachedSize = n
        } else {
            cachedSize = UInt64(st.st_size)
        }
        let fsType = isBlockDevice ? -1 : ckeel_fs_type(fd)
        isInMemoryFileSystem = fsType == 0x0102_1994 || fsType == 0x8584_58F6   // TMPFS_MAGIC, RAMFS_MAGIC
    }

    deinit { close() }

    public var size: UInt64 { sizeLock.lock(); defer { sizeLock.unlock() }; return cachedSize }
    public var bypassesPageCache: Bool { cache.direct }

    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    // MARK: BlockDevice

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try checkRange(offset: offset, length: UInt64(buffer.count))
        try pread(into: buffer, at: offset)
    }

    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is read-only") }
        try checkRange(offset: offset, length: UInt64(data.count))
        if guardsFormatProbe, offset == 0, data.count >= 4,
           data.load(as: UInt32.self) == Qcow2Header.magic.bigEndian {
            throw BlockError(.readOnly, "'\(path)': refusing a write that would make a probed raw image look like qcow2")
        }
        try pwrite(data, at: offset)
    }

    public func flush() throws(BlockError) { try sync() }

    public func readVectored(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        guard let total = totalLength(segments) else { throw BlockError(.outOfRange, "request length overflows") }
        try checkRange(offset: offset, length: UInt64(total))
        var v: [iovec] = []
        v.reserveCapacity(segments.count)
        appendIOVecs(segments, from: 0, count: total, to: &v)
        try v.withUnsafeMutableBufferPointer { (p) throws(BlockError) in try preadv(p, at: offset) }
    }

    public func readVectoredIfCached(into segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) -> Bool {
        guard let total = totalLength(segments), total > 0,
              (try? checkRange(offset: offset, length: UInt64(total))) != nil else { return false }
        return readIfCached(segments, from: 0, count: total, at: offset)
    }

    /// `count` bytes of the request's buffers from byte `start` on, read from the file at
    /// `fileOffset` if the page cache holds all of them (the protocol layer of
    /// `readVectoredIfCached`: not bounded by `size`). O_DIRECT reads are disk operations,
    /// except in a file system in memory (aligned, for the O_DIRECT rules of older kernels).
    public func readIfCached(_ segments: [UnsafeMutableRawBufferPointer], from start: Int, count: Int, at fileOffset: UInt64) -> Bool {
        guard !cache.direct || isInMemoryFileSystem, fd >= 0, count > 0, segments.count <= 1024,   // UIO_MAXIOV
              fileOffset <= UInt64(Int.max) - UInt64(count),
              isInMemoryFileSystem || !noWaitRefused.load(ordering: .relaxed) else { return false }
        var v: [iovec] = []
        v.reserveCapacity(segments.count)
        appendIOVecs(segments, from: start, count: count, to: &v)
        if cache.direct {
            guard fileOffset % UInt64(Self.directAlignment) == 0, v.allSatisfy({ e in
                e.iov_base.map { Self.isAligned(UnsafeRawPointer($0), 0, e.iov_len) } ?? false
            }) else { return false }
        }
        if isInMemoryFileSystem { return Glibc.preadv(fd, v, Int32(v.count), Int(fileOffset)) == count }
        let r = ckeel_preadv_nowait(fd, v, Int32(v.count), Int(fileOffset))
        if r < 0 && errno == EOPNOTSUPP { noWaitRefused.store(true, ordering: .relaxed) }
        // Short (part cached, or the end of the file) or EAGAIN: the blocking path does it all.
        return r == count
    }

    public func writeVectored(_ segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is read-only") }
        if guardsFormatProbe && offset == 0 {
            // write() checks the magic a probed image may not get.
            var at = offset
            for s in segments { try write(UnsafeRawBufferPointer(s), at: at); at &+= UInt64(s.count) }
            return
        }
        guard let total = totalLength(segments) else { throw BlockError(.outOfRange, "request length overflows") }
        try checkRange(offset: offset, length: UInt64(total))
        var v: [iovec] = []
        v.reserveCapacity(segments.count)
        appendIOVecs(segments, from: 0, count: total, to: &v)
        try v.withUnsafeMutableBufferPointer { (p) throws(BlockError) in try pwritev(p, at: offset) }
    }

    public func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is read-only") }
        try checkRange(offset: offset, length: length)
        // Advisory: a file system that cannot punch holes keeps the data, which is allowed.
        _ = punchHole(offset: offset, length: length)
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {
        guard !isReadOnly else { throw BlockError(.readOnly, "'\(path)' is read-only") }
        try checkRange(offset: offset, length: length)
        try zeroRange(offset: offset, length: length, mayUnmap: mayUnmap)
    }

    public func blockStatus(offset: UInt64, length: UInt64) throws(BlockError) -> BlockStatus {
        try checkRange(offset: offset, length: length)
        guard !isBlockDevice, length > 0, offset <= UInt64(Int.max) else { return BlockStatus(isZero: false, length: length) }
        let data = ckeel_seek_data(fd, Int(offset))
        if data < 0 {
            // ENXIO: no data after offset, the rest is a hole.
            if errno == ENXIO { return BlockStatus(isZero: true, length: length) }
            return BlockStatus(isZero: false, length: length)
        }
        if UInt64(data) > offset { return BlockStatus(isZero: true, length: min(UInt64(data) - offset, length)) }
        let hole = ckeel_seek_hole(fd, Int(offset))
        guard hole > 0, UInt64(hole) > offset else { return BlockStatus(isZero: false, length: length) }
        return BlockStatus(isZero: false, length: min(UInt64(hole) - offset, length))
    }

    // MARK: The protocol layer

    /// The file's current length (fstat; the block device's size).
    public func fileLength() throws(BlockError) -> UInt64 {
        if isBlockDevice { return size }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw BlockError.errno("cannot stat '\(path)'") }
        return UInt64(st.st_size)
    }

    /// Reads exactly `buffer.count` bytes; bytes past the end of the file read as zeroes.
    public func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard buffer.count > 0, let base = buffer.baseAddress else { return }
        let (_, o) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !o, offset <= UInt64(Int.max) - UInt64(buffer.count) else {
            throw BlockError(.outOfRange, "offset \(offset) is beyond what a file can address")
        }
        if cache.direct && !Self.isAligned(UnsafeRawPointer(base), offset, buffer.count) {
            try bounced(offset: offset, count: buffer.count) { (bounce, skip) throws(BlockError) in
                UnsafeMutableRawBufferPointer(start: base, count: buffer.count)
                    .copyMemory(from: UnsafeRawBufferPointer(start: bounce + skip, count: buffer.count))
                return false
            }
            return
        }
        try rawRead(base, buffer.count, offset)
    }

    /// Writes exactly `data.count` bytes, extending the file if needed.
    public func pwrite(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard data.count > 0, let base = data.baseAddress else { return }
        guard offset <= UInt64(Int.max) - UInt64(data.count) else {
            throw BlockError(.outOfRange, "offset \(offset) is beyond what a file can address")
        }
        if cache.direct && !Self.isAligned(base, offset, data.count) {
            try bounced(offset: offset, count: data.count) { (bounce, skip) throws(BlockError) in
                UnsafeMutableRawBufferPointer(start: bounce + skip, count: data.count).copyMemory(from: data)
                return true
            }
        } else {
            try rawWrite(base, data.count, offset)
        }
        if cache.syncEachWrite { try datasync() }
    }

    /// `pread` over several buffers with one preadv per IOV_MAX of them (the iovecs are consumed).
    /// Unaligned O_DIRECT buffers go one at a time through the bounce path.
    public func preadv(_ v: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(BlockError) {
        try vectored(v, at: offset, isWrite: false)
    }

    /// `pwrite` over several buffers (the iovecs are consumed).
    public func pwritev(_ v: UnsafeMutableBufferPointer<iovec>, at offset: UInt64) throws(BlockError) {
        try vectored(v, at: offset, isWrite: true)
        if cache.syncEachWrite { try datasync() }
    }

    private func vectored(_ v: UnsafeMutableBufferPointer<iovec>, at offset: UInt64, isWrite: Bool) throws(BlockError) {
        var total = 0
        var aligned = offset % UInt64(Self.directAlignment) == 0
        for e in v {
            let (t, o) = total.addingReportingOverflow(e.iov_len)
            guard !o else { throw BlockError(.outOfRange, "request length overflows") }
            total = t
            if let b = e.iov_base { aligned = aligned && Self.isAligned(UnsafeRawPointer(b), 0, e.iov_len) } else { aligned = false }
        }
        guard offset <= UInt64(Int.max) - UInt64(total) else {
            throw BlockError(.outOfRange, "offset \(offset) is beyond what a file can address")
        }
        if cache.direct && !aligned {
            var at = offset
            for e in v {
                guard let b = e.iov_base else { continue }
                if isWrite { try pwriteNoSync(UnsafeRawBufferPointer(start: b, count: e.iov_len), at: at) }
                else { try pread(into: UnsafeMutableRawBufferPointer(start: b, count: e.iov_len), at: at) }
                at += UInt64(e.iov_len)
            }
            return
        }
        var i = 0, done = 0
        while i < v.count {
            let n = min(v.count - i, 1024)   // UIO_MAXIOV
            let r = isWrite ? Glibc.pwritev(fd, v.baseAddress! + i, Int32(n), Int(offset) + done)
                            : Glibc.preadv(fd, v.baseAddress! + i, Int32(n), Int(offset) + done)
            if r < 0 {
                if errno == EINTR { continue }
                throw BlockError.errno("\(isWrite ? "write" : "read") of \(total) bytes at \(offset) \(isWrite ? "to" : "from") '\(path)'")
            }
            if r == 0 {
                if isWrite { throw BlockError(.io, "write to '\(path)' made no progress at \(offset + UInt64(done))") }
                // End of file: the rest reads as zeroes.
                for k in i..<v.count where v[k].iov_len > 0 { memset(v[k].iov_base, 0, v[k].iov_len) }
                return
            }
            done += r
            var left = r
            while left > 0 && i < v.count {
                if v[i].iov_len <= left { left -= v[i].iov_len; i += 1 }
                else { v[i].iov_base = v[i].iov_base.map { $0 + left }; v[i].iov_len -= left; left = 0 }
            }
            while i < v.count && v[i].iov_len == 0 { i += 1 }
        }
        if isWrite && !isBlockDevice {
            let end = offset + UInt64(done)
            sizeLock.lock(); if end > cachedSize { cachedSize = end }; sizeLock.unlock()
        }
    }

    private func pwriteNoSync(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard data.count > 0, let base = data.baseAddress else { return }
        if cache.direct && !Self.isAligned(base, offset, data.count) {
            try bounced(offset: offset, count: data.count) { (bounce, skip) throws(BlockError) in
                UnsafeMutableRawBufferPointer(start: bounce + skip, count: data.count).copyMemory(from: data)
                return true
            }
        } else {
            try rawWrite(base, data.count, offset)
        }
    }

    /// fdatasync unless the cache mode is unsafe.
    public func sync() throws(BlockError) {
        if cache == .unsafe { return }
        try datasync()
    }

    private func datasync() throws(BlockError) {
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw BlockError.errno("fdatasync '\(path)'")
        }
    }

    /// Sets the file's length (regular files only).
    public func truncate(to length: UInt64) throws(BlockError) {
        guard !isBlockDevice else { throw BlockError(.unsupported, "cannot resize block device '\(path)'") }
        guard length <= UInt64(Int.max) else { throw BlockError(.outOfRange, "size \(length) is too large") }
        guard ftruncate(fd, Int(length)) == 0 else { throw BlockError.errno("cannot resize '\(path)' to \(length) bytes") }
        sizeLock.lock(); cachedSize = length; sizeLock.unlock()
    }

    /// Frees the range's space; false if the file system cannot.
    @discardableResult
    public func punchHole(offset: UInt64, length: UInt64) -> Bool {
        guard length > 0, offset <= UInt64(Int.max), length <= UInt64(Int.max) - offset else { return false }
        return ckeel_fallocate(fd, CKEEL_FALLOC_PUNCH_HOLE, Int(offset), Int(length)) == 0
    }

    /// The range reads as zeroes afterwards: a hole or a zeroed extent if the file system can,
    /// written zeroes otherwise.
    public func zeroRange(offset: UInt64, length: UInt64, mayUnmap: Bool) throws(BlockError) {
        guard length > 0 else { return }
        guard offset <= UInt64(Int.max), length <= UInt64(Int.max) - offset else {
            throw BlockError(.outOfRange, "zero range [\(offset), +\(length)) is too large")
        }
        if !isBlockDevice {
            if mayUnmap && punchHole(offset: offset, length: length) { return }
            if ckeel_fallocate(fd, CKEEL_FALLOC_ZERO_RANGE, Int(offset), Int(length)) == 0 { return }
            if !mayUnmap && punchHole(offset: offset, length: length) { return }
        }
        let chunk = 1 << 20
        guard let zeros = Self.alignedBuffer(chunk) else { throw BlockError(.io, "out of memory") }
        defer { free(zeros) }
        memset(zeros, 0, chunk)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(chunk), length - done))
            try pwrite(UnsafeRawBufferPointer(start: zeros, count: n), at: offset + done)
            done += UInt64(n)
        }
    }

    /// Whether guest buffers can go to the file as they are (an asynchronous engine such as
    /// io_uring): always with the page cache; with O_DIRECT only when every buffer, length and
    /// the offset are aligned (else the synchronous path bounces them).
    public func transfersDirectly(_ segments: [UnsafeMutableRawBufferPointer], at offset: UInt64) -> Bool {
        guard cache.direct else { return true }
        var at = offset
        for s in segments {
            guard let base = s.baseAddress, Self.isAligned(UnsafeRawPointer(base), at, s.count) else { return false }
            at &+= UInt64(s.count)
        }
        return true
    }

    // MARK: Plumbing

    static func isAligned(_ p: UnsafeRawPointer, _ offset: UInt64, _ count: Int) -> Bool {
        let a = directAlignment
        return Int(bitPattern: p) % a == 0 && offset % UInt64(a) == 0 && count % a == 0
    }

    static func alignedBuffer(_ count: Int) -> UnsafeMutableRawPointer? {
        var p: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&p, directAlignment, max(count, directAlignment)) == 0 else { return nil }
        return p
    }

    /// An O_DIRECT request through an aligned buffer covering it: read the covering sectors,
    /// let `body` copy in or out (it returns true when the sectors must be written back).
    private func bounced(offset: UInt64, count: Int,
                         _ body: (UnsafeMutableRawPointer, Int) throws(BlockError) -> Bool) throws(BlockError) {
        let a = UInt64(Self.directAlignment)
        let start = offset / a * a
        let end = (offset + UInt64(count) + a - 1) / a * a
        let length = Int(end - start)
        guard let bounce = Self.alignedBuffer(length) else { throw BlockError(.io, "out of memory for a \(length)-byte bounce buffer") }
        defer { free(bounce) }
        bounceLock.lock(); defer { bounceLock.unlock() }
        try rawRead(bounce, length, start)
        if try body(bounce, Int(offset - start)) { try rawWrite(UnsafeRawPointer(bounce), length, start) }
    }

    private func rawRead(_ base: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) throws(BlockError) {
        var done = 0
        while done < count {
            let n = Glibc.pread(fd, base + done, count - done, Int(offset) + done)
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockError.errno("read of \(count) bytes at \(offset) from '\(path)'")
            }
            if n == 0 { memset(base + done, 0, count - done); return }   // end of file
            done += n
        }
    }

    private func rawWrite(_ base: UnsafeRawPointer, _ count: Int, _ offset: UInt64) throws(BlockError) {
        var done = 0
        while done < count {
            let n = Glibc.pwrite(fd, base + done, count - done, Int(offset) + done)
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockError.errno("write of \(count) bytes at \(offset) to '\(path)'")
            }
            if n == 0 { throw BlockError(.io, "write to '\(path)' made no progress at \(offset + UInt64(done))") }
            done += n
        }
        if !isBlockDevice {
            let end = offset + UInt64(count)
            sizeLock.lock(); if end > cachedSize { cachedSize = end }; sizeLock.unlock()
        }
    }
}
