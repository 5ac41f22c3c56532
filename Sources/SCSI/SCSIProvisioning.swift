import Block

/// UNMAP (SBC-3 §5.28) and WRITE SAME 10/16 (SBC-3 §5.41-5.42): the discard and write-zeroes
/// paths Linux's sd takes when the provisioning VPD page offers them.
extension SCSILogicalUnit {
    func unmap(_ c: BigEndianBytes, _ b: SCSIBuffers) -> SCSIResult {
        guard c[1] & 0x01 == 0 else { return .check(.invalidField(cdbByte: 1)) }   // ANCHOR
        let listLength = Int(c.u16(7))
        if listLength == 0 { return .good() }
        guard listLength >= 8 else { return .check(.parameterListLengthError) }
        if isReadOnly { return .check(.writeProtected) }
        guard let list = b.dataOutBytes(listLength) else { return .overrunResult }
        let p = BigEndianBytes(list)
        let descriptorBytes = Int(p.u16(2))
        // The block descriptors must fit the list and be whole 16-byte descriptors.
        guard descriptorBytes % 16 == 0, descriptorBytes <= listLength - 8 else {
            return .check(SCSISense(.illegalRequest, 0x26, 0x00, fieldPointer: 2, inCDB: false))
        }
        let count = descriptorBytes / 16
        guard count <= Int(Self.maxUnmapDescriptors) else { return .check(.invalidFieldInParameterList) }
        var ranges: [(UInt64, UInt64)] = []
        for i in 0..<count {
            let o = 8 + 16 * i
            let lba = p.u64(o), blocks = UInt64(p.u32(o + 8))
            guard blocks <= UInt64(Self.maxUnmapBlocks) else { return .check(.invalidFieldInParameterList) }
            switch byteRange(lba: lba, count: blocks) {
            case .success(let r): if r.length > 0 { ranges.append((r.offset, r.length)) }
            case .failure(let e): return .check(e.sense)
            }
        }
        do throws(BlockError) {
            for (offset, length) in ranges { try backend.discard(offset: offset, length: length) }
        } catch where error.kind == .unsupported {
            // Unmapping is advisory: a backend that cannot discard keeps the data.
        } catch {
            return .check(Self.sense(for: error, writing: true))
        }
        return .good()
    }

    func writeSame(_ c: BigEndianBytes, sixteen: Bool, _ b: SCSIBuffers) -> SCSIResult {
        let flags = c[1]
        // WRPROTECT and ANCHOR are unsupported; NDOB exists only in the 16-byte form; PBDATA/LBDATA obsolete.
        guard flags & 0xF6 & (sixteen ? 0xFF : 0xFE) == 0, flags & 0x01 == 0 || sixteen else {
            return .check(.invalidField(cdbByte: 1))
        }
        let unmapAllowed = flags & 0x08 != 0, noDataOutBuffer = sixteen && flags & 0x01 != 0
        let lba = sixteen ? c.u64(2) : UInt64(c.u32(2))
        let blocks = sixteen ? UInt64(c.u32(10)) : UInt64(c.u16(7))
        if isReadOnly { return .check(.writeProtected) }
        // WSNZ is set in the block limits page: a zero count is not "to the end of the medium".
        guard blocks > 0, blocks <= Self.maxWriteSameBlocks else { return .check(.invalidField(cdbByte: sixteen ? 10 : 7)) }
        let range: (offset: UInt64, length: UInt64)
        switch byteRange(lba: lba, count: blocks) {
        case .success(let r): range = r
        case .failure(let e): return .check(e.sense)
        }
        var block = [UInt8](repeating: 0, count: Int(Self.blockSize))
        if !noDataOutBuffer {
            guard let data = b.dataOutBytes(Int(Self.blockSize)) else { return .overrunResult }
            block = data
        }
        do throws(BlockError) {
            if block.allSatisfy({ $0 == 0 }) {
                try backend.writeZeroes(offset: range.offset, length: range.length, mayUnmap: unmapAllowed)
            } else {
                try writePattern(block, offset: range.offset, length: range.length)
            }
        } catch {
            return .check(Self.sense(for: error, writing: true))
        }
        return .good()
    }

    /// Writes `block` over and over, a chunk of copies at a time.
    private func writePattern(_ block: [UInt8], offset: UInt64, length: UInt64) throws(BlockError) {
        let perChunk = 128
        var chunk: [UInt8] = []
        chunk.reserveCapacity(block.count * perChunk)
        for _ in 0..<perChunk { chunk += block }
        var at = offset, left = length
        while left > 0 {
            let n = Int(min(left, UInt64(chunk.count)))
            var failure: BlockError?
            chunk.withUnsafeBytes { p in
                do throws(BlockError) { try backend.write(UnsafeRawBufferPointer(rebasing: p[0..<n]), at: at) } catch { failure = error }
            }
            if let failure { throw failure }
            at += UInt64(n); left -= UInt64(n)
        }
    }
}
