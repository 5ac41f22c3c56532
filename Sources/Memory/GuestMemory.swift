import CKeel
import Glibc

/// Why a guest-physical access was refused. Guest-made addresses are untrusted: every accessor
/// below checks the whole range with overflow-safe arithmetic before touching host memory.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    case outOfBounds(address: UInt64, length: UInt64)
    case hostAllocationFailed(String)

    public var description: String {
        switch self {
        case .outOfBounds(let a, let l): return "guest access [0x\(String(a, radix: 16)), +\(l)) is not RAM"
        case .hostAllocationFailed(let why): return why
        }
    }
}

/// One contiguous piece of guest RAM: a guest-physical range backed by host memory that is a
/// window into the machine's memfd at `fileOffset` (so a vhost-user backend can map the same pages;
/// with anonymous RAM the offset only orders the regions).
public struct GuestRegion: Sendable {
    public let guestAddress: UInt64
    public let size: UInt64
    public let fileOffset: UInt64
    nonisolated(unsafe) public let host: UnsafeMutableRawPointer

    public var end: UInt64 { guestAddress + size }

    @inlinable @inline(__always)
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard address >= guestAddress else { return false }
        let offset = address - guestAddress
        return offset <= size && length <= size - offset
    }
}

extension UnsafeMutableBufferPointer where Element == GuestRegion {
    /// Host pointer to `length` bytes at `address`, only if the whole range lies in one region
    /// (GuestMemory.table; also walked by hot paths that hold the table, not the class).
    @inlinable @inline(__always)
    public func hostPointer(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in self where r.contains(address, length: length) { return r.host + Int(address - r.guestAddress) }
        return nil
    }
}

/// Guest physical RAM: a set of non-overlapping regions, carved out of one memfd or private
/// anonymous memory. Narrow on purpose (as vm-memory's GuestMemory): reads, writes and
/// bounds-checked slices.
public final class GuestMemory: @unchecked Sendable {
    /// What holds the pages.
    public enum Backing: Sendable {
        /// One memfd mapped shared: another process can map the same pages (vhost-user,
        /// `-object memory-backend-memfd,share=on`).
        case memfd
        /// Private anonymous memory, each region 2 MiB-aligned and advised for transparent huge
        /// pages, as QEMU's default RAM is: fewer TLB misses and cheaper pinning for O_DIRECT and
        /// io_uring transfers into guest buffers. Not shareable (`fd` is -1).
        case anonymous
    }

    public let regions: [GuestRegion]
    /// The memfd that backs every region (shareable with another process), or -1.
    public let fd: Int32
    public let totalSize: UInt64
    /// `regions` in plain memory: the address lookup every device and the tcg page walk make
    /// walks it without an array's reference counting.
    /// The regions, in memory that lives as long as this GuestMemory: a hot path (the tcg CPU's
    /// page walk and fetches) looks addresses up here without touching the class (each use of
    /// the class reference across modules cost a retain and a release).
    public let table: UnsafeMutableBufferPointer<GuestRegion>
    /// What deinit unmaps (a mapped region may start before its guest range: see `init(mapping:)`).
    private let mappings: [(start: UnsafeMutableRawPointer, length: Int)]

