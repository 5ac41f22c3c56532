import Glibc
import Memory

/// The back-end's answers to each front-end request (vhost-user.rst "Front-end message types").
extension VhostUserBackendServer {
    func handle(_ m: VhostUserMessage) throws(VhostUserError) {
        guard !m.isReply else { throw VhostUserError("front-end sent a reply (request \(m.request)) unasked") }
        guard let r = VhostUser.Request(rawValue: m.request) else { throw VhostUserError("unknown request \(m.request)") }
        let fdRequests: Set<VhostUser.Request> = [.setMemTable, .setVringKick, .setVringCall, .setVringErr, .setLogFD, .setInflightFD]
        if !fdRequests.contains(r) && !m.fds.isEmpty { throw VhostUserError("\(r) came with \(m.fds.count) fds") }
        var replied = false
        switch r {
        case .getFeatures:
            try expectEmpty(m, r)
            try reply(m, .le64Bytes(offeredFeatures)); replied = true
        case .setFeatures:
            let f = try m.u64()
            guard f & ~offeredFeatures == 0 else { throw VhostUserError("SET_FEATURES 0x\(String(f, radix: 16)) has bits never offered") }
            driverFeatures = f
        case .setOwner, .resetOwner:
            try expectEmpty(m, r)
        case .getProtocolFeatures:
            try expectEmpty(m, r)
            try reply(m, .le64Bytes(offeredProtocolFeatures)); replied = true
        case .setProtocolFeatures:
            let f = try m.u64()
            guard f & ~offeredProtocolFeatures == 0 else { throw VhostUserError("SET_PROTOCOL_FEATURES 0x\(String(f, radix: 16)) has bits never offered") }
            protocolFeatures = f
        case .getQueueNum:
            try expectEmpty(m, r)
            try reply(m, .le64Bytes(UInt64(queues.count))); replied = true
        case .setMemTable:
            try setMemTable(m)
        case .setVringNum:
            let (i, num) = try ringState(m, r)
            guard num <= UInt32(UInt16.max), queues[i].isAcceptableSize(UInt16(num)) else {
                throw VhostUserError("SET_VRING_NUM \(num) for queue \(i): not a power of two up to \(queues[i].maxSize)")
            }
            guard !rings[i].started else { throw VhostUserError("SET_VRING_NUM on running queue \(i)") }
            queues[i].size = UInt16(num)
        case .setVringAddr:
            let a = try VhostUserVringAddress(m.payload)
            guard a.index < UInt32(queues.count) else { throw VhostUserError("SET_VRING_ADDR for queue \(a.index) of \(queues.count)") }
            guard !rings[Int(a.index)].started else { throw VhostUserError("SET_VRING_ADDR on running queue \(a.index)") }
            rings[Int(a.index)].address = a
        case .setVringBase:
            let (i, num) = try ringState(m, r)
            guard num <= UInt32(UInt16.max) else { throw VhostUserError("SET_VRING_BASE \(num) for queue \(i)") }
            guard !rings[i].started else { throw VhostUserError("SET_VRING_BASE on running queue \(i)") }
            rings[i].base = UInt16(num)
        case .getVringBase:
            let (i, _) = try ringState(m, r)
            if device.inflightRequests > 0, let c = channel {
                // Answer once the requests in flight have put their chains on the used ring.
                deferredMessage = m
                loop.remove(fd: c.fd)
                return
            }
            let base = queues[i].nextAvail
            stopRing(i)
            try reply(m, .vringState(UInt32(i), UInt32(base))); replied = true
        case .setVringKick, .setVringCall, .setVringErr:
            let v = try m.u64()
            guard v & ~(VhostUser.vringIndexMask | VhostUser.vringNoFD) == 0 else { throw VhostUserError("\(r) payload 0x\(String(v, radix: 16))") }
            let i = Int(v & VhostUser.vringIndexMask)
            guard i < queues.count else { throw VhostUserError("\(r) for queue \(i) of \(queues.count)") }
            let noFD = v & VhostUser.vringNoFD != 0
            guard m.fds.count == (noFD ? 0 : 1) else { throw VhostUserError("\(r) for queue \(i) came with \(m.fds.count) fds") }
            let fd = m.fds.first?.take() ?? -1
            switch r {
            case .setVringKick:
                if rings[i].started { stopRing(i) }
                if rings[i].kick >= 0 { close(rings[i].kick) }
                rings[i].kick = fd
                // Without polling support a ring needs its kick fd (§ "Starting and stopping rings").
                guard fd >= 0 else { throw VhostUserError("SET_VRING_KICK for queue \(i) without an fd (polling is not supported)") }
                try startRing(i)
            case .setVringCall:
                if rings[i].call >= 0 { close(rings[i].call) }
                rings[i].call = fd
                // A ring may have completed chains while it had no call fd: one spare interrupt.
                if rings[i].started { rings[i].signalCall() }
            default:
                // Kept across GET_VRING_BASE (a front-end may send it once, at device start).
                if rings[i].error >= 0 { close(rings[i].error) }
                rings[i].error = fd
            }
        case .setVringEnable:
            let (i, num) = try ringState(m, r)
            guard num <= 1 else { throw VhostUserError("SET_VRING_ENABLE \(num) for queue \(i)") }
            guard driverFeatures & VhostUser.featureProtocolFeatures != 0 else {
                throw VhostUserError("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
            }
            rings[i].enabled = num == 1
            refreshReady(i)
        case .getConfig:
            guard protocolFeatures & VhostUser.protocolConfig != 0 else { throw VhostUserError("GET_CONFIG without the CONFIG protocol feature") }
            var cfg = try VhostUserConfig(m.payload)
            cfg.bytes.withUnsafeMutableBytes { device.readConfig(offset: Int(cfg.offset), data: $0) }
            try reply(m, cfg.payload); replied = true
        case .setConfig:
            guard protocolFeatures & VhostUser.protocolConfig != 0 else { throw VhostUserError("SET_CONFIG without the CONFIG protocol feature") }
            let cfg = try VhostUserConfig(m.payload)
            cfg.bytes.withUnsafeBytes { device.writeConfig(offset: Int(cfg.offset), data: $0) }
        case .getInflightFD, .setInflightFD:
            guard protocolFeatures & VhostUser.protocolInflightSHMFD != 0 else { throw VhostUserError("\(r) without the INFLIGHT_SHMFD protocol feature") }
            if r == .getInflightFD { try getInflightFD(m); replied = true } else { try setInflightFD(m) }
        case .setLogBase, .setLogFD, .resetDevice, .getMaxMemSlots:
            throw VhostUserError("\(r) needs a protocol feature this back-end did not offer")
        }
        if !replied && m.needsReply && protocolFeatures & VhostUser.protocolReplyAck != 0 {
            try reply(m, .le64Bytes(0))
        }
    }

    private func expectEmpty(_ m: VhostUserMessage, _ r: VhostUser.Request) throws(VhostUserError) {
        guard m.payload.isEmpty else { throw VhostUserError("\(r) with a \(m.payload.count)-byte payload") }
    }

    private func ringState(_ m: VhostUserMessage, _ r: VhostUser.Request) throws(VhostUserError) -> (Int, UInt32) {
        let (index, num) = try m.vringState()
        guard index < UInt32(queues.count) else { throw VhostUserError("\(r) for queue \(index) of \(queues.count)") }
        return (Int(index), num)
    }

    private func setMemTable(_ m: VhostUserMessage) throws(VhostUserError) {
        let table = try VhostUserMemoryRegion.table(m.payload, fdCount: m.fds.count)
        var shared: [(guestAddress: UInt64, size: UInt64, fd: Int32, fileOffset: UInt64)] = []
        for (r, f) in zip(table, m.fds) {
            let (_, o) = r.userAddress.addingReportingOverflow(r.size)
            guard !o else { throw VhostUserError("SET_MEM_TABLE: region at user address 0x\(String(r.userAddress, radix: 16)) wraps") }
            shared.append((r.guestAddress, r.size, f.take(), r.mmapOffset))
        }
        let view: GuestMemory
        do { view = try GuestMemory(mapping: shared) } catch { throw VhostUserError("SET_MEM_TABLE: \(error)") }
        retire(memory)
        memory = view
        memoryTable = table
    }

    /// A front-end virtual address (ring addresses are given that way) as a guest-physical one.
    func guestAddress(ofUser a: UInt64, length: UInt64) -> UInt64? {
        for r in memoryTable where a >= r.userAddress {
            let off = a - r.userAddress
            if off <= r.size, length <= r.size - off { return r.guestAddress + off }
        }
        return nil
    }

    /// A ring starts when its kick fd arrives (vhost-user.rst: "Starting and stopping rings").
    func startRing(_ i: Int) throws(VhostUserError) {
        guard let a = rings[i].address else { throw VhostUserError("queue \(i) kicked before SET_VRING_ADDR") }
        let q = queues[i]
        guard let desc = guestAddress(ofUser: a.descriptor, length: 16 * UInt64(q.size)),
              let avail = guestAddress(ofUser: a.available, length: 6 + 2 * UInt64(q.size)),
              let used = guestAddress(ofUser: a.used, length: 6 + 8 * UInt64(q.size)) else {
            throw VhostUserError("queue \(i): ring addresses are outside the memory table")
        }
        q.descriptorTable = desc; q.driverArea = avail; q.deviceArea = used
        q.eventIndex = driverFeatures & Virtio.featureEventIndex != 0
        q.indirectDescriptors = driverFeatures & Virtio.featureIndirectDescriptors != 0
        do { try q.validate(memory) } catch { throw VhostUserError("queue \(i): \(error)") }
        let usedIndex: UInt16
        do { usedIndex = try q.usedIndex(memory) } catch { throw VhostUserError("queue \(i): \(error)") }
        if let log = inflight?.log(queue: i), log.queueSize == q.size {
            // The record, not the front-end's base, says where the last back-end stopped.
            q.restore(nextAvail: log.recover(ringUsedIndex: usedIndex), nextUsed: usedIndex)
            q.inflightLog = log
            if !log.resubmit.isEmpty { self.log("queue \(i): taking again \(log.resubmit.count) requests left in flight") }
        } else {
            q.restore(nextAvail: rings[i].base, nextUsed: usedIndex)
            q.inflightLog = nil
        }
        let kick = rings[i].kick
        do {
            try loop.addReadable(fd: kick) { [unowned self] _ in
                var v: UInt64 = 0
                _ = read(kick, &v, 8)
                if self.queues[i].isReady { self.device.queueNotified(i) }
            }
        } catch { throw VhostUserError("queue \(i): \(error)") }
        rings[i].started = true
        // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as it starts.
        if driverFeatures & VhostUser.featureProtocolFeatures == 0 { rings[i].enabled = true }
        if !activated {
            activated = true
            broken = false
            device.activate(self)
        }
        refreshReady(i)
    }

    func refreshReady(_ i: Int) {
        let ready = rings[i].started && rings[i].enabled
        queues[i].isReady = ready
        device.queueReadinessChanged(i)
        // Chains made while nobody ran the ring (a reconnect) are taken without waiting for a kick.
        if ready && isProcessing { device.queueNotified(i) }
    }

    func stopRing(_ i: Int) {
        if rings[i].started, rings[i].kick >= 0 { loop.remove(fd: rings[i].kick) }
        rings[i].started = false
        rings[i].base = queues[i].nextAvail
        queues[i].isReady = false
        device.queueReadinessChanged(i)
        if rings[i].kick >= 0 { close(rings[i].kick); rings[i].kick = -1 }
        if rings[i].call >= 0 { close(rings[i].call); rings[i].call = -1 }
    }
}
