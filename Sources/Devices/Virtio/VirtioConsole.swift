import Memory

/// virtio-console (virtio 1.2 §5.3) as QEMU's virtio-serial-pci with virtconsole ports: with
/// VIRTIO_CONSOLE_F_MULTIPORT the driver learns its ports over the control queues (Linux makes
/// each console port an hvc device: port 0 is hvc0); without it, port 0 alone is the console.
/// Each port's bytes go to and come from a host chardev. Runs on the loop that owns it.
public final class VirtioConsole: VirtioDevice {
    static let featureSize: UInt64 = 1 << 0
    static let featureMultiport: UInt64 = 1 << 1
    static let featureEmergencyWrite: UInt64 = 1 << 2

    /// Control events (§5.3.6.2).
    enum Event: UInt16 {
        case deviceReady = 0, deviceAdd = 1, deviceRemove = 2, portReady = 3
        case consolePort = 4, resize = 5, portOpen = 6, portName = 7
    }
    static let controlLength = 8
    static let queueSize: UInt16 = 128
    /// Host input held per port while the driver has no receive buffers posted.
    static let inputLimit = 4096

    let ports: [VirtioConsolePort]
    weak var transport: VirtioTransport?
    /// Device-to-driver control messages waiting for a buffer on the control receive queue.
    var controlOut: [[UInt8]] = []
    var controlIn: [DescriptorChain] = []
    public private(set) var driverReady = false

    public init(chardevs: [Chardev]) {
        precondition(!chardevs.isEmpty && chardevs.count <= 31)
        var ports: [VirtioConsolePort] = []
        for (i, c) in chardevs.enumerated() { ports.append(VirtioConsolePort(id: UInt32(i), chardev: c)) }
        self.ports = ports
        for p in ports {
            p.console = self
            p.chardev.frontend = p
        }
    }

    public var deviceType: UInt16 { 3 }
    public var deviceFeatures: UInt64 { Self.featureMultiport | Self.featureEmergencyWrite }
    /// Port 0's pair, the control pair, then one pair per further port.
    public var queueMaxSizes: [UInt16] { Array(repeating: Self.queueSize, count: 2 * ports.count + 2) }
    public var pciClassCode: UInt32 { 0x07_80_00 }
    public var inflightRequests: Int { 0 }

    var multiport: Bool { (transport?.driverFeatures ?? 0) & Self.featureMultiport != 0 }

