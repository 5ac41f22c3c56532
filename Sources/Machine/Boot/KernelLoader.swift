import Memory

/// The kernel formats Keel boots directly, without firmware.
public enum KernelFormat: Sendable, Equatable {
    /// Linux bzImage, entered through its 64-bit entry point (Linux x86 boot protocol >= 2.12).
    case bzImage
    /// An ELF kernel with a Xen PVH entry note, entered in 32-bit protected mode.
    case pvhELF
}

/// Loads a kernel (and initrd and command line) into guest RAM and returns the boot vCPU's
/// registers, as Firecracker and QEMU's microvm do.
public struct KernelLoader {
    /// The format `image` can be booted as; nil if it is neither. ELF files count as PVH only
    /// when they carry the PVH entry note.
    public static func detect(_ image: [UInt8]) -> KernelFormat? {
        if PVH.isELF(image) {
            return (try? PVH.parse(image, subject: "")) != nil ? .pvhELF : nil
        }
        return BzImage.looksLike(image) ? .bzImage : nil
    }

    /// Places everything for a direct boot (layout in `BootLayout`) and returns the entry state.
    /// `kernelName`/`initrdName` name the files in error messages. Throws BootError.
    public static func load(kernel: [UInt8], kernelName: String, initrd: [UInt8]?, initrdName: String?,
                            commandLine: String, memory: GuestMemory, map: PCMemoryMap,
                            rsdpAddress: UInt64?) throws -> BootCPUState {
        let subject = "kernel \(kernelName)"
        let initrdSubject = "initrd \(initrdName ?? "image")"
        guard !kernel.isEmpty else { throw BootError(.empty, subject, "file is empty") }
        // An ELF goes the PVH way even without the note, so its error says what is missing.
        if PVH.isELF(kernel) {
            return try PVH.load(kernel, subject: subject, initrd: initrd, initrdSubject: initrdSubject,
                                commandLine: commandLine, memory: memory, map: map, rsdp: rsdpAddress)
        }
        if BzImage.looksLike(kernel) {
            return try BzImage.load(kernel, subject: subject, initrd: initrd, initrdSubject: initrdSubject,
                                    commandLine: commandLine, memory: memory, map: map, rsdp: rsdpAddress)
        }
        if kernel.count < 0x206 {
            throw BootError(.notAKernel, subject,
                            "not a Linux bzImage or PVH ELF kernel (only \(kernel.count) bytes, too short for a boot header)")
        }
        throw BootError(.notAKernel, subject, "not a Linux bzImage or PVH ELF kernel")
    }
}
