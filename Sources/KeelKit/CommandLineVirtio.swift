import Loop
import Machine

/// -drive, the virtio -device types and -object iothread, kept apart from the rest of the
/// command line (QEMU's spelling: `-drive file=d.img,if=none,id=d0 -device virtio-blk-pci,drive=d0`).
enum VirtioCommandLine {
    static let deviceTypes = ["vhost-user-blk-pci", "virtio-blk-pci", "virtio-rng-pci", "virtio-serial-pci", "virtconsole"] + SCSICommandLine.deviceTypes

    static func parseDrive(_ value: String, into c: inout MachineConfiguration) throws {
        var o = try OptionList(option: "-drive", value, impliedKey: "file")
        guard let file = o.take("file") ?? o.implied, !file.isEmpty else {
            throw ConfigurationErrorText("-drive \(value): no file= given")
        }
        var d = DriveConfiguration(id: o.take("id") ?? "drive\(c.drives.count)", file: file)
        if let f = o.take("format") { d.format = f }
        if let i = o.take("if") {
            guard let v = DriveConfiguration.Interface(rawValue: i) else {
                throw ConfigurationErrorText("-drive \(value): if=\(i) is not supported (virtio or none)")
            }
            d.interface = v
        }
        if let k = o.take("cache") {
            guard let v = DriveConfiguration.Cache(rawValue: k) else {
                throw ConfigurationErrorText("-drive \(value): cache=\(k) (writeback, none, unsafe, writethrough or directsync)")
            }
            d.cache = v
        }
        if let a = o.take("aio") {
            guard let v = DriveConfiguration.AIO(rawValue: a) else {
                throw ConfigurationErrorText("-drive \(value): aio=\(a) (threads, native or io_uring)")
            }
            d.aio = v
        }
        if let r = try o.takeBool("readonly") { d.readOnly = r }
        _ = o.take("media"); _ = o.take("discard"); _ = o.take("detect-zeroes")
        try o.rejectUnused(value)
        c.drives.append(d)
        if d.interface == .virtio { c.pciDevices.append(.virtioBlock(VirtioBlockConfiguration(drive: d.id))) }
    }

    /// Returns false if `driver` is not a virtio device type.
    static func parseDevice(_ driver: String, _ o: inout OptionList, _ value: String, into c: inout MachineConfiguration) throws -> Bool {
        switch driver {
        case "virtio-blk-pci":
            guard let drive = o.take("drive") else { throw ConfigurationErrorText("-device \(value): drive= is required") }
            var b = VirtioBlockConfiguration(drive: drive)
            if let n = o.take("num-queues") {
                b.queueCount = Int(try KeelCommandLine.checked(n, max: 64, "-device", "num-queues"))
            }
            if let s = o.take("queue-size") {
                let v = try KeelCommandLine.checked(s, max: 1024, "-device", "queue-size")
                guard v >= 4, v.nonzeroBitCount == 1 else { throw ConfigurationErrorText("-device \(value): queue-size=\(s) is not a power of two from 4 to 1024") }
                b.queueSize = UInt16(v)
            }
            if let s = o.take("serial") {
                guard s.utf8.count <= 20 else { throw ConfigurationErrorText("-device \(value): serial=\(s) is longer than 20 bytes") }
                b.serial = s
            }
            b.iothread = o.take("iothread")
            if let e = try o.takeBool("ioeventfd") { b.ioeventfd = e }
            _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr")
            try o.rejectUnused(value)
            c.pciDevices.append(.virtioBlock(b))
        case "virtio-serial-pci", "virtio-serial":
            _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr"); _ = o.take("max_ports")
            try o.rejectUnused(value)
            c.pciDevices.append(.virtioSerial(VirtioSerialConfiguration()))
        case "virtconsole":
            guard let chardev = o.take("chardev") else { throw ConfigurationErrorText("-device \(value): chardev= is required") }
            _ = o.take("id"); _ = o.take("name"); _ = o.take("bus"); _ = o.take("nr")
            try o.rejectUnused(value)
            // QEMU puts the port on the most recent virtio-serial bus.
            guard let i = c.pciDevices.lastIndex(where: { if case .virtioSerial = $0 { return true } else { return false } }),
                  case .virtioSerial(var s) = c.pciDevices[i] else {
                throw ConfigurationErrorText("-device \(value): no virtio-serial-pci before it to attach to")
            }
            s.ports.append(.init(chardev: chardev))
            c.pciDevices[i] = .virtioSerial(s)
        case "vhost-user-blk-pci", "vhost-user-blk":
            try VhostCommandLine.parseDevice(&o, value, into: &c)
        case "virtio-rng-pci":
            _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr"); _ = o.take("rng")
            try o.rejectUnused(value)
            c.pciDevices.append(.virtioRNG)
        default:
            return try SCSICommandLine.parseDevice(driver, &o, value, into: &c)
        }
        return true
    }

