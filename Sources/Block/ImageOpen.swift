import CKeel
import Glibc

public enum ImageFormat: String, Sendable, CaseIterable {
    case raw, qcow2
}

/// The format a file's first bytes announce, as QEMU probes: qcow2 for the QFI\xfb magic,
/// raw otherwise (a qcow2 image is never silently taken for raw).
public func probeImageFormat(path: String) throws(BlockError) -> ImageFormat {
    let fd = ckeel_open(path, O_RDONLY | O_CLOEXEC, 0)
    guard fd >= 0 else { throw BlockError.errno("cannot open '\(path)'") }
    defer { Glibc.close(fd) }
    var magic: UInt32 = 0
    let n = withUnsafeMutableBytes(of: &magic) { Glibc.pread(fd, $0.baseAddress, 4, 0) }
    return n == 4 && UInt32(bigEndian: magic) == Qcow2Header.magic ? .qcow2 : .raw
}

/// How to open an image and its backing chain.
public struct ImageOpenOptions: Sendable {
    public var format: ImageFormat? = nil      // nil: probe
    public var readOnly = false
    public var cache: CacheMode = .writeback
    /// Off for inspection (qemu-img info opens no backing file either).
    public var openBacking = true
    /// Lets check -r open an image marked corrupt read-write, to repair it.
    public var forRepair = false
    public init(format: ImageFormat? = nil, readOnly: Bool = false, cache: CacheMode = .writeback) {
        self.format = format; self.readOnly = readOnly; self.cache = cache
    }
}

/// Opens a raw or qcow2 image with its chain of backing files (read-only, relative names
/// resolved against the directory of the image naming them, loops refused).
public func openImage(path: String, options: ImageOpenOptions = ImageOpenOptions()) throws(BlockError) -> BlockDevice {
    try openChain(path: path, options: options, seen: [])
}

let maxBackingChain = 64

func openChain(path: String, options: ImageOpenOptions, seen: [String]) throws(BlockError) -> BlockDevice {
    let canonical = canonicalPath(path)
    guard !seen.contains(canonical) else {
        throw BlockError.corrupt("backing file loop: '\(path)' is its own backing file (via \(seen.count) image\(seen.count == 1 ? "" : "s"))")
    }
    guard seen.count < maxBackingChain else { throw BlockError.corrupt("backing chain of '\(path)' is longer than \(maxBackingChain) images") }
    let probed = try probeImageFormat(path: path)
    let format = options.format ?? probed
    let file = try RawFileDevice(path: path, readOnly: options.readOnly, cache: options.cache)
    if format == .raw {
        // QEMU's rule for guessed raw: writes must not make sector 0 look like another format.
        file.guardsFormatProbe = options.format == nil
        return file
    }
    do throws(BlockError) {
        let header = try Qcow2Image.readHeader(file)
        var backing: BlockDevice? = nil
        if options.openBacking, let name = header.backingFile {
            var o = options
            o.readOnly = true
            o.format = try header.backingFormat.map { (f) throws(BlockError) in
                guard let fmt = ImageFormat(rawValue: f) else {
                    throw BlockError(.unsupported, "'\(path)': backing file format '\(f)' is not supported")
                }
                return fmt
            }
            let resolved = resolveRelative(name, to: path)
            do throws(BlockError) {
                backing = try openChain(path: resolved, options: o, seen: seen + [canonical])
            } catch {
                throw BlockError(error.kind, "could not open backing file '\(resolved)' of '\(path)': \(error.message)")
            }
        }
        return try Qcow2Image(file: file, header: header, backing: backing, readOnly: options.readOnly,
                              allowCorrupt: options.forRepair)
    } catch {
        file.close()
        throw error
    }
}

extension Qcow2Image {
    /// Parses the header from the file's first cluster (2 MiB at most).
    static func readHeader(_ file: RawFileDevice) throws(BlockError) -> Qcow2Header {
        let length = try file.fileLength()
        var first = [UInt8](repeating: 0, count: 104)
        try mutatingBytes(&first) { (p) throws(BlockError) in try file.pread(into: p, at: 0) }
        let bits = first.be32(20)
        let want = (9...21).contains(bits) ? 1 << Int(bits) : 104
        var bytes = [UInt8](repeating: 0, count: Int(min(UInt64(want), max(length, 104))))
        try mutatingBytes(&bytes) { (p) throws(BlockError) in try file.pread(into: p, at: 0) }
        return try Qcow2Header(bytes: bytes, fileSize: length, path: file.path)
    }

    /// A temporary qcow2 overlay over `base` (QEMU's -snapshot): writes go to an unlinked file
    /// in /var/tmp and vanish with it; `base` is only read.
    public static func temporaryOverlay(on base: BlockDevice, clusterSize: Int = 65536) throws(BlockError) -> Qcow2Image {
        var template = Array("/var/tmp/keel-snapshot-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw BlockError.errno("cannot create a temporary overlay in /var/tmp") }
        let path = String(cString: template)
        defer { unlink(path); Glibc.close(fd) }
        let file = try RawFileDevice(path: path, readOnly: false)
        var o = Qcow2CreateOptions(size: base.size)
        o.clusterSize = clusterSize
        try format(file, o)
        return try Qcow2Image(file: file, header: try readHeader(file), backing: base, readOnly: false)
    }
}
