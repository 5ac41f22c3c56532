/// Fixed ACPI Description Table, revision 6 (ACPI 6.0 §5.2.9): a full (not hardware-reduced) PC
/// with the PIIX4-style PM1a event/control blocks and PM timer in I/O space, ACPI always enabled.
enum FADT {
    static let signature = "FACP"
    static let revision: UInt8 = 6
    static let minorRevision: UInt8 = 0
    static let length = 276

    // Fixed Feature Flags (Table 5-35).
    static let flagWBINVD: UInt32 = 1 << 0
    static let flagPROC_C1: UInt32 = 1 << 2
    static let flagSLP_BUTTON: UInt32 = 1 << 5     // no fixed-feature sleep button
    static let flagTMR_VAL_EXT: UInt32 = 1 << 8
    static let flagRESET_REG_SUP: UInt32 = 1 << 10
    static let flagHW_REDUCED_ACPI: UInt32 = 1 << 20

    // IA-PC Boot Architecture Flags (Table 5-36).
    static let bootLegacyDevices: UInt16 = 1 << 0
    static let boot8042: UInt16 = 1 << 1
    static let bootVGANotPresent: UInt16 = 1 << 2
    static let bootMSINotSupported: UInt16 = 1 << 3
    static let bootCMOSRTCNotPresent: UInt16 = 1 << 5

    static let pm1EventLength: UInt8 = 4
    static let pm1ControlLength: UInt8 = 2
    static let pmTimerLength: UInt8 = 4

    static func flags(_ config: ACPIConfiguration) -> UInt32 {
        flagWBINVD | flagPROC_C1 | flagSLP_BUTTON | flagTMR_VAL_EXT | flagRESET_REG_SUP
    }

    static func bootArchitecture(_ config: ACPIConfiguration) -> UInt16 {
        var f = bootLegacyDevices
        if config.hasI8042 { f |= boot8042 }
        if !config.hasVGA { f |= bootVGANotPresent }
        if !config.hasRTC { f |= bootCMOSRTCNotPresent }
        return f
    }

    /// `facs` and `dsdt` are guest-physical; the 32-bit copies are 0 when they lie above 4 GiB.
    static func build(_ config: ACPIConfiguration, facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var w = ACPIByteWriter()
        let base = SystemDescriptionTable.headerLength
        w.u32(UInt32(exactly: facs) ?? 0)              // 36 FIRMWARE_CTRL
        w.u32(UInt32(exactly: dsdt) ?? 0)              // 40 DSDT
        w.u8(0)                                        // 44 reserved (ACPI 1.0 INT_MODEL)
        w.u8(0)                                        // 45 Preferred_PM_Profile: unspecified
        w.u16(config.sciInterrupt)                     // 46 SCI_INT
        w.u32(0)                                       // 48 SMI_CMD: none, so ACPI mode is permanent
        w.u8(0)                                        // 52 ACPI_ENABLE
        w.u8(0)                                        // 53 ACPI_DISABLE
        w.u8(0)                                        // 54 S4BIOS_REQ
        w.u8(0)                                        // 55 PSTATE_CNT
        w.u32(UInt32(config.pm1aEventBlock))           // 56 PM1a_EVT_BLK
        w.u32(0)                                       // 60 PM1b_EVT_BLK
        w.u32(UInt32(config.pm1aControlBlock))         // 64 PM1a_CNT_BLK
        w.u32(0)                                       // 68 PM1b_CNT_BLK
        w.u32(0)                                       // 72 PM2_CNT_BLK
        w.u32(UInt32(config.pmTimerBlock))             // 76 PM_TMR_BLK
        w.u32(0)                                       // 80 GPE0_BLK
        w.u32(0)                                       // 84 GPE1_BLK
        w.u8(pm1EventLength)                           // 88 PM1_EVT_LEN
        w.u8(pm1ControlLength)                         // 89 PM1_CNT_LEN
        w.u8(0)                                        // 90 PM2_CNT_LEN
        w.u8(pmTimerLength)                            // 91 PM_TMR_LEN
        w.u8(0)                                        // 92 GPE0_BLK_LEN
        w.u8(0)                                        // 93 GPE1_BLK_LEN
        w.u8(0)                                        // 94 GPE1_BASE
        w.u8(0)                                        // 95 CST_CNT: no _CST notification
        w.u16(0x0FFF)                                  // 96 P_LVL2_LAT > 100: C2 not supported
        w.u16(0x0FFF)                                  // 98 P_LVL3_LAT > 1000: C3 not supported
        w.u16(0)                                       // 100 FLUSH_SIZE
        w.u16(0)                                       // 102 FLUSH_STRIDE
        w.u8(0)                                        // 104 DUTY_OFFSET
        w.u8(0)                                        // 105 DUTY_WIDTH
        w.u8(0)                                        // 106 DAY_ALRM
        w.u8(0)                                        // 107 MON_ALRM
        w.u8(config.hasRTC ? config.rtcCenturyIndex : 0) // 108 CENTURY
        w.u16(bootArchitecture(config))                // 109 IAPC_BOOT_ARCH
        w.u8(0)                                        // 111 reserved
        w.u32(flags(config))                           // 112 Flags
        w.genericAddress(.systemIO(config.resetRegisterPort, bytes: 1)) // 116 RESET_REG
        w.u8(config.resetValue)                        // 128 RESET_VALUE
        w.u16(0)                                       // 129 ARM_BOOT_ARCH
        w.u8(minorRevision)                            // 131 FADT Minor Version
        w.u64(facs)                                    // 132 X_FIRMWARE_CTRL
        w.u64(dsdt)                                    // 140 X_DSDT
        w.genericAddress(.systemIO(config.pm1aEventBlock, bytes: pm1EventLength))   // 148 X_PM1a_EVT_BLK
        w.genericAddress(.unused)                      // 160 X_PM1b_EVT_BLK
        w.genericAddress(.systemIO(config.pm1aControlBlock, bytes: pm1ControlLength)) // 172 X_PM1a_CNT_BLK
        w.genericAddress(.unused)                      // 184 X_PM1b_CNT_BLK
        w.genericAddress(.unused)                      // 196 X_PM2_CNT_BLK
        w.genericAddress(.systemIO(config.pmTimerBlock, bytes: pmTimerLength))      // 208 X_PM_TMR_BLK
        w.genericAddress(.unused)                      // 220 X_GPE0_BLK
        w.genericAddress(.unused)                      // 232 X_GPE1_BLK
        w.genericAddress(.unused)                      // 244 SLEEP_CONTROL_REG (hardware-reduced only)
        w.genericAddress(.unused)                      // 256 SLEEP_STATUS_REG (hardware-reduced only)
        w.u64(0)                                       // 268 Hypervisor Vendor Identity
        assert(base + w.count == length)
        return SystemDescriptionTable.make(signature: signature, revision: revision, body: w.bytes)
    }
}
