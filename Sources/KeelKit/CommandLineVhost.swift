import Machine

/// The vhost options: `-object memory-backend-memfd`, `-machine memory-backend=`,
/// `-numa node,memdev=` and `-device vhost-user-blk-pci,chardev=` (with a `-chardev socket`).
struct VhostCommandLine {
    var backends: [String: MemoryBackendConfiguration] = [:]
    var machineBackend: String?
    var memorySizeGiven = false

    /// -object memory-backend-memfd|memory-backend-ram|memory-backend-file,id=,size=[,share=on]
    mutating func parseObject(_ o: inout OptionList, _ value: String) throws {
        guard let id = o.take("id"), !id.isEmpty else { throw ConfigurationErrorText("-object \(value): id= is required") }
        guard let s = o.take("size") else { throw ConfigurationErrorText("-object \(value): size= is required") }
        let size = try parseSize(s, defaultUnit: 1, option: "-object")
        guard backends[id] == nil else { throw ConfigurationErrorText("-object \(value): duplicate id '\(id)'") }
        var b = MemoryBackendConfiguration(id: id, size: size)
        // memory-backend-memfd shares by default in QEMU; ram and file do not.
        b.share = try o.takeBool("share") ?? (o.implied == "memory-backend-memfd")
        if o.implied == "memory-backend-file" {
            _ = o.take("mem-path")
            throw ConfigurationErrorText("-object \(value): Keel's RAM is a memfd: use memory-backend-memfd")
        }
        for k in ["hugetlb", "hugetlbsize", "seal", "prealloc", "merge", "dump", "policy", "host-nodes", "reserve"] { _ = o.take(k) }
        try o.rejectUnused(value)
        backends[id] = b
    }

    /// -numa node[,nodeid=0][,memdev=ID][,cpus=...]: one node holding all RAM, as QEMU users write
    /// it to name the shared backend.
    mutating func parseNUMA(_ value: String) throws {
        var o = try OptionList(option: "-numa", value, impliedKey: "type")
        guard (o.implied ?? "node") == "node" else { throw ConfigurationErrorText("-numa \(value): only '-numa node' is supported") }
        if let n = o.take("nodeid"), n != "0" { throw ConfigurationErrorText("-numa \(value): Keel has one NUMA node (nodeid=0)") }
        if let m = o.take("memdev") {
            if let b = machineBackend, b != m { throw ConfigurationErrorText("-numa \(value): memdev=\(m) but the machine uses \(b)") }
            machineBackend = m
        }
        _ = o.take("cpus")
        try o.rejectUnused(value)
    }

    /// Names the RAM backend, sizes RAM from it when -m is absent, attaches vhost-user devices to their chardevs.
    func resolve(_ c: inout MachineConfiguration, _ monitors: MonitorOptions) throws {
        if let id = machineBackend {
            guard let b = backends[id] else { throw ConfigurationErrorText("memory-backend=\(id): no -object with id=\(id)") }
            if !memorySizeGiven { c.memorySize = b.size }
            c.memoryBackend = b
        }
        for i in c.pciDevices.indices {
            let name: String
            var v: VhostUserBlockConfiguration
            switch c.pciDevices[i] {
            case .vhostUserBlock(let b): name = "vhost-user-blk-pci"; v = b
            case .vhostUserSCSI(let b): name = "vhost-user-scsi-pci"; v = b
            default: continue
            }
            guard let d = monitors.chardev(v.chardev) else {
                throw ConfigurationErrorText("-device \(name),chardev=\(v.chardev): no -chardev with id=\(v.chardev)")
            }
            guard case .unixSocket(let path) = d.backend else {
                throw ConfigurationErrorText("-device \(name),chardev=\(v.chardev): vhost-user needs a unix socket chardev")
            }
            guard !monitors.monitorUses(v.chardev) else {
                throw ConfigurationErrorText("-device \(name),chardev=\(v.chardev): the chardev is already used by a -mon")
            }
            v.path = path
            v.server = d.server
            v.reconnectSeconds = d.reconnect
            if case .vhostUserSCSI = c.pciDevices[i] { c.pciDevices[i] = .vhostUserSCSI(v) } else { c.pciDevices[i] = .vhostUserBlock(v) }
        }
        try resolveNetdevs(&c, monitors)
    }

    /// `-netdev vhost-user,chardev=` takes its socket from the `-chardev`, as vhost-user-blk-pci does.
    func resolveNetdevs(_ c: inout MachineConfiguration, _ monitors: MonitorOptions) throws {
        for i in c.netdevs.indices {
            guard case .vhostUser(var v) = c.netdevs[i].backend else { continue }
            let what = "-netdev vhost-user,id=\(c.netdevs[i].id),chardev=\(v.chardev)"
            guard let d = monitors.chardev(v.chardev) else { throw ConfigurationErrorText("\(what): no -chardev with id=\(v.chardev)") }
            guard case .unixSocket(let path) = d.backend else { throw ConfigurationErrorText("\(what): vhost-user needs a unix socket chardev") }
            guard !monitors.monitorUses(v.chardev) else { throw ConfigurationErrorText("\(what): the chardev is already used by a -mon") }
            v.path = path
            v.server = d.server
            v.reconnectSeconds = d.reconnect
            c.netdevs[i].backend = .vhostUser(v)
        }
    }

    static func parseDevice(_ o: inout OptionList, _ value: String, into c: inout MachineConfiguration) throws {
        guard let chardev = o.take("chardev") else { throw ConfigurationErrorText("-device \(value): chardev= is required") }
        var v = VhostUserBlockConfiguration(chardev: chardev)
        if let n = o.take("num-queues") { v.queueCount = Int(try KeelCommandLine.checked(n, max: 64, "-device", "num-queues")) }
        if let s = o.take("queue-size") {
            let q = try KeelCommandLine.checked(s, max: 1024, "-device", "queue-size")
            guard q >= 4, q.nonzeroBitCount == 1 else { throw ConfigurationErrorText("-device \(value): queue-size=\(s) is not a power of two from 4 to 1024") }
            v.queueSize = UInt16(q)
        }
        _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr"); _ = o.take("bootindex")
        try o.rejectUnused(value)
        c.pciDevices.append(.vhostUserBlock(v))
    }
}
