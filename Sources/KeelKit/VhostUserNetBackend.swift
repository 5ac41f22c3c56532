import Devices
import Glibc
import Loop
import Memory
import Net

/// `keel vhost-user-net`: Keel's virtio-net (tap backend, vnet header and offloads as the driver
/// negotiates them) served as a vhost-user back-end. As QEMU's vhost-user-net, the back-end
/// carries only the receive/transmit rings: the control queue stays with the front-end, so the
/// control-queue features are not offered here.
public enum VhostUserNetBackend {
    public struct Options: Equatable {
        public var socketPath: String { endpointFlags.socketPath }
        var endpointFlags = VhostUserEndpointFlags()
        public var tap = ""
        public var queuePairs = 1
        public var mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    }

    public static let usage = """
    usage: keel vhost-user-net --socket-path=PATH [--client] | --fd=N --tap=IFNAME [--queues=N] [--mac=52:54:00:12:34:56]
    Serves a virtio-net device on tap IFNAME as a vhost-user-net back-end on a unix socket listening at PATH
    (--client: connecting to PATH, where the front-end listens; --fd: on a connected socket).
    """

    public static func parse(_ args: [String]) throws -> Options {
        var o = Options()
        var flags = VhostUserBackendArguments(args)
        while let a = flags.next() {
            if try o.endpointFlags.take(a, from: &flags) {}
            else if let v = try flags.value(a, "--tap") { o.tap = v }
            else if let v = try flags.value(a, "--queues") {
                // One tap queue per pair; the front-end turns pairs on with SET_VRING_ENABLE.
                guard let n = Int(v), (1...64).contains(n) else { throw VhostUserError("--queues=\(v): 1 to 64 queue pairs") }
                o.queuePairs = n
            } else if let v = try flags.value(a, "--mac") {
                o.mac = try parseMAC(v)
            } else { throw VhostUserError("\(a): unknown option") }
        }
        _ = try o.endpointFlags.endpoint()
        guard !o.tap.isEmpty else { throw VhostUserError("--tap=IFNAME is required") }
        return o
    }

    static func parseMAC(_ s: String) throws -> [UInt8] {
        guard let bytes = NetCommandLine.macBytes(s) else { throw VhostUserError("--mac=\(s): expected six hex bytes like 52:54:00:12:34:56") }
        return bytes
    }

    public static func main(_ args: [String]) -> Int32 {
        VhostUserBackendProgram.run("vhost-user-net", usage: usage, args) { loop in
            let o = try parse(args)
            let taps: [TapBackend]
            do { taps = try TapBackend.open(ifname: o.tap, queues: o.queuePairs, vnetHeader: true) }
            catch { throw VhostUserError("--tap=\(o.tap): \(error)") }
            var c = VirtioNet.Configuration(mac: o.mac)
            c.multiqueue = false
            c.queueSize = 1024
            let net = try VirtioNet(backends: taps, configuration: c, loop: loop)
            return (VhostUserNetRings(net), o.endpointFlags, "tap \(o.tap)")
        }
    }
}

/// A `VirtioNet` seen through vhost-user: its receive/transmit rings only, without the
/// control-queue features (the front-end answers the control queue itself).
public final class VhostUserNetRings: VirtioDevice {
    public let net: VirtioNet

    public init(_ net: VirtioNet) { self.net = net }

    public var deviceType: UInt16 { net.deviceType }
    public var deviceFeatures: UInt64 { net.deviceFeatures & ~VirtioNetFeature.controlQueueOnly }
    public var queueMaxSizes: [UInt16] { Array(net.queueMaxSizes.dropLast()) }
    public var pciClassCode: UInt32 { net.pciClassCode }
    public var inflightRequests: Int { net.inflightRequests }
    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { net.readConfig(offset: offset, data: data) }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) { net.writeConfig(offset: offset, data: data) }
    public func activate(_ transport: VirtioTransport) { net.activate(transport) }
    public func queueNotified(_ index: Int) { net.ringNotified(index) }
    public func queueReadinessChanged(_ index: Int) { net.activePairsFollowReadyRings() }
    public func reset() { net.reset() }
}
