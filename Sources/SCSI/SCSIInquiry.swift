/// INQUIRY (SPC-4 §6.6): standard data and the vital product data pages Linux reads
/// (SPC-4 §7.8, SBC-3 §6.6).
extension SCSILogicalUnit {
    static let supportedVPDPages: [UInt8] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]

    func inquiry(_ c: BigEndianBytes, _ b: SCSIBuffers) -> SCSIResult {
        let evpd = c[1] & 0x01 != 0, page = c[2]
        guard c[1] & 0xFE == 0 else { return .check(.invalidField(cdbByte: 1)) }   // CMDDT and reserved
        let limit = Int(c.u16(3))
        guard evpd else {
            guard page == 0 else { return .check(.invalidField(cdbByte: 2)) }
            return .good(b.putDataIn(standardInquiryData(peripheral: 0x00), limit: limit))
        }
        guard let data = vpdPage(page) else { return .check(.invalidField(cdbByte: 2)) }
        return .good(b.putDataIn(data, limit: limit))
    }

    /// 36 bytes of standard INQUIRY data; `peripheral` is qualifier and device type.
    static func standardInquiryData(peripheral: UInt8, vendor: String, product: String, revision: String) -> [UInt8] {
        var d = [UInt8](repeating: 0, count: 36)
        d[0] = peripheral
        d[2] = 0x06                                  // VERSION: SPC-4
        d[3] = 0x12                                  // HISUP, RESPONSE DATA FORMAT 2
        d[4] = UInt8(d.count - 5)                    // ADDITIONAL LENGTH
        d[7] = 0x02                                  // CMDQUE: tagged commands
        d.replaceSubrange(8..<16, with: Self.ascii(vendor, 8))
        d.replaceSubrange(16..<32, with: Self.ascii(product, 16))
        d.replaceSubrange(32..<36, with: Self.ascii(revision, 4))
        return d
    }

    func standardInquiryData(peripheral: UInt8) -> [UInt8] {
        Self.standardInquiryData(peripheral: peripheral, vendor: configuration.vendor,
                                 product: configuration.product, revision: configuration.revision)
    }

    /// Printable ASCII, space-padded or cut to `width` (SPC-4 §4.4.1).
    static func ascii(_ s: String, _ width: Int) -> [UInt8] {
        var out = s.utf8.prefix(width).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: " ") }
        out += [UInt8](repeating: 0x20, count: width - out.count)
        return out
    }

    var vpdPages: [UInt8] { Self.supportedVPDPages.filter { $0 != 0x80 || !configuration.serial.isEmpty } }

    func vpdPage(_ page: UInt8) -> [UInt8]? {
        guard vpdPages.contains(page) else { return nil }
        var body: [UInt8]
        switch page {
        case 0x00:
            body = vpdPages
        case 0x80:
            body = Self.ascii(configuration.serial, min(configuration.serial.utf8.count, 252))
        case 0x83:
            // One T10 vendor ID designator (SPC-4 §7.8.6.4): ASCII code set, associated with
            // the logical unit; vendor then the serial (or product) as the unique part.
            let unique = configuration.serial.isEmpty ? configuration.product : configuration.serial
            let id = Self.ascii(configuration.vendor, 8) + Self.ascii(unique, min(unique.utf8.count, 200))
            body = [0x02, 0x01, 0x00, UInt8(id.count)] + id
        case 0xB0:
            // Block limits (SBC-3 §6.6.4).
            body = [UInt8](repeating: 0, count: 0x3C)
            body[0] = 0x01                                               // WSNZ: WRITE SAME needs a count
            body.putBE(1, at: 2, bytes: 2)                               // optimal transfer length granularity
            body.putBE(UInt64(Self.maxTransferBlocks), at: 4, bytes: 4)
            body.putBE(UInt64(Self.maxUnmapBlocks), at: 16, bytes: 4)
            body.putBE(UInt64(Self.maxUnmapDescriptors), at: 20, bytes: 4)
            body.putBE(1, at: 24, bytes: 4)                              // optimal unmap granularity
            body.putBE(Self.maxWriteSameBlocks, at: 32, bytes: 8)
        case 0xB1:
            // Block device characteristics (SBC-3 §6.6.2): non-rotating medium.
            body = [UInt8](repeating: 0, count: 0x3C)
            body.putBE(1, at: 0, bytes: 2)
        default:
            // Logical block provisioning (SBC-3 §6.6.5): UNMAP, WRITE SAME(16) and (10) with
            // UNMAP; thin provisioned.
            body = [0x00, 0xE0, 0x02, 0x00]
        }
        var d: [UInt8] = [0x00, page, 0, 0]
        d.putBE(UInt64(body.count), at: 2, bytes: 2)
        return d + body
    }
}