    /// Creates RAM for `layout` (guest address, size), in guest-address order.
    public init(layout: [(guestAddress: UInt64, size: UInt64)], name: String = "keel-ram", backing: Backing = .memfd) throws {
        var total: UInt64 = 0
        for (i, r) in layout.enumerated() {
            guard r.size > 0, r.size % 4096 == 0, r.guestAddress % 4096 == 0 else {
                throw GuestMemoryError.hostAllocationFailed("memory region \(i) is not page aligned")
            }
            let (sum, o) = total.addingReportingOverflow(r.size)
            guard !o else { throw GuestMemoryError.hostAllocationFailed("memory size overflows") }
            total = sum
            if i > 0 { precondition(layout[i - 1].guestAddress + layout[i - 1].size <= r.guestAddress, "regions overlap") }
        }
        if backing == .anonymous {
            let regions = try Self.mapAnonymous(layout)
            self.regions = regions
            table = Self.table(regions)
            self.fd = -1
            self.totalSize = total
            mappings = regions.map { ($0.host, Int($0.size)) }
            return
        }
        let fd = ckeel_memfd_create(name, UInt32(MFD_CLOEXEC))
        guard fd >= 0 else { throw GuestMemoryError.hostAllocationFailed("memfd_create: \(String(cString: strerror(errno)))") }
        guard ftruncate(fd, off_t(total)) == 0 else {
            let e = errno; close(fd)
            throw GuestMemoryError.hostAllocationFailed("cannot size guest RAM to \(total) bytes: \(String(cString: strerror(e)))")
        }
        var regions: [GuestRegion] = []
        var offset: UInt64 = 0
        for r in layout {
            let p = mmap(nil, Int(r.size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, off_t(offset))
            guard let p, p != MAP_FAILED else {
                let e = errno
                for g in regions { munmap(g.host, Int(g.size)) }
                close(fd)
                throw GuestMemoryError.hostAllocationFailed("cannot map \(r.size) bytes of guest RAM: \(String(cString: strerror(e)))")
            }
            regions.append(GuestRegion(guestAddress: r.guestAddress, size: r.size, fileOffset: offset, host: p))
            offset += r.size
        }
        self.regions = regions
        table = Self.table(regions)
        self.fd = fd
        self.totalSize = total
        mappings = regions.map { ($0.host, Int($0.size)) }
    }

    /// Maps each region privately at a 2 MiB boundary (over-allocate, trim both ends) so
    /// transparent huge pages can back it from its first byte.
    private static func mapAnonymous(_ layout: [(guestAddress: UInt64, size: UInt64)]) throws -> [GuestRegion] {
        let huge = 2 << 20
        var regions: [GuestRegion] = []
        var offset: UInt64 = 0
        for r in layout {
            guard r.size <= UInt64(Int.max / 2) else { throw GuestMemoryError.hostAllocationFailed("memory region of \(r.size) bytes is too large") }
            let size = Int(r.size)
            let p = mmap(nil, size + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let p, p != MAP_FAILED else {
                let e = errno
                for g in regions { munmap(g.host, Int(g.size)) }
                throw GuestMemoryError.hostAllocationFailed("cannot map \(r.size) bytes of guest RAM: \(String(cString: strerror(e)))")
            }
            let head = (huge - Int(bitPattern: p) % huge) % huge
            if head > 0 { munmap(p, head) }
            munmap(p + head + size, huge - head)
            let host = p + head
            _ = madvise(host, size, MADV_HUGEPAGE)
            regions.append(GuestRegion(guestAddress: r.guestAddress, size: r.size, fileOffset: offset, host: host))
            offset += r.size
        }
        return regions
    }

    /// Another process's guest RAM (a vhost-user back-end's view): each region maps `size` bytes
    /// of its own fd at `fileOffset`. The fds are closed here, mapped or not. Regions are checked
    /// (page-aligned offset not needed, sizes bounded, no overlap), never trusted.
    public init(mapping shared: [(guestAddress: UInt64, size: UInt64, fd: Int32, fileOffset: UInt64)]) throws {
        defer { for r in shared { close(r.fd) } }
        let sorted = shared.sorted { $0.guestAddress < $1.guestAddress }
        let page = UInt64(max(4096, sysconf(Int32(_SC_PAGESIZE))))
        var regions: [GuestRegion] = [], maps: [(start: UnsafeMutableRawPointer, length: Int)] = []
        var total: UInt64 = 0
        func fail(_ why: String) -> GuestMemoryError {
            for m in maps { munmap(m.start, m.length) }
            return .hostAllocationFailed(why)
        }
        for (i, r) in sorted.enumerated() {
            let (_, o1) = r.guestAddress.addingReportingOverflow(r.size)
            let delta = r.fileOffset % page
            let (length, o2) = r.size.addingReportingOverflow(delta)
            guard r.size > 0, !o1, !o2, length <= UInt64(Int.max / 2), r.fileOffset - delta <= UInt64(Int.max) else {
                throw fail("memory region \(i) (guest 0x\(String(r.guestAddress, radix: 16)), \(r.size) bytes) is not mappable")
            }
            if i > 0, sorted[i - 1].guestAddress + sorted[i - 1].size > r.guestAddress {
                throw fail("memory regions overlap at guest 0x\(String(r.guestAddress, radix: 16))")
            }
            let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, r.fd, off_t(r.fileOffset - delta))
            guard let p, p != MAP_FAILED else {
                throw fail("cannot map memory region \(i) (\(r.size) bytes at offset \(r.fileOffset)): \(String(cString: strerror(errno)))")
            }
            maps.append((p, Int(length)))
            regions.append(GuestRegion(guestAddress: r.guestAddress, size: r.size, fileOffset: r.fileOffset, host: p + Int(delta)))
            total &+= r.size
        }
        self.regions = regions
        table = Self.table(regions)
        self.fd = -1
        self.totalSize = total
        mappings = maps
    }

    deinit {
        for m in mappings { munmap(m.start, m.length) }
        if fd >= 0 { close(fd) }
        table.deallocate()
    }

    private static func table(_ regions: [GuestRegion]) -> UnsafeMutableBufferPointer<GuestRegion> {
        let t = UnsafeMutableBufferPointer<GuestRegion>.allocate(capacity: regions.count)
        _ = t.initialize(from: regions)
        return t
    }

    /// Host pointer to `length` bytes at `address`, only if the whole range lies in one region.
    @inlinable @inline(__always)
    public func hostPointer(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        table.hostPointer(address, length: length)
    }

    /// A bounds-checked window into guest RAM (valid while this GuestMemory lives).
    public func slice(at address: UInt64, length: Int) throws -> UnsafeMutableRawBufferPointer {
        guard length >= 0, let p = hostPointer(address, length: UInt64(length)) else {
            throw GuestMemoryError.outOfBounds(address: address, length: UInt64(max(length, 0)))
        }
        return UnsafeMutableRawBufferPointer(start: p, count: length)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: UInt64) throws {
        guard buffer.count > 0 else { return }
        let src = try slice(at: address, length: buffer.count)
        buffer.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: buffer.count)
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws {
        guard bytes.count > 0 else { return }
        let dst = try slice(at: address, length: bytes.count)
        dst.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    public func write(_ bytes: [UInt8], at address: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: address) }
    }