    // Configuration: cols, rows (u16 each), max_nr_ports (u32), emerg_wr (u32).
    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        var config = [UInt8](repeating: 0, count: 12)
        let n = UInt32(ports.count)
        for i in 0..<4 { config[4 + i] = UInt8(truncatingIfNeeded: n >> (8 * UInt32(i))) }
        for i in 0..<data.count {
            let (at, o) = offset.addingReportingOverflow(i)
            data[i] = !o && at >= 0 && at < config.count ? config[at] : 0
        }
    }

    /// emerg_wr: one byte to port 0 even before the driver is ready (early console output).
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        guard offset == 8, data.count == 4 else { return }
        let byte = [UInt8(truncatingIfNeeded: data.littleEndianValue)]
        byte.withUnsafeBytes { ports[0].chardev.write($0) }
    }

    public func activate(_ transport: VirtioTransport) {
        self.transport = transport
        for p in ports { p.pollRx() }
    }

    public func reset() {
        transport = nil
        controlOut.removeAll()
        controlIn.removeAll()
        driverReady = false
        for p in ports { p.reset() }
    }

    /// Queue index → (port, receive?) or the control pair.
    public func queueNotified(_ index: Int) {
        guard let t = transport, index >= 0 else { return }
        switch index {
        case 0, 1: portQueue(0, receive: index == 0)
        case 2: if multiport { takeControlBuffers(t) }
        case 3: if multiport { t.processQueue(3) { handleControl($0, t) } }
        default:
            guard multiport else { return }
            portQueue((index - 2) / 2, receive: index % 2 == 0)
        }
    }

    private func portQueue(_ port: Int, receive: Bool) {
        guard port >= 0, port < ports.count, let t = transport else { return }
        if receive { ports[port].pollRx() } else { ports[port].transmit(t) }
    }

    func queueIndex(port: Int, receive: Bool) -> Int { port == 0 ? (receive ? 0 : 1) : 2 + 2 * port + (receive ? 0 : 1) }

    // MARK: control queues

    private func handleControl(_ chain: DescriptorChain, _ t: VirtioTransport) {
        defer { t.complete(queue: 3, head: chain.head, length: 0) }
        var cursor = ChainCursor(memory: t.memory, buffers: chain.readable)
        guard let m = cursor.read(Self.controlLength) else { return }
        let id = UInt32(m[0]) | UInt32(m[1]) << 8 | UInt32(m[2]) << 16 | UInt32(m[3]) << 24
        let value = UInt16(m[6]) | UInt16(m[7]) << 8
        guard let event = Event(rawValue: UInt16(m[4]) | UInt16(m[5]) << 8) else { return }
        switch event {
        case .deviceReady:
            guard value == 1, !driverReady else { return }
            driverReady = true
            for p in ports { sendControl(id: p.id, .deviceAdd, 1) }
        case .portReady:
            // Only a port the device announced (PORT_ADD follows DEVICE_READY) can become ready.
            guard value == 1, driverReady, let p = port(id), !p.driverReady else { return }
            p.driverReady = true
            sendControl(id: p.id, .consolePort, 1)
            // The host side of a chardev counts as connected from the start, as QEMU's.
            sendControl(id: p.id, .portOpen, 1)
        case .portOpen:
            guard let p = port(id) else { return }
            p.guestOpen = value == 1
            if p.guestOpen { p.pollRx() }
        default:
            return
        }
    }

    private func port(_ id: UInt32) -> VirtioConsolePort? { id < UInt32(ports.count) ? ports[Int(id)] : nil }

    func sendControl(id: UInt32, _ event: Event, _ value: UInt16) {
        var m = [UInt8](repeating: 0, count: Self.controlLength)
        for i in 0..<4 { m[i] = UInt8(truncatingIfNeeded: id >> (8 * UInt32(i))) }
        m[4] = UInt8(truncatingIfNeeded: event.rawValue); m[5] = UInt8(truncatingIfNeeded: event.rawValue >> 8)
        m[6] = UInt8(truncatingIfNeeded: value); m[7] = UInt8(truncatingIfNeeded: value >> 8)
        controlOut.append(m)
        if let t = transport { takeControlBuffers(t) }
    }

    private func takeControlBuffers(_ t: VirtioTransport) {
        controlIn += take(queue: 2, have: controlIn.count, t)
        while !controlOut.isEmpty, !controlIn.isEmpty, t.isProcessing {
            let chain = controlIn.removeFirst()
            var cursor = ChainCursor(memory: t.memory, buffers: chain.writable)
            let n = cursor.write(controlOut.removeFirst())
            t.complete(queue: 2, head: chain.head, length: UInt32(n))
        }
    }

    /// Pops the driver's new chains on `queue`, holding at most a queue's worth.
    func take(queue: Int, have: Int, _ t: VirtioTransport) -> [DescriptorChain] {
        guard queue < t.queues.count, t.isProcessing else { return [] }
        let q = t.queues[queue]
        guard q.isReady else { return [] }
        var out: [DescriptorChain] = []
        do throws(VirtqueueError) {
            while have + out.count < Int(q.size), let c = try q.pop(t.memory) { out.append(c) }
            // Held buffers are answered later: keep the driver's kicks coming (avail_event).
            try q.setNotification(t.memory, enabled: true)
        } catch {
            t.deviceNeedsReset(error)
            return []
        }
        return out
    }
}

/// One port: its chardev, the host input not yet delivered and the driver's receive buffers.
public final class VirtioConsolePort: ChardevFrontend {
    let id: UInt32
    let chardev: Chardev
    weak var console: VirtioConsole?
    var input: [UInt8] = []
    var rxBuffers: [DescriptorChain] = []
    var driverReady = false
    var guestOpen = false

    init(id: UInt32, chardev: Chardev) { self.id = id; self.chardev = chardev }

    func reset() {
        rxBuffers.removeAll()
        driverReady = false
        guestOpen = false
    }

    public func receiveCapacity() -> Int { VirtioConsole.inputLimit - input.count }

    public func receive(_ bytes: UnsafeRawBufferPointer) {
        input += bytes.prefix(max(0, receiveCapacity()))
        pollRx()
    }

    /// Moves held input into the driver's receive buffers (§5.3.6.1).
    func pollRx() {
        guard let console, let t = console.transport else { return }
        let queue = console.queueIndex(port: Int(id), receive: true)
        rxBuffers += console.take(queue: queue, have: rxBuffers.count, t)
        var freed = false
        while !input.isEmpty, !rxBuffers.isEmpty, t.isProcessing {
            let chain = rxBuffers.removeFirst()
            var cursor = ChainCursor(memory: t.memory, buffers: chain.writable)
            let n = cursor.write(Array(input.prefix(Int(min(UInt64(input.count), chain.writableLength)))))
            input.removeFirst(n)
            freed = freed || n > 0
            t.complete(queue: queue, head: chain.head, length: UInt32(n))
        }
        if freed { chardev.frontendCanReceive() }
    }

    /// The driver's output, buffer by buffer, straight from guest memory to the chardev.
    func transmit(_ t: VirtioTransport) {
        guard let console else { return }
        let queue = console.queueIndex(port: Int(id), receive: false)
        t.processQueue(queue) { chain in
            for b in chain.readable where b.length > 0 {
                if let p = t.memory.hostPointer(b.address, length: UInt64(b.length)) {
                    chardev.write(UnsafeRawBufferPointer(start: p, count: Int(b.length)))
                }
            }
            t.complete(queue: queue, head: chain.head, length: 0)
        }
    }
}
