import Block
import Devices
import Glibc
import Loop

/// `keel vhost-user-blk`: Keel's vhost-user block back-end, with the flags of QEMU's
/// contrib/vhost-user-blk (`--socket-path`, `--blk-file`, `--read-only`, `--num-queues`).
/// virtio-blk from Devices/Virtio over the Block target's raw/qcow2 backends; requests run on a
/// worker pool and complete on the back-end's own event loop (its main thread).
public enum VhostUserBlockBackend {
    public struct Options: Equatable {
        public var socketPath: String { endpointFlags.socketPath }
        var endpointFlags = VhostUserEndpointFlags()
        public var blockFile = ""
        public var readOnly = false
        public var queueCount = 1
        public var serial = ""
    }

    public static let usage = """
    usage: keel vhost-user-blk --socket-path=PATH [--client] | --fd=N --blk-file=FILE [--read-only] [--num-queues=N] [--serial=S]
    Serves FILE (raw or qcow2) as a vhost-user-blk back-end on a unix socket listening at PATH
    (--client: connecting to PATH, where the front-end listens; --fd: on a connected socket).
    """

    public static func parse(_ args: [String]) throws -> Options {
        var o = Options()
        var flags = VhostUserBackendArguments(args)
        while let a = flags.next() {
            if try o.endpointFlags.take(a, from: &flags) {}
            else if let v = try flags.value(a, "--blk-file", "-b") { o.blockFile = v }
            else if let v = try flags.value(a, "--num-queues", "-n") {
                guard let n = Int(v), (1...64).contains(n) else { throw VhostUserError("--num-queues=\(v): 1 to 64") }
                o.queueCount = n
            } else if let v = try flags.value(a, "--serial") {
                guard v.utf8.count <= 20 else { throw VhostUserError("--serial=\(v) is longer than 20 bytes") }
                o.serial = v
            } else if a == "--read-only" || a == "-r" { o.readOnly = true }
            else { throw VhostUserError("\(a): unknown option") }
        }
        _ = try o.endpointFlags.endpoint()
        guard !o.blockFile.isEmpty else { throw VhostUserError("--blk-file=FILE is required") }
        return o
    }

    public static func main(_ args: [String]) -> Int32 {
        VhostUserBackendProgram.run("vhost-user-blk", usage: usage, args) { loop in
            let o = try parse(args)
            let image: BlockDevice
            do { image = try openImage(path: o.blockFile, options: ImageOpenOptions(readOnly: o.readOnly)) }
            catch { throw VhostUserError("--blk-file=\(o.blockFile): \(error)") }
            var c = VirtioBlock.Configuration()
            c.queueCount = o.queueCount
            c.queueSize = 1024
            c.readOnly = o.readOnly
            c.serial = o.serial
            let device = VirtioBlock(backend: image, configuration: c, executor: WorkerPoolExecutor(pool: WorkerPool(threads: 4), loop: loop))
            return (device, o.endpointFlags, o.blockFile)
        }
    }
}
