import Machine

/// `-device virtio-scsi-pci,id=scsi0[,num_queues=N][,iothread=]` and
/// `-device scsi-hd,drive=d0[,bus=scsi0.0][,scsi-id=][,lun=][,serial=]`, as QEMU spells them.
enum SCSICommandLine {
    static let deviceTypes = ["virtio-scsi-pci", "scsi-hd", "vhost-user-scsi-pci"]

    /// Returns false if `driver` is not one of the SCSI device types.
    static func parseDevice(_ driver: String, _ o: inout OptionList, _ value: String, into c: inout MachineConfiguration) throws -> Bool {
        switch driver {
        case "virtio-scsi-pci", "virtio-scsi":
            let count = c.pciDevices.reduce(0) { if case .virtioSCSI = $1 { return $0 + 1 } else { return $0 } }
            var s = VirtioSCSIConfiguration(id: o.take("id") ?? "scsi\(count)")
            if let n = o.take("num_queues") ?? o.take("num-queues") {
                s.queueCount = Int(try KeelCommandLine.checked(n, max: 64, "-device", "num_queues"))
            }
            if let q = o.take("virtqueue_size") ?? o.take("queue-size") {
                let v = try KeelCommandLine.checked(q, max: 1024, "-device", "virtqueue_size")
                guard v >= 4, v.nonzeroBitCount == 1 else { throw ConfigurationErrorText("-device \(value): virtqueue_size=\(q) is not a power of two from 4 to 1024") }
                s.queueSize = UInt16(v)
            }
            s.iothread = o.take("iothread")
            if let e = try o.takeBool("ioeventfd") { s.ioeventfd = e }
            _ = o.take("bus"); _ = o.take("addr"); _ = o.take("max_sectors"); _ = o.take("cmd_per_lun")
            try o.rejectUnused(value)
            guard !c.pciDevices.contains(where: { if case .virtioSCSI(let x) = $0 { return x.id == s.id } else { return false } }) else {
                throw ConfigurationErrorText("-device \(value): id=\(s.id) is already used by another virtio-scsi-pci")
            }
            c.pciDevices.append(.virtioSCSI(s))
        case "scsi-hd":
            guard let drive = o.take("drive") else { throw ConfigurationErrorText("-device \(value): drive= is required") }
            var d = VirtioSCSIConfiguration.Disk(drive: drive)
            if let t = o.take("scsi-id") { d.target = Int(try KeelCommandLine.checked(t, max: 255, "-device", "scsi-id")) }
            if let l = o.take("lun") { d.lun = Int(try KeelCommandLine.checked(l, max: 16383, "-device", "lun")) }
            if let s = o.take("serial") {
                guard s.utf8.count <= 36 else { throw ConfigurationErrorText("-device \(value): serial=\(s) is longer than 36 bytes") }
                d.serial = s
            }
            let bus = o.take("bus")
            _ = o.take("id"); _ = o.take("channel"); _ = o.take("bootindex")
            try o.rejectUnused(value)
            // bus=<controller id>.0; without it QEMU takes the most recent SCSI bus.
            let index = c.pciDevices.lastIndex { dev in
                guard case .virtioSCSI(let s) = dev else { return false }
                return bus == nil || bus == "\(s.id).0"
            }
            guard let index, case .virtioSCSI(var s) = c.pciDevices[index] else {
                throw ConfigurationErrorText(bus.map { "-device \(value): no SCSI bus \($0) (a virtio-scsi-pci with id=\($0.split(separator: ".").first ?? "") before it)" }
                                             ?? "-device \(value): no virtio-scsi-pci before it to attach to")
            }
            s.disks.append(d)
            c.pciDevices[index] = .virtioSCSI(s)
        case "vhost-user-scsi-pci", "vhost-user-scsi":
            guard let chardev = o.take("chardev") else { throw ConfigurationErrorText("-device \(value): chardev= is required") }
            var v = VhostUserBlockConfiguration(chardev: chardev)
            if let n = o.take("num_queues") ?? o.take("num-queues") {
                v.queueCount = Int(try KeelCommandLine.checked(n, max: 64, "-device", "num_queues"))
            }
            if let q = o.take("virtqueue_size") ?? o.take("queue-size") {
                let s = try KeelCommandLine.checked(q, max: 1024, "-device", "virtqueue_size")
                guard s >= 4, s.nonzeroBitCount == 1 else { throw ConfigurationErrorText("-device \(value): virtqueue_size=\(q) is not a power of two from 4 to 1024") }
                v.queueSize = UInt16(s)
            }
            _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr"); _ = o.take("bootindex")
            try o.rejectUnused(value)
            c.pciDevices.append(.vhostUserSCSI(v))
        default:
            return false
        }
        return true
    }

    static func checkIOThreads(_ c: MachineConfiguration, _ iothreads: [String]) throws {
        for case .virtioSCSI(let s) in c.pciDevices {
            if let t = s.iothread, !iothreads.contains(t) {
                throw ConfigurationErrorText("-device virtio-scsi-pci,iothread=\(t): no -object iothread,id=\(t)")
            }
        }
    }
}
