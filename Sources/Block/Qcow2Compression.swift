import CZlib

/// qcow2's compressed clusters are raw deflate streams (no zlib header) with a 4 KiB window.
/// Returns true when the stream produced exactly a full output buffer.
func inflateRaw(_ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableRawBufferPointer) -> Bool {
    guard let s = src.baseAddress, let d = dst.baseAddress else { return false }
    var z = z_stream()
    guard inflateInit2_(&z, -12, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return false }
    defer { inflateEnd(&z) }
    z.next_in = UnsafeMutablePointer(mutating: s.assumingMemoryBound(to: UInt8.self))
    z.avail_in = UInt32(src.count)
    z.next_out = d.assumingMemoryBound(to: UInt8.self)
    z.avail_out = UInt32(dst.count)
    let r = inflate(&z, Z_FINISH)
    // The stored length is rounded up to sectors, so trailing input is normal; QEMU accepts a
    // stream that ended or filled the cluster.
    return (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && z.avail_out == 0
}

/// Compresses one cluster; nil when the result would not be smaller than the input.
func deflateRaw(_ src: UnsafeRawBufferPointer) -> [UInt8]? {
    guard let s = src.baseAddress else { return nil }
    var z = z_stream()
    guard deflateInit2_(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY,
                        zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
    defer { deflateEnd(&z) }
    var out = [UInt8](repeating: 0, count: src.count)
    let r: Int32 = out.withUnsafeMutableBytes { o in
        z.next_in = UnsafeMutablePointer(mutating: s.assumingMemoryBound(to: UInt8.self))
        z.avail_in = UInt32(src.count)
        z.next_out = o.baseAddress!.assumingMemoryBound(to: UInt8.self)
        z.avail_out = UInt32(o.count - 1)
        return deflate(&z, Z_FINISH)
    }
    guard r == Z_STREAM_END else { return nil }
    out.removeLast(out.count - Int(z.total_out))
    return out
}
