import Memory
import Net

/// One receive/transmit pair of a virtio-net device and the backend queue behind it (§5.1.6).
/// The backend calls it as its `NetReceiver`.
final class VirtioNetQueuePair: NetReceiver {
    /// Chains taken from the transmit queue per turn before yielding to the loop (QEMU's tx_burst).
    static let transmitBurst = 256

    let index: Int
    let backend: NetBackend
    weak var device: VirtioNet?
    var rxQueue: Int { 2 * index }
    var txQueue: Int { 2 * index + 1 }

    /// Receive chains popped from the driver and not yet used, and their writable bytes.
    var rxHeld: [DescriptorChain] = []
    var rxHeldBytes: UInt64 = 0
    /// Pairs whose backends were refused a frame for want of buffers here; enabled again on a kick.
    var rxWaiting: [VirtioNetQueuePair] = []
    /// A transmit chain the backend could not take yet (`.wouldBlock`): sent first when it can.
    var txHeld: DescriptorChain?
    var txScheduled = false
    var txSegments: [NetSegment] = []
    /// The receive path's header and used-ring entries, kept between frames.
    var rxHeader = [UInt8](repeating: 0, count: VirtioNetHeader.length)
    var rxUsed: [(head: UInt16, length: UInt32)] = []
    /// Frames dropped on receive (filtered out, too large, offloads the driver did not take).
    var rxDropped = 0
    var txDropped = 0

    init(index: Int, backend: NetBackend) {
        self.index = index
        self.backend = backend
    }

    func reset() {
        rxHeld.removeAll()
        rxHeldBytes = 0
        txHeld = nil
        txScheduled = false
    }

    // MARK: NetReceiver

    func receive(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard let d = device else { return false }
        return d.receivePair(forBackend: index).deliver(frame, from: self)
    }

    func backendWritable() { transmit() }

    func linkChanged(up: Bool) { device?.backendLinkChanged() }

    // MARK: receive

    /// The driver posted receive buffers (a kick, or DRIVER_OK): backends refused before may
    /// offer their frames again.
    func receiveBuffersPosted() {
        let waiting = rxWaiting
        rxWaiting.removeAll()
        for p in waiting { p.backend.setReceiveEnabled(true) }
    }

    private func refuse(_ source: VirtioNetQueuePair) -> Bool {
        if !rxWaiting.contains(where: { $0 === source }) { rxWaiting.append(source) }
        source.backend.setReceiveEnabled(false)
        return false
    }

    /// Puts one frame from `source`'s backend into this pair's receive queue. False: no buffers
    /// (the backend keeps it until `setReceiveEnabled(true)`); true: taken or dropped for good.
    func deliver(_ frame: UnsafeRawBufferPointer, from source: VirtioNetQueuePair) -> Bool {
        guard let d = device, let t = d.transport, t.acceptsRequests, rxQueue < t.queues.count, t.queues[rxQueue].isReady else {
            return refuse(source)
        }
        let hasHeader = source.backend.vnetHeaderLength == VirtioNetHeader.length
        guard !hasHeader || frame.count >= VirtioNetHeader.length else { rxDropped += 1; return true }
        let payload = hasHeader ? UnsafeRawBufferPointer(rebasing: frame[VirtioNetHeader.length...]) : frame
        guard payload.count <= VirtioNetHeader.maxFrameLength, d.filter.accepts(payload, mac: d.mac) else {
            rxDropped += 1
            return true
        }
        // Reused per frame (no allocation on the receive path).
        for i in 0..<VirtioNetHeader.length { rxHeader[i] = hasHeader && i < 10 ? frame[i] : 0 }
        if hasHeader {
            guard sanitize(&rxHeader, d) else { rxDropped += 1; return true }
        }
        let total = UInt64(VirtioNetHeader.length + payload.count)
        let mergeable = d.negotiated(VirtioNetFeature.mergeableRxBuffers)
        let q = t.queues[rxQueue]
        do throws(VirtqueueError) {
            guard try takeBuffers(t, q, needed: mergeable ? total : 1) else { return refuse(source) }
        } catch {
            t.deviceNeedsReset(error)
            return refuse(source)
        }
        // How many chains the frame spans: one without mergeable buffers, which must hold it all.
        var count = 0, room: UInt64 = 0
        while room < total && count < rxHeld.count && (mergeable || count == 0) {
            room += rxHeld[count].writableLength
            count += 1
        }
        guard room >= total else { rxDropped += 1; return true }
        rxHeader[VirtioNetHeader.numBuffersOffset] = UInt8(truncatingIfNeeded: count)
        rxHeader[VirtioNetHeader.numBuffersOffset + 1] = UInt8(truncatingIfNeeded: count >> 8)
        rxUsed.removeAll(keepingCapacity: true)
        var position: UInt64 = 0
        let memory = t.memory
        rxHeader.withUnsafeBytes { h in
            for chain in rxHeld[0..<count] {
                let n = copy(h, payload, from: position, into: chain, memory: memory)
                position += n
                rxUsed.append((chain.head, UInt32(truncatingIfNeeded: n)))
            }
        }
        for chain in rxHeld[0..<count] { rxHeldBytes -= chain.writableLength }
        rxHeld.removeFirst(count)
        t.complete(queue: rxQueue, used: rxUsed)
        return true
    }

