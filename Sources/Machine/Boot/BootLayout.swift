/// Where Keel puts the things it builds for a direct kernel boot. Everything sits in low RAM below
/// the EBDA (0x9FC00) so it never collides with the ACPI tables Keel keeps in 0xE0000..0xFFFFF,
/// and everything but the kernel itself stays below `bootAreaEnd`.
public enum BootLayout {
    /// The GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), TSS (0x20, 16 bytes in long mode).
    public static let gdt: UInt64 = 0x500
    public static let gdtEntries = 6
    public static let gdtLimit = UInt16(gdtEntries * 8 - 1)

    /// Linux boot protocol selectors (boot.rst, "64-bit boot protocol"); PVH reuses them.
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// PVH: hvm_start_info, then the module list, then the memory map (all inside one page).
    public static let startInfo: UInt64 = 0x6000
    public static let pvhModlist: UInt64 = 0x6040
    public static let pvhMemmap: UInt64 = 0x6080
    public static let pvhMemmapMaxEntries = 128   // 128 * 24 bytes ends at 0x6C80

    /// Linux: struct boot_params (the zero page), one page.
    public static let bootParams: UInt64 = 0x7000
    public static let bootParamsSize = 0x1000

    /// A small boot stack in the page after boot_params (the kernels set up their own soon).
    public static let bootStackTop: UInt64 = 0x8FF0

    /// Identity map of the first 4 GiB with 2 MiB pages: PML4, PDPT and four page directories.
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    public static let pageDirectories: UInt64 = 0xB000   // 0xB000..0xEFFF
    public static let identityMapSize: UInt64 = 4 << 30

    /// The kernel command line, NUL-terminated; `commandLineCapacity` includes the NUL.
    public static let commandLine: UInt64 = 0x2_0000
    public static let commandLineCapacity: UInt64 = 0x1000

    /// bzImage: the protected-mode kernel is loaded here (boot.rst: "loaded at 0x100000").
    public static let kernelLoad: UInt64 = 0x10_0000

    /// The range holding everything above, which no kernel segment or initrd may overlap.
    public static let bootAreaStart: UInt64 = 0x500
    public static let bootAreaEnd: UInt64 = 0x2_1000

    /// Guest-physical ranges a kernel image or initrd must not overlap: Keel's boot area and the
    /// EBDA/VGA/BIOS area (where the ACPI tables live).
    public static let reserved: [Range<UInt64>] = [
        bootAreaStart..<bootAreaEnd,
        PCMemoryMap.ebdaStart..<PCMemoryMap.biosAreaEnd,
    ]

    /// Initrds go above the first MiB: below it are the boot area, the EBDA and the BIOS area.
    public static let initrdFloor: UInt64 = 0x10_0000
    public static let pageSize: UInt64 = 0x1000
}
