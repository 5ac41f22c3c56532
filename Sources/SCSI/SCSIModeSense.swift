/// MODE SENSE 6/10 (SPC-4 §6.11-6.12) with the caching (SBC-3 §6.4.5) and control
/// (SPC-4 §7.5.8) mode pages. Nothing is changeable; MODE SELECT is not implemented.
extension SCSILogicalUnit {
    static let cachingPage: UInt8 = 0x08
    static let controlPage: UInt8 = 0x0A
    static let allPages: UInt8 = 0x3F

    func modeSense(_ c: BigEndianBytes, ten: Bool, _ b: SCSIBuffers) -> SCSIResult {
        let dbd = c[1] & 0x08 != 0, llbaa = ten && c[1] & 0x10 != 0
        let pc = c[2] >> 6, page = c[2] & 0x3F, subpage = c[3]
        guard c[1] & (ten ? 0xE7 : 0xF7) == 0 else { return .check(.invalidField(cdbByte: 1)) }
        guard pc != 3 else { return .check(.savingParametersNotSupported) }
        // Subpage 00h, or FFh (all subpages) with the all-pages code; Keel's pages have no subpages.
        guard subpage == 0 || (subpage == 0xFF && page == Self.allPages) else { return .check(.invalidField(cdbByte: 3)) }
        let changeable = pc == 1
        var pages: [UInt8] = []
        switch page {
        case Self.cachingPage: pages = cachingModePage(changeable)
        case Self.controlPage: pages = controlModePage(changeable)
        case Self.allPages: pages = cachingModePage(changeable) + controlModePage(changeable)
        default: return .check(.invalidField(cdbByte: 2))
        }
        var descriptor: [UInt8] = []
        if !dbd {
            if llbaa {
                descriptor = [UInt8](repeating: 0, count: 16)
                descriptor.putBE(blockCount, at: 0, bytes: 8)
                descriptor.putBE(Self.blockSize, at: 12, bytes: 4)
            } else {
                descriptor = [UInt8](repeating: 0, count: 8)
                // SBC-3 §6.4.2: a 4-byte count, FFFFFFFFh when the medium has more blocks.
                descriptor.putBE(min(blockCount, 0xFFFF_FFFF), at: 0, bytes: 4)
                descriptor.putBE(Self.blockSize, at: 5, bytes: 3)
            }
        }
        // WP, and DPOFUA: READ/WRITE honour FUA (SBC-3 §6.4.1).
        let deviceSpecific: UInt8 = (isReadOnly ? 0x80 : 0x00) | 0x10
        var header: [UInt8]
        if ten {
            header = [0, 0, 0, deviceSpecific, llbaa && !dbd ? 0x01 : 0x00, 0, 0, 0]
            header.putBE(UInt64(header.count + descriptor.count + pages.count - 2), at: 0, bytes: 2)
            header.putBE(UInt64(descriptor.count), at: 6, bytes: 2)
        } else {
            header = [UInt8(header6Length(descriptor.count + pages.count)), 0, deviceSpecific, UInt8(descriptor.count)]
        }
        let limit = ten ? Int(c.u16(7)) : Int(c[4])
        return .good(b.putDataIn(header + descriptor + pages, limit: limit))
    }

    private func header6Length(_ rest: Int) -> Int { min(255, rest + 3) }

    /// Caching page: WCE set (writes are cached until SYNCHRONIZE CACHE), read cache on.
    private func cachingModePage(_ changeable: Bool) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 20)
        p[0] = Self.cachingPage; p[1] = 0x12
        if !changeable { p[2] = 0x04 }
        return p
    }

    /// Control page: defaults (unrestricted reordering allowed, QERR 0, descriptor sense off).
    private func controlModePage(_ changeable: Bool) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 12)
        p[0] = Self.controlPage; p[1] = 0x0A
        if !changeable { p[3] = 0x10 }                 // QUEUE ALGORITHM MODIFIER 1: unrestricted
        p.putBE(0xFFFF, at: 8, bytes: 2)               // BUSY TIMEOUT PERIOD: unlimited
        return p
    }
}
