/// The local APIC's register interfaces: the xAPIC 4 KiB MMIO page, the x2APIC MSRs
/// 0x800-0x8FF, IA32_APIC_BASE (0x1B) and IA32_TSC_DEADLINE (0x6E0). Big lock held.
extension LocalAPIC {
    public static let msrAPICBase: UInt32 = 0x1B
    public static let msrTSCDeadline: UInt32 = 0x6E0
    public static let msrX2APICFirst: UInt32 = 0x800
    public static let msrX2APICLast: UInt32 = 0x8FF

    // MARK: xAPIC MMIO

    /// Registers are 32 bits at 16-byte aligned offsets (SDM 10.4.1). Narrower or misaligned
    /// reads return the addressed bytes of the 16-byte slot, whose bytes 4-15 read as zero.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard offset < 0x1000, isXAPICMMIOEnabled else { data.storeLittleEndian(0); return }
        let slot = offset & ~0xF, byte = offset & 0xF
        var value: UInt64 = 0
        if byte < 4 {
            let r = readRegister(slot, x2APIC: false) ?? 0
            value = UInt64(r) >> (8 * byte)
        }
        data.storeLittleEndian(value)
    }

    /// Only a 32-bit (or wider: low 32 bits) write at the start of a 16-byte slot reaches the
    /// register; other writes are dropped.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < 0x1000, offset & 0xF == 0, data.count >= 4, isXAPICMMIOEnabled else { return }
        _ = writeRegister(offset, UInt64(UInt32(truncatingIfNeeded: data.littleEndianValue)), x2APIC: false)
    }

    // MARK: MSRs

    /// RDMSR of an APIC MSR; nil means #GP. Returns nil for MSRs the APIC does not own too.
    public func readMSR(_ index: UInt32) -> UInt64? {
        switch index {
        case Self.msrAPICBase: return apicBase
        case Self.msrTSCDeadline: return timerMode == .tscDeadline ? tscDeadline : 0
        case Self.msrX2APICFirst...Self.msrX2APICLast:
            guard isX2APIC else { return nil }
            let reg = UInt64(index - Self.msrX2APICFirst) << 4
            if reg == 0x300 { return UInt64(icrHigh) << 32 | UInt64(icrLow) }
            return readRegister(reg, x2APIC: true).map { UInt64($0) }
        default: return nil
        }
    }

    /// WRMSR of an APIC MSR; false means #GP.
    public func writeMSR(_ index: UInt32, _ value: UInt64) -> Bool {
        switch index {
        case Self.msrAPICBase: return writeAPICBase(value)
        case Self.msrTSCDeadline:
            writeTSCDeadline(value)
            return true
        case Self.msrX2APICFirst...Self.msrX2APICLast:
            guard isX2APIC else { return false }
            let reg = UInt64(index - Self.msrX2APICFirst) << 4
            switch reg {
            case 0x300:
                // ICR: reserved bits 12, 13, 16, 17 and 20-31 must be zero (SDM 10.12.9).
                guard value & 0x0000_0000_FFF3_3000 == 0 else { return false }
                icrLow = UInt32(truncatingIfNeeded: value)
                icrHigh = UInt32(truncatingIfNeeded: value >> 32)
                sendIPI(icr: icrLow, destination: icrHigh)
                return true
            case 0x3F0:
                // SELF IPI: vector only.
                guard value & ~0xFF == 0 else { return false }
                let v = UInt8(truncatingIfNeeded: value)
                if v < 16 { raiseError(Self.esrSendIllegalVector) } else { acceptFixed(vector: v, level: false) }
                return true
            default:
                guard value >> 32 == 0 else { return false }
                return writeRegister(reg, value, x2APIC: true)
            }
        default: return false
        }
    }

    /// IA32_APIC_BASE (SDM 10.12.5): disabled <-> xAPIC <-> x2APIC, never x2APIC -> xAPIC
    /// directly nor EXTD without EN; reserved bits (0-7, 9, above MAXPHYADDR) #GP.
    func writeAPICBase(_ value: UInt64) -> Bool {
        let reserved: UInt64 = 0x2FF | ~((UInt64(1) << UInt64(maxPhysicalAddressBits)) - 1)
        guard value & reserved == 0 else { return false }
        let en = value & Self.baseEN != 0, extd = value & Self.baseEXTD != 0
        if extd && !en { return false }
        let wasEnabled = isHardwareEnabled, wasX2 = isX2APIC
        if wasX2 && en && !extd { return false }
        if !wasEnabled && en && extd { return false }
        apicBase = (value & ~Self.baseBSP) | (apicBase & Self.baseBSP)
        if !en {
            // Hardware-disabled: the APIC returns to its power-up state (SDM 10.4.3).
            id = initialID << 24
            resetRegisters()
        } else if extd && !wasX2 {
            id = initialID
            ldr = x2APICLogicalID
        } else if !wasEnabled {
            id = initialID << 24
        }
        updateEvents()
        return true
    }

    // MARK: Register file

    /// Reads register `reg` (16-byte aligned offset); nil where x2APIC raises #GP (xAPIC: an
    /// illegal register address, reading 0).
    func readRegister(_ reg: UInt64, x2APIC: Bool) -> UInt32? {
        switch reg {
        case 0x20: return id
        case 0x30: return Self.version
        case 0x80: return tpr
        case 0x90: return x2APIC ? nil : arbitrationPriority
        case 0xA0: return processorPriority
        case 0xB0: return x2APIC ? nil : 0            // EOI is write-only
        case 0xC0: return x2APIC ? nil : 0            // remote read: not supported
        case 0xD0: return ldr
        case 0xE0: return x2APIC ? nil : dfr
        case 0xF0: return svr
        case 0x100...0x170: return isr[Int((reg - 0x100) >> 4)]
        case 0x180...0x1F0: return tmr[Int((reg - 0x180) >> 4)]
        case 0x200...0x270: return irr[Int((reg - 0x200) >> 4)]
        case 0x280: return esr
        case 0x300: return icrLow
        case 0x310: return x2APIC ? nil : icrHigh
        case 0x320...0x370: return lvt[Int((reg - 0x320) >> 4)]
        case 0x380: return timerInitialCount
        case 0x390: return currentCount
        case 0x3E0: return timerDivideConfig
        default:
            if x2APIC { return nil }
            raiseError(Self.esrIllegalRegister)
            return 0
        }
    }

    /// Writes register `reg`; false where x2APIC raises #GP (read-only, reserved, EOI or ESR
    /// with a non-zero value).
    func writeRegister(_ reg: UInt64, _ value64: UInt64, x2APIC: Bool) -> Bool {
        let value = UInt32(truncatingIfNeeded: value64)
        switch reg {
        case 0x20:
            if x2APIC { return false }
            id = value & 0xFF00_0000
        case 0x80:
            if x2APIC && value & ~0xFF != 0 { return false }
            tpr = value & 0xFF
            updateEvents()
        case 0xB0:
            if x2APIC && value != 0 { return false }
            endOfInterrupt()
        case 0xD0:
            if x2APIC { return false }
            ldr = value & 0xFF00_0000
        case 0xE0:
            if x2APIC { return false }
            dfr = value | 0x0FFF_FFFF
        case 0xF0:
            // Vector, APIC software enable, focus-processor checking; no EOI-broadcast suppression.
            if x2APIC && value & ~0x13FF != 0 { return false }
            svr = value & 0x3FF
            if !isSoftwareEnabled {
                for i in 0..<lvt.count { lvt[i] |= Self.lvtMasked }
            }
            updateEvents()
        case 0x280:
            if x2APIC && value != 0 { return false }
            esr = esrPending
            esrPending = 0
        case 0x300:
            if x2APIC { return false }   // the x2APIC ICR is the 64-bit MSR, handled by the caller
            icrLow = value & 0x000C_DFFF  // delivery status (bit 12) always reads idle
            sendIPI(icr: icrLow, destination: icrHigh >> 24)
        case 0x310:
            if x2APIC { return false }
            icrHigh = value & 0xFF00_0000
        case 0x320...0x370:
            let i = Int((reg - 0x320) >> 4)
            var v = value & Self.lvtWriteMask[i]
            if !isSoftwareEnabled { v |= Self.lvtMasked }
            // Remote IRR (LINT bit 14) is read-only.
            v |= lvt[i] & (1 << 14)
            if i == Self.lvtTimer {
                writeTimerLVT(v)
            } else {
                lvt[i] = v
                updateEvents()
            }
        case 0x380:
            writeInitialCount(value)
        case 0x3E0:
            if x2APIC && value & ~0xB != 0 { return false }
            writeDivideConfig(value & 0xB)
        case 0x30, 0x90, 0xA0, 0xC0, 0x100...0x270, 0x390:
            if x2APIC { return false }   // read-only: ignored in xAPIC mode
        default:
            if x2APIC { return false }
            raiseError(Self.esrIllegalRegister)
        }
        return true
    }
}
