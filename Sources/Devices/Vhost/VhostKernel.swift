import CKeel
import Glibc
import Memory

/// Why a vhost-kernel request failed: the call and the errno text.
public struct VhostKernelError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public let errno: Int32
    public init(_ message: String, errno: Int32 = 0) { description = message; self.errno = errno }
}

/// An open /dev/vhost-net or /dev/vhost-vsock: the typed ioctls of <linux/vhost.h>. Every
/// pointer handed to the kernel lives only for the call; ring addresses are Keel's own mappings
/// (translated and bounds-checked by `VhostVringAddress.translate`), never guest values.
public final class VhostKernelFD: VhostRingBackend {
    public let fd: Int32
    public let path: String
    /// ioctl(2) on `fd`; a test stands a recording fake kernel in its place.
    typealias IoctlFunction = (_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) -> Int32
    let ioctl: IoctlFunction

    /// Opens `path` (O_RDWR|O_CLOEXEC). Errors say which: missing node, or the errno text.
    public init(path: String) throws(VhostKernelError) {
        let f = ckeel_open(path, O_RDWR | O_CLOEXEC, 0)
        guard f >= 0 else {
            let e = errno
            if e == ENOENT { throw VhostKernelError("\(path) is not available on this host", errno: e) }
            throw VhostKernelError("cannot open \(path): \(String(cString: strerror(e)))", errno: e)
        }
        fd = f
        self.path = path
        ioctl = { ckeel_ioctl_ptr($0, $1, $2) }
    }

    /// Adopts an already-open vhost fd (`vhostfd=N` from a management tool); closed on deinit.
    public convenience init(adopting fd: Int32, path: String) {
        self.init(adopting: fd, path: path) { ckeel_ioctl_ptr($0, $1, $2) }
    }

    init(adopting fd: Int32, path: String, ioctl: @escaping IoctlFunction) {
        self.fd = fd
        self.path = path
        self.ioctl = ioctl
        _ = ckeel_fcntl_int(fd, F_SETFD, FD_CLOEXEC)
    }

    deinit { close(fd) }

    private func check(_ r: Int32, _ call: String) throws(VhostKernelError) {
        guard r >= 0 else {
            let e = errno
            throw VhostKernelError("\(path): \(call): \(String(cString: strerror(e)))", errno: e)
        }
    }

    private func call<T>(_ request: UInt, _ name: String, _ value: inout T) throws(VhostKernelError) {
        let r = withUnsafeMutablePointer(to: &value) { ioctl(fd, request, UnsafeMutableRawPointer($0)) }
        try check(r, name)
    }

    // MARK: device-wide (vhost.c: vhost_dev_ioctl)

    public func features() throws(VhostKernelError) -> UInt64 {
        var f: UInt64 = 0
        try call(CKEEL_VHOST_GET_FEATURES, "VHOST_GET_FEATURES", &f)
        return f
    }

    public func setFeatures(_ features: UInt64) throws(VhostKernelError) {
        var f = features
        try call(CKEEL_VHOST_SET_FEATURES, "VHOST_SET_FEATURES 0x\(String(features, radix: 16))", &f)
    }

    public func backendFeatures() throws(VhostKernelError) -> UInt64 {
        var f: UInt64 = 0
        try call(CKEEL_VHOST_GET_BACKEND_FEATURES, "VHOST_GET_BACKEND_FEATURES", &f)
        return f
    }

    public func setBackendFeatures(_ features: UInt64) throws(VhostKernelError) {
        var f = features
        try call(CKEEL_VHOST_SET_BACKEND_FEATURES, "VHOST_SET_BACKEND_FEATURES", &f)
    }

    /// Binds the device to this process's memory and starts its worker thread.
    public func setOwner() throws(VhostKernelError) {
        try check(ioctl(fd, CKEEL_VHOST_SET_OWNER, nil), "VHOST_SET_OWNER")
    }

    public func resetOwner() throws(VhostKernelError) {
        try check(ioctl(fd, CKEEL_VHOST_RESET_OWNER, nil), "VHOST_RESET_OWNER")
    }

    /// `struct vhost_memory` with its regions, laid out by the C header's own types.
    public static func memoryTableBytes(_ regions: [VhostMemoryRegion]) -> [UInt8] {
        let header = Int(CKEEL_VHOST_MEMORY_HEADER_SIZE)
        let stride = MemoryLayout<vhost_memory_region>.stride
        var bytes = [UInt8](repeating: 0, count: header + stride * regions.count)
        bytes.withUnsafeMutableBytes { b in
            b.storeBytes(of: UInt32(regions.count), toByteOffset: 0, as: UInt32.self)
            for (i, r) in regions.enumerated() {
                let c = vhost_memory_region(guest_phys_addr: r.guestAddress, memory_size: r.size, userspace_addr: r.userAddress, flags_padding: 0)
                b.storeBytes(of: c, toByteOffset: header + stride * i, as: vhost_memory_region.self)
            }
        }
        return bytes
    }