    public func readBytes(at address: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: address) }
        return out
    }

    /// Little-endian load of a fixed-width integer (x86 guests are little-endian). Inlinable, so
    /// callers in other modules get it specialized: one access of the integer's width. (Called
    /// unspecialized, it copied byte by byte, and a vCPU updating a virtqueue index meanwhile
    /// was seen half old, half new.)
    @inlinable @inline(__always)
    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) throws -> T {
        guard let p = hostPointer(address, length: UInt64(MemoryLayout<T>.size)) else {
            throw GuestMemoryError.outOfBounds(address: address, length: UInt64(MemoryLayout<T>.size))
        }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    /// Little-endian store of a fixed-width integer: one access of its width (see `load`).
    @inlinable @inline(__always)
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws {
        guard let p = hostPointer(address, length: UInt64(MemoryLayout<T>.size)) else {
            throw GuestMemoryError.outOfBounds(address: address, length: UInt64(MemoryLayout<T>.size))
        }
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Returns every page to the host and zeroes it, as at power-on (used by machine reset).
    public func discardAll() {
        for r in regions {
            if fd >= 0 { _ = ckeel_punch_hole(fd, Int(r.fileOffset), Int(r.size)) }
            _ = madvise(r.host, Int(r.size), MADV_DONTNEED)
        }
    }
}