    /// -object iothread,id=NAME[,poll-max-ns=,poll-grow=,poll-shrink=]: recorded; devices naming
    /// it are checked against it.
    static func parseObject(_ value: String, iothreads: inout [String], iothreadPolling: inout [String: PollParameters],
                            vhost: inout VhostCommandLine) throws {
        var o = try OptionList(option: "-object", value, impliedKey: "qom-type")
        if let t = o.implied, t.hasPrefix("memory-backend-") {
            try vhost.parseObject(&o, value)
            return
        }
        guard o.implied == "iothread" else {
            throw ConfigurationErrorText("-object \(value): unknown object type '\(o.implied ?? "")' (Keel has iothread)")
        }
        guard let id = o.take("id") else { throw ConfigurationErrorText("-object \(value): id= is required") }
        var polling = PollParameters()
        for (key, field) in [("poll-max-ns", \PollParameters.maxNanoseconds), ("poll-grow", \.grow), ("poll-shrink", \.shrink)] {
            guard let v = o.take(key) else { continue }
            // QEMU takes 0 ... INT64_MAX.
            guard let n = UInt64(v), n <= UInt64(Int64.max) else {
                throw ConfigurationErrorText("-object \(value): \(key)=\(v) is not a number of 0 or more")
            }
            polling[keyPath: field] = n
        }
        try o.rejectUnused(value)
        iothreads.append(id)
        iothreadPolling[id] = polling
    }

    /// Attaches each virtconsole to its `-chardev` (stdio, or a listening unix socket).
    static func resolveConsoles(_ c: inout MachineConfiguration, _ monitors: MonitorOptions, serialOnStdio: Bool) throws {
        var stdioUsed = serialOnStdio || c.monitors.contains { $0.backend == .stdio }
        for i in c.pciDevices.indices {
            guard case .virtioSerial(var s) = c.pciDevices[i] else { continue }
            for p in s.ports.indices {
                let id = s.ports[p].chardev
                guard let d = monitors.chardev(id) else {
                    throw ConfigurationErrorText("-device virtconsole,chardev=\(id): no -chardev with id=\(id)")
                }
                guard !monitors.monitorUses(id) else {
                    throw ConfigurationErrorText("-device virtconsole,chardev=\(id): the chardev is already used by a -mon")
                }
                switch d.backend {
                case .stdio:
                    guard !stdioUsed else {
                        throw ConfigurationErrorText("-device virtconsole,chardev=\(id): stdio is already in use (-serial, -monitor or -nographic)")
                    }
                    stdioUsed = true
                    s.ports[p].backend = .stdio
                case .unixSocket(let path):
                    guard d.server else {
                        throw ConfigurationErrorText("-device virtconsole,chardev=\(id): Keel's console sockets listen (add server=on)")
                    }
                    s.ports[p].backend = .unixSocket(path: path, server: true, wait: d.wait)
                case .tcpSocket:
                    throw ConfigurationErrorText("-device virtconsole,chardev=\(id): Keel's consoles take stdio or a unix socket")
                }
            }
            c.pciDevices[i] = .virtioSerial(s)
        }
    }

    static func checkIOThreads(_ c: MachineConfiguration, _ iothreads: [String]) throws {
        try SCSICommandLine.checkIOThreads(c, iothreads)
        for case .virtioBlock(let b) in c.pciDevices {
            if let t = b.iothread, !iothreads.contains(t) {
                throw ConfigurationErrorText("-device virtio-blk-pci,iothread=\(t): no -object iothread,id=\(t)")
            }
        }
    }
}
