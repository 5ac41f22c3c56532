import Memory
import SCSI

/// virtio-scsi (virtio 1.2 §5.6): a host adapter whose targets are Keel `SCSITarget`s. Queue 0
/// is the control queue (task management, asynchronous notification), 1 the event queue
/// (buffers kept; Keel raises no events), 2... the
/// request queues. CDBs run on the executor, straight into or out of guest memory.
public final class VirtioSCSI: VirtioDevice {
    public struct Configuration: Sendable {
        /// Request queues (num_queues); the control and event queues come on top.
        public var queueCount = 1
        public var queueSize: UInt16 = 256
        public init() {}
    }

    // §5.6.4 defaults; the driver may rewrite sense_size and cdb_size.
    static let defaultCDBSize: UInt32 = 32, defaultSenseSize: UInt32 = 96
    static let maxLUN: UInt32 = 16383
    // §5.6.6.1 response codes.
    static let responseOK: UInt8 = 0, responseOverrun: UInt8 = 1, responseBadTarget: UInt8 = 3
    static let responseFailure: UInt8 = 9, responseFunctionRejected: UInt8 = 11
    // §5.6.6.2 control request types.
    static let controlTMF: UInt32 = 0, controlANQuery: UInt32 = 1, controlANSubscribe: UInt32 = 2
    static let tmfSubtypeCount: UInt32 = 8   // ABORT_TASK ... QUERY_TASK_SET

    public let targets: [Int: SCSITarget]
    public let configuration: Configuration
    let executor: VirtioRequestExecutor
    weak var transport: VirtioTransport?
    public private(set) var inflightRequests = 0
    private var epoch: UInt64 = 0
    private var cdbSize = defaultCDBSize
    private var senseSize = defaultSenseSize

    /// `targets` by target ID (0...255).
    public init(targets: [Int: SCSITarget], configuration: Configuration, executor: VirtioRequestExecutor) {
        precondition(configuration.queueCount >= 1 && configuration.queueSize >= 4)
        self.targets = targets.filter { (0...255).contains($0.key) }
        self.configuration = configuration
        self.executor = executor
    }

    public var deviceType: UInt16 { 8 }
    public var pciClassCode: UInt32 { 0x01_0000 }   // mass storage, SCSI
    /// VIRTIO_SCSI_F_CHANGE (§5.6.3): the device may report parameter changes; Keel never
    /// does, but QEMU's vhost-user-scsi front-end always asks for it, as its own virtio-scsi offers it.
    static let featureChange: UInt64 = 1 << 2
    public var deviceFeatures: UInt64 { Self.featureChange }
    public var queueMaxSizes: [UInt16] { Array(repeating: configuration.queueSize, count: configuration.queueCount + 2) }

    private var configBytes: [UInt8] {
        var w = [UInt8](repeating: 0, count: 36)
        func put(_ offset: Int, _ bytes: Int, _ v: UInt64) { for i in 0..<bytes { w[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0, 4, UInt64(configuration.queueCount))          // num_queues
        put(4, 4, UInt64(configuration.queueSize - 2))       // seg_max: header and response take two
        put(8, 4, 0xFFFF)                                    // max_sectors
        put(12, 4, 128)                                      // cmd_per_lun
        put(16, 4, 16)                                       // event_info_size
        put(20, 4, UInt64(senseSize))
        put(24, 4, UInt64(cdbSize))
        put(28, 2, 0)                                        // max_channel
        // Linux scans every target up to max_target; there is no hotplug, so stop at the last one.
        put(30, 2, UInt64(targets.keys.max() ?? 0))
        put(32, 4, UInt64(Self.maxLUN))
        return w
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        let bytes = configBytes
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < bytes.count ? bytes[o] : 0
        }
    }

    /// sense_size and cdb_size are driver-writable (§5.6.4); values Keel cannot honour are ignored.
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        var bytes = configBytes
        for i in 0..<data.count {
            let o = offset + i
            guard o >= 20, o < 28 else { continue }
            bytes[o] = data[i]
        }
        let sense = le32(bytes, 20), cdb = le32(bytes, 24)
        if sense <= 252 { senseSize = sense }
        if (6...255).contains(cdb) { cdbSize = cdb }
    }

    public func activate(_ transport: VirtioTransport) { self.transport = transport }

    public func reset() {
        epoch &+= 1
        cdbSize = Self.defaultCDBSize
        senseSize = Self.defaultSenseSize
    }

    public func queueNotified(_ index: Int) {
        guard let t = transport else { return }
        switch index {
        case 0: t.processQueue(0) { handleControl($0, transport: t) }
        case 1: break   // event buffers wait for events Keel never raises
        default: t.processQueue(index) { handleCommand($0, queue: index, transport: t) }
        }
    }

    /// The target ID and LUN a virtio-scsi LUN field names (§5.6.6.1: byte 0 is 1, byte 1 the
    /// target, bytes 2-3 a single-level LUN); nil target: no such target. A LUN Keel cannot
    /// decode comes back nil and is answered as a missing logical unit.
    func address(_ lun: ArraySlice<UInt8>) -> (target: SCSITarget?, lun: Int?) {
        let b = Array(lun)
        guard b.count == 8, b[0] == 1, let target = targets[Int(b[1])] else { return (nil, nil) }
        guard b[4...].allSatisfy({ $0 == 0 }) else { return (target, nil) }
        switch b[2] >> 6 {
        case 0 where b[2] == 0: return (target, Int(b[3]))                       // peripheral, bus 0
        case 1: return (target, Int(b[2] & 0x3F) << 8 | Int(b[3]))               // flat space
        default: return (target, nil)
        }
    }