    /// Pops receive chains until `needed` bytes are held; false when the driver has posted too
    /// few (notifications are on by then, so its next kick re-enables the backend). Chains too
    /// small for the header go straight back empty.
    private func takeBuffers(_ t: VirtioTransport, _ q: SplitVirtqueue, needed: UInt64) throws(VirtqueueError) -> Bool {
        while rxHeldBytes < needed {
            // A full ring's worth held and still short: the frame cannot fit; the caller drops it.
            guard rxHeld.count < Int(q.size) else { return true }
            if let chain = try q.pop(t.memory) {
                if chain.writableLength < UInt64(VirtioNetHeader.length) {
                    t.complete(queue: rxQueue, head: chain.head, length: 0)
                    continue
                }
                rxHeld.append(chain)
                rxHeldBytes += chain.writableLength
                continue
            }
            if try q.setNotification(t.memory, enabled: true) { continue }
            return false
        }
        return true
    }

    /// Keeps what the backend's vnet header says within what the driver negotiated: DATA_VALID
    /// only with GUEST_CSUM; a partial checksum or a GSO frame the driver did not accept is dropped.
    private func sanitize(_ h: inout [UInt8], _ d: VirtioNet) -> Bool {
        let csum = d.negotiated(VirtioNetFeature.guestChecksum)
        if h[VirtioNetHeader.flagsOffset] & VirtioNetHeader.flagNeedsChecksum != 0 && !csum { return false }
        if !csum { h[VirtioNetHeader.flagsOffset] &= ~VirtioNetHeader.flagDataValid }
        let gso = h[VirtioNetHeader.gsoTypeOffset]
        if gso & VirtioNetHeader.gsoECN != 0 && !d.negotiated(VirtioNetFeature.guestECN) { return false }
        switch gso & ~VirtioNetHeader.gsoECN {
        case VirtioNetHeader.gsoNone: return true
        case VirtioNetHeader.gsoTCPv4: return d.negotiated(VirtioNetFeature.guestTSO4)
        case VirtioNetHeader.gsoTCPv6: return d.negotiated(VirtioNetFeature.guestTSO6)
        case VirtioNetHeader.gsoUDP: return d.negotiated(VirtioNetFeature.guestUFO)
        default: return false
        }
    }

