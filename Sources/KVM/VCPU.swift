import CKeel
import Glibc

/// Why KVM_RUN returned, decoded from the shared kvm_run page.
public enum VCPUExit {
    /// `count` accesses of `size` bytes each at port; data lives in the kvm_run page.
    case ioIn(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer)
    case ioOut(port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer)
    case mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer)
    case mmioWrite(address: UInt64, data: UnsafeRawBufferPointer)
    case halt
    case shutdown            // triple fault: the PC resets
    case systemEvent(type: UInt32)
    /// Split irqchip: the in-kernel LAPIC took an EOI for a level-triggered vector that the
    /// userspace IOAPIC must see (to clear Remote IRR).
    case ioapicEOI(vector: UInt8)
    case interrupted         // a signal or immediate_exit
    case failEntry(reason: UInt64)
    case internalError(suberror: UInt32)
    case unknown(reason: UInt32)
}

/// A vCPU fd and its mmap'ed kvm_run area. Used only by the thread that runs it.
public final class VCPU: @unchecked Sendable {
    public let fd: Int32
    public let id: UInt32
    let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int
    /// The VM (and through it guest RAM) must outlive every vCPU that runs in it.
    public let vm: VirtualMachine

    init(fd: Int32, id: UInt32, mmapSize: Int, vm: VirtualMachine) throws {
        guard let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            let e = errno; close(fd)
            throw KVMError.ioctl("mmap(kvm_run)", errno: e)
        }
        self.fd = fd
        self.id = id
        self.run = p.assumingMemoryBound(to: kvm_run.self)
        self.runSize = mmapSize
        self.vm = vm
    }

    deinit {
        munmap(run, runSize)
        close(fd)
    }

    /// Set from another thread (then kick with a signal) to make KVM_RUN return at once.
    public func setImmediateExit(_ on: Bool) {
        withUnsafeMutablePointer(to: &run.pointee.immediate_exit) {
            UnsafeMutableRawPointer($0).storeBytes(of: on ? 1 : 0, as: UInt8.self)
        }
    }

    /// Enters the guest until the next exit that needs Keel.
    @inline(__always)
    public func runOnce() throws -> VCPUExit {
        if ckeel_ioctl(fd, CKEEL_KVM_RUN, 0) < 0 {
            let e = errno
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw KVMError.ioctl("KVM_RUN(vcpu \(id))", errno: e)
        }
        let raw = UnsafeMutableRawPointer(run)
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = ckeel_run_io(run)!.pointee
            // data_offset comes from the kernel; still refuse a window outside the mapping.
            let bytes = Int(io.size) * Int(io.count)
            guard io.data_offset < UInt64(runSize), bytes <= runSize - Int(io.data_offset) else {
                return .internalError(suberror: 0xffff)
            }
            let data = raw + Int(io.data_offset)
            return io.direction == UInt8(KVM_EXIT_IO_OUT)
                ? .ioOut(port: io.port, size: Int(io.size), count: Int(io.count), data: data)
                : .ioIn(port: io.port, size: Int(io.size), count: Int(io.count), data: data)
        case KVM_EXIT_MMIO:
            let m = ckeel_run_mmio(run)!
            let len = Int(min(m.pointee.len, 8))
            let data = UnsafeMutableRawPointer(m) + 8
            return m.pointee.is_write != 0
                ? .mmioWrite(address: m.pointee.phys_addr, data: UnsafeRawBufferPointer(start: data, count: len))
                : .mmioRead(address: m.pointee.phys_addr, data: UnsafeMutableRawBufferPointer(start: data, count: len))
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_INTR: return .interrupted
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: ckeel_run_system_event_type(run))
        case KVM_EXIT_IOAPIC_EOI: return .ioapicEOI(vector: ckeel_run_eoi_vector(run))
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: ckeel_run_fail_entry_reason(run))
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: ckeel_run_internal_suberror(run))
        default: return .unknown(reason: run.pointee.exit_reason)
        }
    }

    public func getRegisters() throws -> kvm_regs {
        var r = kvm_regs()
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_REGS, &r), "KVM_GET_REGS")
        return r
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var r = regs
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_REGS, &r), "KVM_SET_REGS")
    }

    public func getSpecialRegisters() throws -> kvm_sregs {
        var s = kvm_sregs()
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_SREGS, &s), "KVM_GET_SREGS")
        return s
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var s = sregs
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_SREGS, &s), "KVM_SET_SREGS")
    }

    public func setFPU(_ fpu: kvm_fpu) throws {
        var f = fpu
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_FPU, &f), "KVM_SET_FPU")
    }

    public func setCPUID(_ entries: [CPUIDEntry]) throws {
        let bytes = MemoryLayout<kvm_cpuid2>.size + entries.count * MemoryLayout<kvm_cpuid_entry2>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(entries.count)
        let e = (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
        for (i, entry) in entries.enumerated() { e[i] = entry.kvm }
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_CPUID2, raw), "KVM_SET_CPUID2")
    }

    /// Writes MSRs; KVM stops at the first it refuses, which is reported by index.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws {
        let raw = try msrBuffer(msrs)
        defer { raw.deallocate() }
        let n = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_MSRS, raw), "KVM_SET_MSRS")
        if Int(n) < msrs.count {
            throw KVMError.ioctl("KVM_SET_MSRS(0x\(String(msrs[Int(n)].index, radix: 16)))", errno: EINVAL)
        }
    }

    public func getMSRs(_ indices: [UInt32]) throws -> [UInt64] {
        let raw = try msrBuffer(indices.map { ($0, 0) })
        defer { raw.deallocate() }
        let n = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_MSRS, raw), "KVM_GET_MSRS")
        let entries = (raw + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        return (0..<Int(n)).map { entries[$0].data }
    }

    private func msrBuffer(_ msrs: [(index: UInt32, value: UInt64)]) throws -> UnsafeMutableRawPointer {
        let bytes = MemoryLayout<kvm_msrs>.size + msrs.count * MemoryLayout<kvm_msr_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_msrs.self).pointee.nmsrs = UInt32(msrs.count)
        let e = (raw + MemoryLayout<kvm_msrs>.size).assumingMemoryBound(to: kvm_msr_entry.self)
        for (i, m) in msrs.enumerated() { e[i].index = m.index; e[i].data = m.value }
        return raw
    }

    public enum MPState: UInt32 { case runnable = 0, uninitialized = 1, initReceived = 2, halted = 3, sipiReceived = 4 }

    public func setMPState(_ s: MPState) throws {
        var m = kvm_mp_state(mp_state: s.rawValue)
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_MP_STATE, &m), "KVM_SET_MP_STATE")
    }

    public func getMPState() throws -> UInt32 {
        var m = kvm_mp_state()
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_MP_STATE, &m), "KVM_GET_MP_STATE")
        return m.mp_state
    }

    /// Local APIC state (1 KiB register page), used to program LINT0/LINT1 as a PC BIOS would.
    public func getLAPIC() throws -> kvm_lapic_state {
        var s = kvm_lapic_state()
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_GET_LAPIC, &s), "KVM_GET_LAPIC")
        return s
    }

    public func setLAPIC(_ state: kvm_lapic_state) throws {
        var s = state
        _ = try check(ckeel_ioctl_ptr(fd, CKEEL_KVM_SET_LAPIC, &s), "KVM_SET_LAPIC")
    }

    public func tscKHz() -> UInt32? {
        let r = ckeel_ioctl(fd, CKEEL_KVM_GET_TSC_KHZ, 0)
        return r > 0 ? UInt32(r) : nil
    }
}