    private func handleCommand(_ chain: DescriptorChain, queue: Int, transport t: VirtioTransport) {
        let memory = t.memory
        let headerSize = 19 + Int(cdbSize), responseSize = 12 + Int(senseSize)
        var reader = ChainCursor(memory: memory, buffers: chain.readable)
        guard let header = reader.read(headerSize), chain.writableLength >= UInt64(responseSize) else {
            t.deviceNeedsReset(.bufferNotInRAM(address: chain.buffers.first?.address ?? 0, length: 0))
            return
        }
        let responseCursor = ChainCursor(memory: memory, buffers: chain.writable)
        var dataInCursor = responseCursor
        let dataOutLength = reader.remaining
        guard dataInCursor.segments(UInt64(responseSize)) != nil,
              let dataIn = dataInCursor.segments(dataInCursor.remaining),
              let dataOut = reader.segments(dataOutLength) else {
            t.deviceNeedsReset(.bufferNotInRAM(address: chain.buffers.first?.address ?? 0, length: 0))
            return
        }
        let senseLimit = Int(senseSize)
        func respond(_ response: UInt8, _ result: SCSIResult?) {
            guard t.isProcessing else { return }
            var w = responseCursor
            let r = result ?? .good()
            let sense = response == Self.responseOK ? Array(r.sense.prefix(senseLimit)) : []
            let dataInTotal = dataIn.reduce(0) { $0 + $1.count }
            let residual = dataInTotal > 0 ? dataInTotal - min(r.dataInLength, dataInTotal)
                : (r.status == .good && response == Self.responseOK ? 0 : Int(clamping: dataOutLength))
            var bytes = [UInt8](repeating: 0, count: 12)
            for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: sense.count >> (8 * i)) }
            for i in 0..<4 { bytes[4 + i] = UInt8(truncatingIfNeeded: residual >> (8 * i)) }
            bytes[10] = response == Self.responseOK ? r.status.rawValue : 0
            bytes[11] = response
            w.write(bytes + sense)
            let written = UInt64(responseSize) + (response == Self.responseOK ? UInt64(r.dataInLength) : 0)
            t.complete(queue: queue, head: chain.head, length: UInt32(clamping: written))
        }
        let (target, lun) = address(header[0..<8])
        guard let target else { respond(Self.responseBadTarget, nil); return }
        let cdb = Array(header[19..<headerSize])
        let box = ResultBox()
        inflightRequests += 1
        let submitted = epoch
        executor.execute({
            let result = target.execute(lun: lun, cdb: cdb, buffers: SCSIBuffers(dataOut: dataOut.map { UnsafeRawBufferPointer($0) }, dataIn: dataIn))
            box.result = result
            return 0
        }, completion: { [weak self, weak t] _ in
            guard let self else { return }
            self.inflightRequests -= 1
            if submitted == self.epoch, let r = box.result { respond(r.overrun ? Self.responseOverrun : Self.responseOK, r) }
            if self.inflightRequests == 0 { t?.requestsDrained() }
        })
    }

    /// Task management and asynchronous notification (§5.6.6.2-5.6.6.3). Commands finish on
    /// their own, so every known TMF is FUNCTION COMPLETE; no events are ever reported.
    private func handleControl(_ chain: DescriptorChain, transport t: VirtioTransport) {
        var reader = ChainCursor(memory: t.memory, buffers: chain.readable)
        var writer = ChainCursor(memory: t.memory, buffers: chain.writable)
        func bad() { t.deviceNeedsReset(.bufferNotInRAM(address: chain.buffers.first?.address ?? 0, length: 0)) }
        guard let typeBytes = reader.read(4) else { bad(); return }
        let type = le32(typeBytes, 0)
        switch type {
        case Self.controlTMF:
            guard let rest = reader.read(20), chain.writableLength >= 1 else { bad(); return }
            let subtype = le32(rest, 0)
            let response: UInt8
            if address(rest[4..<12]).target == nil { response = Self.responseBadTarget }
            else { response = subtype < Self.tmfSubtypeCount ? Self.responseOK : Self.responseFunctionRejected }
            writer.write([response])
            t.complete(queue: 0, head: chain.head, length: 1)
        case Self.controlANQuery, Self.controlANSubscribe:
            guard let rest = reader.read(12), chain.writableLength >= 5 else { bad(); return }
            let response = address(rest[0..<8]).target == nil ? Self.responseBadTarget : Self.responseOK
            writer.write([0, 0, 0, 0, response])   // event_actual: none
            t.complete(queue: 0, head: chain.head, length: 5)
        default:
            guard chain.writableLength >= 1 else { bad(); return }
            writer.write([Self.responseFailure])
            t.complete(queue: 0, head: chain.head, length: 1)
        }
    }
}

/// Carries a command's result from the worker back to the device's loop.
private final class ResultBox: @unchecked Sendable {
    var result: SCSIResult?
}
