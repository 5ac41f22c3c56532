/// An internal snapshot's table entry (qcow2.txt "Snapshots"): listed, never applied.
public struct Qcow2Snapshot: Sendable, Equatable {
    public var l1TableOffset: UInt64
    public var l1Size: UInt32
    public var id: String
    public var name: String
    public var dateSeconds: UInt32
    public var dateNanoseconds: UInt32
    public var vmClockNanoseconds: UInt64
    public var vmStateSize: UInt64
    public var diskSize: UInt64?
    public var icount: UInt64?

    /// Reads `nb_snapshots` entries, each bounded: ids and names by their 16-bit lengths, extra
    /// data by QEMU's 1 KiB limit, the whole table by QEMU's 64 MiB limit.
    static func readTable(file: RawFileDevice, header: Qcow2Header, fileSize: UInt64) throws(BlockError) -> (snapshots: [Qcow2Snapshot], tableBytes: UInt64) {
        guard header.nbSnapshots > 0 else { return ([], 0) }
        var result: [Qcow2Snapshot] = []
        var offset = header.snapshotsOffset
        let cs = UInt64(header.clusterSize)
        for i in 0..<Int(header.nbSnapshots) {
            guard offset - header.snapshotsOffset <= 64 << 20 else {
                throw BlockError.corrupt("'\(file.path)': snapshot table exceeds 64 MiB")
            }
            guard offset + 40 <= fileSize else {
                throw BlockError.corrupt("'\(file.path)': snapshot \(i) at offset \(offset) is past the end of the file")
            }
            var fixed = [UInt8](repeating: 0, count: 40)
            try mutatingBytes(&fixed) { (p) throws(BlockError) in try file.pread(into: p, at: offset) }
            let idLen = Int(fixed.be16(12)), nameLen = Int(fixed.be16(14)), extraLen = Int(fixed.be32(36))
            guard extraLen <= 1024 else { throw BlockError.corrupt("'\(file.path)': snapshot \(i) has \(extraLen) bytes of extra data (limit 1024)") }
            var rest = [UInt8](repeating: 0, count: extraLen + idLen + nameLen)
            try mutatingBytes(&rest) { (p) throws(BlockError) in try file.pread(into: p, at: offset + 40) }
            var s = Qcow2Snapshot(l1TableOffset: fixed.be64(0), l1Size: fixed.be32(8),
                                  id: String(decoding: rest[extraLen..<(extraLen + idLen)], as: UTF8.self),
                                  name: String(decoding: rest[(extraLen + idLen)...], as: UTF8.self),
                                  dateSeconds: fixed.be32(16), dateNanoseconds: fixed.be32(20),
                                  vmClockNanoseconds: fixed.be64(24), vmStateSize: UInt64(fixed.be32(32)))
            if extraLen >= 8 { s.vmStateSize = rest.be64(0) }
            if extraLen >= 16 { s.diskSize = rest.be64(8) }
            if extraLen >= 24 { s.icount = rest.be64(16) }
            guard s.l1TableOffset % cs == 0, UInt64(s.l1Size) * 8 <= Qcow2Header.maxL1Bytes else {
                throw BlockError.corrupt("'\(file.path)': snapshot \(i) has an invalid L1 table (offset \(s.l1TableOffset), \(s.l1Size) entries)")
            }
            result.append(s)
            offset += UInt64(40 + extraLen + idLen + nameLen + 7) / 8 * 8
        }
        return (result, offset - header.snapshotsOffset)
    }
}