    /// Copies the stream header+payload from `position` into `chain`'s writable buffers, as far
    /// as they go; returns the bytes written.
    private func copy(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer, from position: UInt64,
                      into chain: DescriptorChain, memory: GuestMemory) -> UInt64 {
        let total = UInt64(header.count + payload.count)
        var at = position
        for b in chain.writable where at < total && b.length > 0 {
            let n = min(UInt64(b.length), total - at)
            guard let dst = memory.hostPointer(b.address, length: n) else { break }
            var done: UInt64 = 0
            while done < n {
                let source = at < UInt64(header.count) ? header : payload
                let offset = at < UInt64(header.count) ? Int(at) : Int(at) - header.count
                let piece = min(Int(n - done), source.count - offset)
                guard piece > 0, let base = source.baseAddress else { return at - position }
                (dst + Int(done)).copyMemory(from: base + offset, byteCount: piece)
                done += UInt64(piece)
                at += UInt64(piece)
            }
        }
        return at - position
    }

    // MARK: transmit

    /// Sends the driver's frames until the queue is empty, the backend would block (the chain is
    /// kept and sent first after `backendWritable`), or a burst is done (the rest runs next turn).
    func transmit() {
        guard let (d, t, q) = transmitRing() else { return }
        if let held = txHeld {
            guard send(held, t) else { return }
            txHeld = nil
            t.complete(queue: txQueue, head: held.head, length: 0)
        }
        var budget = Self.transmitBurst
        do throws(VirtqueueError) {
            var again = true
            while again && t.acceptsRequests {
                try q.setNotification(t.memory, enabled: false)
                while t.acceptsRequests, let chain = try q.pop(t.memory) {
                    // While blocked the driver's kicks stay off: the backend's wake-up resumes us.
                    guard send(chain, t) else { txHeld = chain; return }
                    t.complete(queue: txQueue, head: chain.head, length: 0)
                    budget -= 1
                    if budget == 0 { scheduleTransmit(d); return }
                }
                again = try q.setNotification(t.memory, enabled: true)
            }
        } catch {
            t.deviceNeedsReset(error)
        }
    }

    /// Transmits from the device's loop: the driver's kicks stay off until then (`transmit`
    /// turns them back on when it empties the queue).
    func transmitSoon() {
        guard let (d, t, q) = transmitRing() else { return }
        do throws(VirtqueueError) {
            try q.setNotification(t.memory, enabled: false)
        } catch {
            t.deviceNeedsReset(error)
            return
        }
        scheduleTransmit(d)
    }

    /// The device, its transport and the transmit queue, while the queue may be worked on.
    private func transmitRing() -> (VirtioNet, VirtioTransport, SplitVirtqueue)? {
        guard let d = device, let t = d.transport, t.acceptsRequests, txQueue < t.queues.count else { return nil }
        let q = t.queues[txQueue]
        return q.isReady ? (d, t, q) : nil
    }

    private func scheduleTransmit(_ d: VirtioNet) {
        guard !txScheduled else { return }
        txScheduled = true
        let epoch = d.epoch
        d.loop.post { [weak self, weak d] in
            guard let self, let d, d.epoch == epoch else { return }
            self.txScheduled = false
            self.transmit()
        }
    }

    /// One chain to the backend, header stripped when the backend has none. False: would block.
    /// A chain too short for the header or longer than any frame is dropped (true).
    private func send(_ chain: DescriptorChain, _ t: VirtioTransport) -> Bool {
        let length = chain.readableLength
        let headerLength = UInt64(VirtioNetHeader.length)
        guard length >= headerLength, length - headerLength <= UInt64(VirtioNetHeader.maxFrameLength) else {
            txDropped += 1
            return true
        }
        var skip: UInt64 = backend.vnetHeaderLength == VirtioNetHeader.length ? 0 : headerLength
        txSegments.removeAll(keepingCapacity: true)
        for b in chain.readable where b.length > 0 {
            let n = UInt64(b.length)
            if skip >= n { skip -= n; continue }
            guard let p = t.memory.hostPointer(b.address + skip, length: n - skip) else { txDropped += 1; return true }
            txSegments.append(NetSegment(base: UnsafeRawPointer(p), count: Int(n - skip)))
            skip = 0
        }
        let result = txSegments.withUnsafeBufferPointer { backend.send($0) }
        return result == .sent
    }
}
