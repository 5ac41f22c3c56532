import CKeel
import Glibc

/// The /dev/kvm system fd: version and capability checks, supported CPUID and MSRs, VM creation.
public final class KVMSystem: @unchecked Sendable {
    public let fd: Int32
    public let vcpuMmapSize: Int

    /// Every capability Keel relies on; opening fails naming the first one missing.
    public static let requiredCapabilities: [(String, UInt)] = [
        ("KVM_CAP_USER_MEMORY", UInt(KVM_CAP_USER_MEMORY)),
        ("KVM_CAP_IRQCHIP", UInt(KVM_CAP_IRQCHIP)),
        ("KVM_CAP_PIT2", UInt(KVM_CAP_PIT2)),
        ("KVM_CAP_IRQFD", UInt(KVM_CAP_IRQFD)),
        ("KVM_CAP_IOEVENTFD", UInt(KVM_CAP_IOEVENTFD)),
        ("KVM_CAP_SIGNAL_MSI", UInt(KVM_CAP_SIGNAL_MSI)),
        ("KVM_CAP_IMMEDIATE_EXIT", UInt(KVM_CAP_IMMEDIATE_EXIT)),
        ("KVM_CAP_EXT_CPUID", UInt(KVM_CAP_EXT_CPUID)),
        ("KVM_CAP_SET_TSS_ADDR", UInt(KVM_CAP_SET_TSS_ADDR)),
        ("KVM_CAP_SET_IDENTITY_MAP_ADDR", UInt(KVM_CAP_SET_IDENTITY_MAP_ADDR)),
        ("KVM_CAP_MP_STATE", UInt(KVM_CAP_MP_STATE)),
        ("KVM_CAP_IRQ_ROUTING", UInt(KVM_CAP_IRQ_ROUTING)),
    ]

    public init(path: String = "/dev/kvm") throws {
        let f = ckeel_open(path, O_RDWR | O_CLOEXEC, 0)
        guard f >= 0 else { throw KVMError.unavailable(path: path, errno: errno) }
        fd = f
        let v = ckeel_ioctl(fd, CKEEL_KVM_GET_API_VERSION, 0)
        guard v == 12 else { close(f); throw KVMError.apiVersion(v) }
        for (name, cap) in Self.requiredCapabilities where ckeel_ioctl(fd, CKEEL_KVM_CHECK_EXTENSION, cap) <= 0 {
            close(f)
            throw KVMError.missingCapability(name)
        }
        let size = ckeel_ioctl(fd, CKEEL_KVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else { close(f); throw KVMError.ioctl("KVM_GET_VCPU_MMAP_SIZE", errno: errno) }
        vcpuMmapSize = Int(size)
    }

    deinit { close(fd) }

    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, ckeel_ioctl(fd, CKEEL_KVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// The CPUID leaves this host's KVM can present to a guest.
    public func supportedCPUID() throws -> [CPUIDEntry] {
        var n = 128
        while true {
            let bytes = MemoryLayout<kvm_cpuid2>.size + n * MemoryLayout<kvm_cpuid_entry2>.stride
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
            defer { raw.deallocate() }
            raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            let c = raw.assumingMemoryBound(to: kvm_cpuid2.self)
            c.pointee.nent = UInt32(n)
            if ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_SUPPORTED_CPUID, raw) < 0 {
                if errno == E2BIG && n < 4096 { n *= 2; continue }
                throw KVMError.ioctl("KVM_GET_SUPPORTED_CPUID", errno: errno)
            }
            let entries = (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
            return (0..<Int(c.pointee.nent)).map { CPUIDEntry(entries[$0]) }
        }
    }

    /// MSR indices KVM saves and restores for a vCPU.
    public func msrIndexList() throws -> [UInt32] {
        let n = 1024
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 4 + 4 * n, alignment: 4)
        defer { raw.deallocate() }
        raw.storeBytes(of: UInt32(n), as: UInt32.self)
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_MSR_INDEX_LIST, raw), "KVM_GET_MSR_INDEX_LIST")
        let count = Int(raw.load(as: UInt32.self))
        return (0..<min(count, n)).map { raw.load(fromByteOffset: 4 + 4 * $0, as: UInt32.self) }
    }

    public func createVM() throws -> VirtualMachine {
        let vmfd = try check(ckeel_ioctl(fd, CKEEL_KVM_CREATE_VM, 0), "KVM_CREATE_VM")
        return VirtualMachine(fd: vmfd, system: self)
    }
}

/// One CPUID leaf as KVM describes it (struct kvm_cpuid_entry2).
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    init(_ e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var kvm: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function; e.index = index; e.flags = flags
        e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }
}
