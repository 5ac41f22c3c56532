/// A SCSI target: logical units by number (SAM-5 §4.6), REPORT LUNS for the whole target and
/// the answers SPC-4 requires for a logical unit that does not exist.
public final class SCSITarget: @unchecked Sendable {
    /// LUNs 0...16383: what single-level flat and peripheral addressing can name.
    public static let maxLUN = 16383

    public private(set) var units: [Int: SCSILogicalUnit] = [:]

    public init() {}

    /// Adds a logical unit; false if `lun` is taken or out of range. Call before commands run.
    @discardableResult
    public func attach(_ unit: SCSILogicalUnit, lun: Int) -> Bool {
        guard (0...Self.maxLUN).contains(lun), units[lun] == nil else { return false }
        units[lun] = unit
        return true
    }

    /// Executes a CDB addressed to `lun` (nil: the initiator used an address Keel cannot decode).
    public func execute(lun: Int?, cdb: [UInt8], buffers: SCSIBuffers) -> SCSIResult {
        let opcode = cdb.first ?? 0xFF
        if opcode == SCSIOperation.reportLuns { return reportLuns(BigEndianBytes(Array(cdb.prefix(12))), cdb.count >= 12, buffers) }
        if let lun, let unit = units[lun] { return unit.execute(cdb: cdb, buffers: buffers) }
        switch opcode {
        case SCSIOperation.inquiry:
            // SPC-4 §6.6.2: qualifier 011b, type 1Fh: no logical unit here.
            let c = BigEndianBytes(Array(cdb.prefix(6)))
            guard cdb.count >= 6, c[1] & 0xFE == 0, c[1] & 0x01 != 0 || c[2] == 0 else { return .check(.invalidFieldInCDB) }
            if c[1] & 0x01 != 0 { return .check(.logicalUnitNotSupported) }
            let data = SCSILogicalUnit.standardInquiryData(peripheral: 0x7F, vendor: "KEEL", product: "", revision: "")
            return .good(buffers.putDataIn(data, limit: Int(c.u16(3))))
        case SCSIOperation.requestSense:
            // SPC-4 §6.39: sense data saying the logical unit is not supported, with GOOD status.
            guard cdb.count >= 6 else { return .check(.invalidFieldInCDB) }
            return .good(buffers.putDataIn(SCSISense.logicalUnitNotSupported.fixedFormat, limit: Int(cdb[4])))
        default:
            return .check(.logicalUnitNotSupported)
        }
    }

    /// REPORT LUNS (SPC-4 §6.33): the attached LUNs, single level, peripheral (LUN < 256) or
    /// flat space addressing.
    private func reportLuns(_ c: BigEndianBytes, _ long: Bool, _ b: SCSIBuffers) -> SCSIResult {
        guard long else { return .check(.invalidFieldInCDB) }
        let select = c[2]
        guard [0x00, 0x01, 0x02, 0x10, 0x11, 0x12].contains(select) else { return .check(.invalidField(cdbByte: 2)) }
        let allocation = c.u32(6)
        guard allocation >= 16 else { return .check(.invalidField(cdbByte: 6)) }
        // Select 01h lists well-known LUNs only (Keel has none); 11h/12h only for the
        // administrative LUN, which Keel's LUN 0 answers like 00h/02h.
        let luns = select == 0x01 ? [] : units.keys.sorted()
        var d = [UInt8](repeating: 0, count: 8 + 8 * luns.count)
        d.putBE(UInt64(8 * luns.count), at: 0, bytes: 4)
        for (i, lun) in luns.enumerated() {
            let o = 8 + 8 * i
            d.putBE(lun < 256 ? UInt64(lun) : 0x4000 | UInt64(lun), at: o, bytes: 2)
        }
        return .good(b.putDataIn(d, limit: Int(min(allocation, UInt32(Int32.max)))))
    }
}
