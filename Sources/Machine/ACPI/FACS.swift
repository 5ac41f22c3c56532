/// Firmware ACPI Control Structure (ACPI 6.x §5.2.10): required on a non-hardware-reduced
/// platform; holds the global lock and wake vectors. It has no checksum and must be 64-byte aligned.
enum FACS {
    static let signature = "FACS"
    static let length = 64
    static let alignment: UInt64 = 64
    static let version: UInt8 = 2

    static func build() -> [UInt8] {
        var w = ACPIByteWriter()
        w.ascii(signature, width: 4)  // 0
        w.u32(UInt32(length))         // 4
        w.u32(0)                      // 8 Hardware Signature
        w.u32(0)                      // 12 Firmware Waking Vector: Keel has no S3
        w.u32(0)                      // 16 Global Lock
        w.u32(0)                      // 20 Flags: no S4BIOS, no 64-bit wake
        w.u64(0)                      // 24 X_Firmware_Waking_Vector
        w.u8(version)                 // 32 Version
        w.zeros(3)                    // 33 Reserved
        w.u32(0)                      // 36 OSPM Flags
        w.zeros(24)                   // 40 Reserved
        assert(w.count == length)
        return w.bytes
    }
}
