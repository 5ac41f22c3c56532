import Block
import Glibc

extension KeelImg {
    /// qemu-img convert: holes and all-zero runs of the source are skipped (the new target
    /// already reads as zeroes there), data is copied in chunks.
    static func convert(_ args: [String]) throws -> Int32 {
        let a = try ImgArgs(args, valued: ["f", "O", "o", "t", "T", "S", "m"], flags: ["p", "q", "c", "n", "U", "W"])
        guard a.positional.count == 2 else { throw ImgError("convert: expecting a source and a target filename") }
        let (srcPath, dstPath) = (a.positional[0], a.positional[1])
        if a.has("c") { throw ImgError("convert: -c (compressed output) is not supported yet") }
        let outFormat = try parseFormat(a.value("O")) ?? .raw
        let src = try openImage(path: srcPath, options: ImageOpenOptions(format: try parseFormat(a.value("f")), readOnly: true,
                                                                          cache: try parseCache(a.value("T"), default: .writeback)))
        defer { src.close() }
        let size = src.size
        var o = try a.creationOptions()
        var clusterSize = 65536
        if !a.has("n") {
            switch outFormat {
            case .raw:
                guard o.isEmpty else { throw ImgError("convert: invalid option '\(o.keys.sorted()[0])' for raw") }
                try createRaw(dstPath, size)
            case .qcow2:
                var q = Qcow2CreateOptions(size: size)
                if let v = o.removeValue(forKey: "cluster_size") { q.clusterSize = Int(try parseSize(v)) }
                if let v = o.removeValue(forKey: "refcount_bits") {
                    guard let n = Int(v) else { throw ImgError("invalid refcount_bits '\(v)'") }
                    q.refcountBits = n
                }
                if let v = o.removeValue(forKey: "compat") {
                    guard ["0.10", "v2", "1.1", "v3"].contains(v) else { throw ImgError("invalid compat level '\(v)'") }
                    q.version = (v == "0.10" || v == "v2") ? 2 : 3
                }
                guard o.isEmpty else { throw ImgError("convert: invalid option '\(o.keys.sorted()[0])' for qcow2") }
                clusterSize = q.clusterSize
                try Qcow2Image.create(path: dstPath, options: q)
            }
        }
        // qemu-img convert's default target cache mode is unsafe (no fdatasync): the same here.
        let dst = try openImage(path: dstPath, options: ImageOpenOptions(format: outFormat, readOnly: false,
                                                                          cache: try parseCache(a.value("t"), default: .unsafe)))
        defer { dst.close() }
        guard dst.size >= size else { throw ImgError("convert: target '\(dstPath)' is smaller than the source") }
        let granularity = outFormat == .qcow2 ? clusterSize : 4096
        let chunk = max(2 << 20, granularity)
        let progress = a.has("p") && !a.has("q") && isatty(1) != 0
        var shown = -1.0
        func show(_ done: UInt64) {
            let pct = size == 0 ? 100.0 : Double(done) * 100 / Double(size)
            if pct - shown >= 1.0 || (done == size && shown < 100) {
                output("    (" + format("%.2f", pct) + "/100%)\r")
                shown = pct
            }
        }
        if progress { show(0) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: UInt64 = 0
        while offset < size {
            let want = min(UInt64(chunk), size - offset)
            let status = try src.blockStatus(offset: offset, length: want)
            let n = Int(max(1, min(status.length, want)))
            if !status.isZero {
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                try src.read(into: part, at: offset)
                try writeNonZero(UnsafeRawBufferPointer(part), at: offset, granularity: granularity, to: dst)
            }
            offset += UInt64(n)
            if progress { show(offset) }
        }
        try dst.flush()
        if progress { output("\n") }
        return 0
    }

    /// Writes the runs of `data` that are not all zero, in `granularity` pieces (aligned to the
    /// target's offsets).
    static func writeNonZero(_ data: UnsafeRawBufferPointer, at offset: UInt64, granularity: Int, to dst: BlockDevice) throws {
        var i = 0
        var runStart = -1
        while i < data.count {
            let next = min(data.count, Int((offset + UInt64(i)) / UInt64(granularity) + 1) * granularity - Int(offset))
            let zero = isAllZero(UnsafeRawBufferPointer(rebasing: data[i..<next]))
            if !zero && runStart < 0 { runStart = i }
            if zero && runStart >= 0 {
                try dst.write(UnsafeRawBufferPointer(rebasing: data[runStart..<i]), at: offset + UInt64(runStart))
                runStart = -1
            }
            i = next
        }
        if runStart >= 0 { try dst.write(UnsafeRawBufferPointer(rebasing: data[runStart..<data.count]), at: offset + UInt64(runStart)) }
    }

    static func createRaw(_ path: String, _ size: UInt64) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ImgError("cannot create '\(path)': \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        guard size <= UInt64(Int.max), ftruncate(fd, Int(size)) == 0 else {
            throw ImgError("cannot resize '\(path)' to \(size) bytes: \(String(cString: strerror(errno)))")
        }
    }
}
