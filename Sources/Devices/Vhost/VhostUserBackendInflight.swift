import CKeel
import Glibc

/// The shared inflight region (GET_INFLIGHT_FD / SET_INFLIGHT_FD): the back-end records which
/// heads it took and has not finished, the front-end keeps the fd across back-end restarts, and
/// the next back-end takes those heads again (vhost-user.rst "Inflight I/O tracking").
struct BackendInflightRegion {
    let base: UnsafeMutableRawPointer
    let length: Int
    let queueCount: UInt16
    let queueSize: UInt16

    func unmap() { munmap(base, length) }

    func log(queue i: Int) -> VirtqueueInflightLog? {
        guard i < Int(queueCount) else { return nil }
        return VirtqueueInflightLog(base: base + i * VirtqueueInflightLog.regionSize(queueSize: queueSize), queueSize: queueSize)
    }
}

extension VhostUserBackendServer {
    private func checkedGeometry(_ p: VhostUserInflight) throws(VhostUserError) -> Int {
        guard p.queueCount >= 1, Int(p.queueCount) <= queues.count else {
            throw VhostUserError("inflight region for \(p.queueCount) queues (1 to \(queues.count))")
        }
        guard p.queueSize.nonzeroBitCount == 1, queues.allSatisfy({ p.queueSize <= $0.maxSize }) else {
            throw VhostUserError("inflight region for queues of \(p.queueSize) entries")
        }
        return Int(p.queueCount) * VirtqueueInflightLog.regionSize(queueSize: p.queueSize)
    }

    /// GET_INFLIGHT_FD: a new zeroed region in a memfd, mapped here and handed to the front-end.
    func getInflightFD(_ m: VhostUserMessage) throws(VhostUserError) {
        let p = try VhostUserInflight(m.payload)
        let size = try checkedGeometry(p)
        let fd = ckeel_memfd_create("keel-vhost-inflight", UInt32(MFD_CLOEXEC))
        guard fd >= 0 else { throw VhostUserError("memfd_create: \(errnoText())") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw VhostUserError("inflight region: \(errnoText())") }
        try useInflight(fd: fd, offset: 0, length: size, p)
        let answer = VhostUserInflight(mmapSize: UInt64(size), mmapOffset: 0, queueCount: p.queueCount, queueSize: p.queueSize)
        try channel?.send(VhostUserMessage(request: m.request, flags: VhostUser.version | VhostUser.flagReply, payload: answer.bytes), fds: [fd])
    }

    /// SET_INFLIGHT_FD: the region a previous back-end (or this one) filled; checked and mapped.
    func setInflightFD(_ m: VhostUserMessage) throws(VhostUserError) {
        guard m.fds.count == 1 else { throw VhostUserError("SET_INFLIGHT_FD came with \(m.fds.count) fds") }
        let p = try VhostUserInflight(m.payload)
        let need = try checkedGeometry(p)
        guard p.mmapSize >= UInt64(need), p.mmapSize <= UInt64(need) + 4096, p.mmapOffset % 4096 == 0,
              p.mmapOffset <= UInt64(Int32.max) else {
            throw VhostUserError("SET_INFLIGHT_FD: size \(p.mmapSize) at offset \(p.mmapOffset) for \(p.queueCount)x\(p.queueSize)")
        }
        let fd = m.fds[0].take()
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(clamping: st.st_size) >= p.mmapOffset + UInt64(need) else {
            throw VhostUserError("SET_INFLIGHT_FD: the fd holds less than the region")
        }
        try useInflight(fd: fd, offset: Int(p.mmapOffset), length: need, p)
    }

    private func useInflight(fd: Int32, offset: Int, length: Int, _ p: VhostUserInflight) throws(VhostUserError) {
        guard !rings.contains(where: { $0.started }) else { throw VhostUserError("inflight region changed while queues run") }
        let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
        guard let base, base != MAP_FAILED else { throw VhostUserError("cannot map the inflight region: \(errnoText())") }
        inflight?.unmap()
        inflight = BackendInflightRegion(base: base, length: length, queueCount: p.queueCount, queueSize: p.queueSize)
    }
}
