import Block
import Devices
import Glibc
import Loop
import SCSI

/// `keel vhost-user-scsi --socket-path=PATH --blk-file=IMG [--blk-file=IMG2...] [--read-only]`:
/// Keel's virtio-scsi device served to a vhost-user front-end (QEMU's vhost-user-scsi-pci, or
/// Keel's). Each --blk-file is a LUN on target 0, in order; flags follow QEMU's
/// contrib/vhost-user-blk spelling.
public enum VhostUserSCSIMain {
    public static let usage = """
    usage: keel vhost-user-scsi --socket-path=PATH [--client] | --fd=N --blk-file=IMAGE [--blk-file=IMAGE...]
                               [--read-only] [--format=raw|qcow2] [--serial=S] [--num-queues=N]
      -s, --socket-path   unix socket to listen on for the vhost-user front-end
          --client        connect to --socket-path instead (the front-end's chardev has server=on)
          --fd            a socket already connected to the front-end, instead of --socket-path
      -b, --blk-file      a raw or qcow2 image; the n-th becomes LUN n-1 of target 0
      -r, --read-only     every LUN is write-protected
          --format        image format of every --blk-file (default: probed)
          --serial        VPD page 80h serial of LUN 0 (LUN n gets S-n)
          --num-queues    request queues (default 1, at most 64)
    """

    struct Options {
        var endpointFlags = VhostUserEndpointFlags()
        var socketPath: String { endpointFlags.socketPath }
        var files: [String] = []
        var readOnly = false
        var format: ImageFormat?
        var serial = ""
        var queueCount = 1
    }

    static func parse(_ args: [String]) throws -> Options? {
        var o = Options()
        var i = 0
        func value(_ name: String, _ inline: String?) throws -> String {
            if let inline { return inline }
            i += 1
            guard i < args.count else { throw ConfigurationErrorText("vhost-user-scsi: \(name) needs a value") }
            return args[i]
        }
        while i < args.count {
            let a = args[i]
            let parts = a.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts.first ?? a, inline = parts.count > 1 ? parts[1] : nil
            switch name {
            case "-h", "--help": return nil
            case "-s", "--socket-path": o.endpointFlags.socketPath = try value(name, inline)
            case "--client": o.endpointFlags.client = true
            case "--fd":
                do { o.endpointFlags.fd = try VhostUserEndpointFlags.fileDescriptor(try value(name, inline)) }
                catch let e as VhostUserError { throw ConfigurationErrorText("vhost-user-scsi: \(e)") }
            case "-b", "--blk-file": o.files.append(try value(name, inline))
            case "-r", "--read-only": o.readOnly = true
            case "--format":
                let f = try value(name, inline)
                guard let known = ImageFormat(rawValue: f) else { throw ConfigurationErrorText("vhost-user-scsi: --format=\(f) is not supported (raw or qcow2)") }
                o.format = known
            case "--serial": o.serial = try value(name, inline)
            case "--num-queues":
                let n = try value(name, inline)
                guard let v = Int(n), (1...64).contains(v) else { throw ConfigurationErrorText("vhost-user-scsi: --num-queues=\(n) is not 1 to 64") }
                o.queueCount = v
            default:
                throw ConfigurationErrorText("vhost-user-scsi: unknown option '\(a)'")
            }
            i += 1
        }
        do { _ = try o.endpointFlags.endpoint() } catch { throw ConfigurationErrorText("vhost-user-scsi: \(error)") }
        guard !o.files.isEmpty else { throw ConfigurationErrorText("vhost-user-scsi: at least one --blk-file= is required") }
        return o
    }

    public static func main(_ args: [String]) -> Int32 {
        func fail(_ s: String) -> Int32 {
            let line = "keel vhost-user-scsi: " + s + "\n"
            line.withCString { _ = write(2, $0, strlen($0)) }
            return 1
        }
        let options: Options
        do {
            guard let o = try parse(args) else { print(usage); return 0 }
            options = o
        } catch {
            return fail("\(error)")
        }
        var backends: [BlockDevice] = []
        defer { for b in backends { b.close() } }
        let target = SCSITarget()
        for (lun, file) in options.files.enumerated() {
            do {
                let b = try openImage(path: file, options: ImageOpenOptions(format: options.format, readOnly: options.readOnly))
                backends.append(b)
                var c = SCSILogicalUnit.Configuration()
                c.readOnly = options.readOnly
                if !options.serial.isEmpty { c.serial = lun == 0 ? options.serial : "\(options.serial)-\(lun)" }
                target.attach(SCSILogicalUnit(backend: b, configuration: c), lun: lun)
            } catch {
                return fail("--blk-file=\(file): \(error)")
            }
        }
        signal(SIGPIPE, SIG_IGN)
        do {
            let loop = try EventLoop()
            let pool = WorkerPool(threads: 4)
            defer { pool.shutdown() }
            var c = VirtioSCSI.Configuration()
            c.queueCount = options.queueCount
            let device = VirtioSCSI(targets: [0: target], configuration: c, executor: WorkerPoolExecutor(pool: pool, loop: loop))
            let server = try VhostUserBackendServer(device: device, endpoint: options.endpointFlags.endpoint(), loop: loop)
            try server.start()
            if case .connected = server.endpoint { server.onDisconnect = { _ in loop.stop() } }
            _ = fail("serving at \(options.endpointFlags.description) (\(options.files.count) LUN\(options.files.count == 1 ? "" : "s"))")
            loop.run()
            server.stop()
        } catch {
            return fail("\(error)")
        }
        return 0
    }
}