    public func setMemoryTable(_ regions: [VhostMemoryRegion]) throws(VhostKernelError) {
        var bytes = Self.memoryTableBytes(regions)
        let r = bytes.withUnsafeMutableBytes { ioctl(fd, CKEEL_VHOST_SET_MEM_TABLE, $0.baseAddress) }
        try check(r, "VHOST_SET_MEM_TABLE (\(regions.count) regions)")
    }

    // MARK: per ring (vhost.c: vhost_vring_ioctl)

    public func setVringNum(_ index: UInt32, _ num: UInt32) throws(VhostKernelError) {
        var s = vhost_vring_state(index: index, num: num)
        try call(CKEEL_VHOST_SET_VRING_NUM, "VHOST_SET_VRING_NUM \(index) \(num)", &s)
    }

    public func setVringBase(_ index: UInt32, _ base: UInt32) throws(VhostKernelError) {
        var s = vhost_vring_state(index: index, num: base)
        try call(CKEEL_VHOST_SET_VRING_BASE, "VHOST_SET_VRING_BASE \(index) \(base)", &s)
    }

    public func setVringAddress(_ a: VhostVringAddress) throws(VhostKernelError) {
        var c = vhost_vring_addr(index: a.index, flags: 0, desc_user_addr: a.descriptor, used_user_addr: a.used,
                                 avail_user_addr: a.available, log_guest_addr: 0)
        try call(CKEEL_VHOST_SET_VRING_ADDR, "VHOST_SET_VRING_ADDR \(a.index)", &c)
    }

    /// Stops the ring and returns the next available index the back-end would have read.
    public func vringBase(_ index: UInt32) throws(VhostKernelError) -> UInt16 {
        var s = vhost_vring_state(index: index, num: 0)
        try call(CKEEL_VHOST_GET_VRING_BASE, "VHOST_GET_VRING_BASE \(index)", &s)
        guard s.num <= UInt32(UInt16.max) else { throw VhostKernelError("\(path): VHOST_GET_VRING_BASE \(index) answered \(s.num)") }
        return UInt16(s.num)
    }

    private func setFile(_ request: UInt, _ name: String, _ index: UInt32, _ fd: Int32) throws(VhostKernelError) {
        var f = vhost_vring_file(index: index, fd: fd)
        try call(request, "\(name) \(index)", &f)
    }

    public func setVringKick(_ index: UInt32, fd: Int32) throws(VhostKernelError) {
        try setFile(CKEEL_VHOST_SET_VRING_KICK, "VHOST_SET_VRING_KICK", index, fd)
    }

    public func setVringCall(_ index: UInt32, fd: Int32) throws(VhostKernelError) {
        try setFile(CKEEL_VHOST_SET_VRING_CALL, "VHOST_SET_VRING_CALL", index, fd)
    }

    public func setVringError(_ index: UInt32, fd: Int32) throws(VhostKernelError) {
        try setFile(CKEEL_VHOST_SET_VRING_ERR, "VHOST_SET_VRING_ERR", index, fd)
    }

    /// The kernel's rings run from the kick on; there is no separate enable.
    public func setVringEnabled(_ index: UInt32, _ enabled: Bool) throws(VhostKernelError) {}

    // MARK: device-specific

    /// vhost-net: the tap (or packet socket) ring `index` moves frames to and from; -1 detaches.
    public func setNetBackend(_ index: UInt32, fd: Int32) throws(VhostKernelError) {
        try setFile(CKEEL_VHOST_NET_SET_BACKEND, "VHOST_NET_SET_BACKEND", index, fd)
    }

    /// vhost-vsock: the guest's context ID (3 ... 2^32-2; taken by another VM: EADDRINUSE).
    public func setVsockGuestCID(_ cid: UInt64) throws(VhostKernelError) {
        var c = cid
        try call(CKEEL_VHOST_VSOCK_SET_GUEST_CID, "VHOST_VSOCK_SET_GUEST_CID \(cid)", &c)
    }

    public func setVsockRunning(_ running: Bool) throws(VhostKernelError) {
        var v: Int32 = running ? 1 : 0
        try call(CKEEL_VHOST_VSOCK_SET_RUNNING, "VHOST_VSOCK_SET_RUNNING \(v)", &v)
    }
}

public enum VhostFeature {
    /// VHOST_NET_F_VIRTIO_NET_HDR: vhost-net adds/strips the header (a tap without IFF_VNET_HDR).
    public static let netVirtioNetHeader = UInt64(1) << UInt64(CKEEL_VHOST_NET_F_VIRTIO_NET_HDR)
    /// VHOST_F_LOG_ALL: dirty logging for migration; Keel never asks for it.
    public static let logAll = UInt64(1) << UInt64(CKEEL_VHOST_F_LOG_ALL)
    /// VIRTIO_F_ACCESS_PLATFORM (IOTLB): not offered, the rings are plain guest-physical.
    public static let accessPlatform: UInt64 = 1 << 33
}
