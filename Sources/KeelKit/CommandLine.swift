import Devices
import Machine

/// What the command line asks for.
public enum CommandLineRequest {
    case run(MachineConfiguration)
    case help
    case version
    case listMachines
    case listDevices
}

/// The qemu-system-x86_64 command line, for the subset Keel implements. Options are spelled as
/// QEMU spells them (`-m 512`, `--m 512` too); a value is always the next argument.
public enum KeelCommandLine {
    public static let version = "0.1.0"

    /// Options that take a value, and those that don't.
    static let valued: Set<String> = ["accel", "m", "smp", "kernel", "initrd", "append", "serial", "display",
                                      "device", "name", "machine", "M", "cpu",
                                      "qmp", "qmp-pretty", "monitor", "chardev", "mon", "drive", "object", "netdev", "nic", "numa"]
    static let flags: Set<String> = ["S", "enable-kvm", "nographic", "no-reboot", "nodefaults", "h", "help", "version"]

    /// Machine type names QEMU users write; all of them mean Keel's one x86-64 PC board.
    static let machineTypes = ["pc", "q35", "microvm"]
    static let deviceTypes = ["isa-debug-exit", "pc-testdev"]

    public static func parse(_ args: [String]) throws -> CommandLineRequest {
        var c = MachineConfiguration()
        var serials: [ChardevSpec] = []
        var nographic = false
        var nodefaults = false
        var monitors = MonitorOptions()
        var firstSerialMuxed = false
        var iothreads: [String] = []
        var vhost = VhostCommandLine()
        var i = 0
        while i < args.count {
            let raw = args[i]
            guard raw.hasPrefix("-"), raw.count > 1 else {
                throw ConfigurationErrorText("\(raw): unexpected argument (options start with '-'; see -help)")
            }
            let name = raw.hasPrefix("--") ? String(raw.dropFirst(2)) : String(raw.dropFirst())
            i += 1
            if flags.contains(name) {
                switch name {
                case "h", "help": return .help
                case "version": return .version
                case "enable-kvm": c.accelerator = .kvm
                case "nographic": nographic = true
                case "no-reboot": c.noReboot = true
                case "nodefaults": nodefaults = true
                case "S": c.startPaused = true
                default: break
                }
                continue
            }
            guard valued.contains(name) else { throw ConfigurationErrorText("\(raw): unknown option (see -help)") }
            guard i < args.count else { throw ConfigurationErrorText("\(raw): requires an argument") }
            let value = args[i]
            i += 1
            let opt = "-" + name
            switch name {
            case "accel":
                var o = try OptionList(option: opt, value, impliedKey: "accel")
                if o.implied == "help" { return .help }
                c.accelerator = try accelerator(o.implied ?? "", option: opt)
                _ = o.take("thread")
                try o.rejectUnused(value)
            case "m":
                var o = try OptionList(option: opt, value, impliedKey: "size")
                guard let s = o.implied else { throw ConfigurationErrorText("-m \(value): no size given") }
                c.memorySize = try parseSize(s, defaultUnit: 1 << 20, option: opt)
                vhost.memorySizeGiven = true
                _ = o.take("slots"); _ = o.take("maxmem")
                try o.rejectUnused(value)
            case "smp":
                var o = try OptionList(option: opt, value, impliedKey: "cpus")
                var n: UInt64?
                if let s = o.implied { n = try parseInteger(s, option: opt, key: "cpus") }
                let topology = try ["sockets", "cores", "threads", "dies"].compactMap { k in
                    try o.take(k).map { try parseInteger($0, option: opt, key: k) }
                }
                if n == nil, !topology.isEmpty { n = topology.reduce(1, *) }
                if let m = o.take("maxcpus"), try parseInteger(m, option: opt, key: "maxcpus") != (n ?? 0) {
                    throw ConfigurationErrorText("-smp \(value): CPU hotplug (maxcpus) is not supported")
                }
                try o.rejectUnused(value)
                guard let count = n, count <= UInt64(Int32.max) else { throw ConfigurationErrorText("-smp \(value): not a CPU count") }
                c.cpuCount = Int(count)
            case "kernel": c.kernelPath = value
            case "initrd": c.initrdPath = value
            case "append": c.commandLine = value
            case "serial":
                let (spec, mon) = try ChardevSpec.parseSerialWithMonitor(value)
                if serials.isEmpty { firstSerialMuxed = mon && spec == .stdio }
                serials.append(spec)
            case "qmp", "qmp-pretty":
                try monitors.addLegacy(option: opt, value, mode: .control, pretty: name == "qmp-pretty")
            case "monitor":
                try monitors.addLegacy(option: opt, value, mode: .readline, pretty: false)
            case "chardev":
                try monitors.addChardev(value)
            case "mon":
                try monitors.addMon(value)
            case "display":
                let o = try OptionList(option: opt, value, impliedKey: "type")
                guard o.implied == "none" else {
                    throw ConfigurationErrorText("-display \(value): Keel has no graphical display; use -display none or -nographic")
                }
            case "device":
                var o = try OptionList(option: opt, value, impliedKey: "driver")
                switch o.implied ?? "" {
                case "help": return .listDevices
                case "isa-debug-exit":
                    var d = MachineConfiguration.DebugExitDevice()
                    if let b = o.take("iobase") { d.ioBase = UInt16(truncatingIfNeeded: try checked(b, max: 0xFFFF, opt, "iobase")) }
                    if let s = o.take("iosize") { d.ioSize = UInt16(truncatingIfNeeded: try checked(s, max: 8, opt, "iosize")) }
                    _ = o.take("id")
                    try o.rejectUnused(value)
                    c.debugExit = d
                case "pc-testdev":
                    _ = o.take("id")
                    try o.rejectUnused(value)
                    c.testDevice = true
                case let driver where try VirtioCommandLine.parseDevice(driver, &o, value, into: &c):
                    break
                case let driver where try NetCommandLine.parseDevice(driver, &o, value, into: &c):
                    break
                default:
                    throw ConfigurationErrorText("-device \(value): unknown device type '\(o.implied ?? "")' (see -device help)")
                }
            case "drive": try VirtioCommandLine.parseDrive(value, into: &c)
            case "object": try VirtioCommandLine.parseObject(value, iothreads: &iothreads, iothreadPolling: &c.iothreadPolling, vhost: &vhost)
            case "netdev": try NetCommandLine.parseNetdev(value, into: &c)
            case "nic": try NetCommandLine.parseNic(value, into: &c)
            case "numa": try vhost.parseNUMA(value)
            case "name":
                var o = try OptionList(option: opt, value, impliedKey: "guest")
                c.name = o.implied
                _ = o.take("debug-threads"); _ = o.take("process")
                try o.rejectUnused(value)
            case "machine", "M":
                var o = try OptionList(option: opt, value, impliedKey: "type")
                if let t = o.implied {
                    if t == "help" { return .listMachines }
                    guard isKnownMachine(t) else {
                        throw ConfigurationErrorText("\(opt) \(value): unsupported machine type '\(t)' (Keel's PC board answers to: \(machineTypes.joined(separator: ", ")); see -machine help)")
                    }
                    // As QEMU: microvm splits the irqchip by default, pc and q35 keep it in the kernel.
                    c.interruptChip = t == "microvm" ? .split : .inKernel
                }
                if let a = o.take("accel") { c.accelerator = try accelerator(a, option: opt) }
                if let m = o.take("memory-backend") { vhost.machineBackend = m }
                if let k = o.take("kernel-irqchip") {
                    switch k {
                    case "on", "yes", "true": c.interruptChip = .inKernel
                    case "split": c.interruptChip = .split
                    case "off", "no", "false":
                        throw ConfigurationErrorText("\(opt) kernel-irqchip=\(k): Keel's kvm accelerator needs the local APICs in the kernel (on or split)")
                    default: throw ConfigurationErrorText("\(opt) kernel-irqchip=\(k): expected on, split or off")
                    }
                }
                // Firmware and legacy-hardware knobs that mean nothing without firmware.
                for k in ["x-option-roms", "pit", "pic", "rtc", "isa-serial", "acpi", "i8042", "usb", "vmport", "smm", "graphics", "sata", "hpet"] { _ = o.take(k) }
                try o.rejectUnused(value)
            case "cpu":
                let o = try OptionList(option: opt, value, impliedKey: "model")
                guard ["host", "max"].contains(o.implied ?? "") else {
                    throw ConfigurationErrorText("-cpu \(value): Keel offers only its own model, named host or max")
                }
            default:
                throw ConfigurationErrorText("\(raw): unknown option (see -help)")
            }
        }
        // QEMU always has COM1 unless -nodefaults: on the terminal with -nographic, otherwise on its
        // graphical console — which Keel does not have, so its output goes nowhere.
        if serials.isEmpty && !nodefaults { serials = [nographic ? .stdio : .null] }
        c.stdioMux = (nographic && serials.first == .stdio) || firstSerialMuxed
        c.serialPorts = serials
        c.monitors = try monitors.resolve(serialOnStdio: serials.contains(.stdio))
        try VirtioCommandLine.checkIOThreads(c, iothreads)
        NetCommandLine.assignDefaultMACs(&c)
        try VirtioCommandLine.resolveConsoles(&c, monitors, serialOnStdio: serials.contains(.stdio))
        try vhost.resolve(&c, monitors)
        return .run(c)
    }

    static func isKnownMachine(_ t: String) -> Bool {
        machineTypes.contains(t) || t.hasPrefix("pc-i440fx-") || t.hasPrefix("pc-q35-") || t == "x-keel-pc"
    }

    static func accelerator(_ s: String, option: String) throws -> MachineConfiguration.Accelerator {
        // QEMU accepts a fallback list ("kvm:tcg"); Keel takes the first it knows.
        for name in s.split(separator: ":") {
            if let a = MachineConfiguration.Accelerator(rawValue: String(name)) { return a }
        }
        throw ConfigurationErrorText("\(option) \(s): unknown accelerator (kvm or tcg)")
    }

    static func checked(_ s: String, max: UInt64, _ opt: String, _ key: String) throws -> UInt64 {
        let v = try parseInteger(s, option: opt, key: key)
        guard v <= max else { throw ConfigurationErrorText("\(opt): \(key)=\(s): out of range (at most 0x\(String(max, radix: 16)))") }
        return v
    }

    public static let helpText = """
    usage: keel [options]
    Keel \(version), a machine emulator and virtualizer with qemu-system-x86_64's command line.

    Machine:
      -machine|-M TYPE[,accel=kvm|tcg][,kernel-irqchip=on|split]
                                          pc, q35, microvm (Keel's x86-64 PC board; microvm splits the
                                          irqchip: IOAPIC and PIT in Keel, no 8259s); -machine help
      -accel kvm|tcg                      accelerator (default tcg, as QEMU); -enable-kvm means -accel kvm
      -cpu host|max                       Keel's CPU model
      -m SIZE                             guest RAM (default 128M; suffixes K, M, G, T; a bare number is MiB)
      -smp N[,sockets=,cores=,threads=]   number of vCPUs
      -name NAME                          the guest's name
      -no-reboot                          exit instead of rebooting
      -S                                  do not start the CPUs until the monitor's cont
      -nodefaults                         no default devices (no serial port with -nographic)

    Boot:
      -kernel FILE                        a Linux bzImage or a PVH ELF (e.g. vmlinux)
      -initrd FILE                        initial ramdisk
      -append CMDLINE                     kernel command line

    Devices and I/O:
      -serial DEV                         COM1..COM4 in order: stdio, mon:stdio, file:PATH,
                                          unix:PATH[,server=on[,wait=off]], null, none
      -nographic                          serial port on the terminal; Ctrl-A h lists the escape keys
      -display none                       no display (Keel has none)
      -device isa-debug-exit[,iobase=0xf4,iosize=0x04]
      -device pc-testdev
      -drive file=FILE[,if=virtio|none][,id=ID][,format=raw][,readonly=on][,cache=][,aio=]
      -device virtio-blk-pci,drive=ID[,num-queues=N][,serial=S][,iothread=ID][,ioeventfd=on|off]
      -device virtio-rng-pci
      -device virtio-serial-pci -device virtconsole,chardev=ID
      -object iothread,id=ID
      -netdev tap,id=ID[,ifname=NAME][,script=no,downscript=no][,fd=N|fds=N:M][,queues=N][,vnet_hdr=on|off]
                 [,vhost=on[,vhostfd=N]]  the frames moved by the host's /dev/vhost-net (1 queue pair)
      -netdev user,id=ID[,net=ADDR/MASK][,host=][,dns=][,hostfwd=tcp::HOSTPORT-:GUESTPORT][,restrict=on|off]
      -netdev socket,id=ID,listen=[HOST]:PORT|connect=HOST:PORT
      -netdev stream,id=ID,server=on|off,addr.type=inet,addr.host=H,addr.port=P (or addr.type=unix,addr.path=)
      -netdev dgram,id=ID,local.type=inet,local.host=,local.port=,remote.type=inet,remote.host=,remote.port=
      -device virtio-net-pci,netdev=ID[,mac=52:54:00:12:34:56][,mq=on][,vectors=N]
      -nic TYPE[,model=virtio-net-pci][,mac=][,TYPE's -netdev options]
      -object memory-backend-memfd,id=ID,size=SIZE,share=on  with -machine memory-backend=ID
                                          (or -numa node,memdev=ID): RAM other processes may map
      -chardev socket,id=ID,path=PATH[,server=on[,wait=off]][,reconnect=SECONDS]
      -device vhost-user-blk-pci,chardev=ID[,num-queues=N][,queue-size=N]
                                          virtio-blk served by a vhost-user back-end
                                          (e.g. keel vhost-user-blk --socket-path=PATH --blk-file=FILE)
      -device virtio-scsi-pci,id=ID[,num_queues=N]  with
      -device scsi-hd,drive=ID[,bus=ID.0][,scsi-id=N][,lun=N][,serial=S]  (its -drive if=none)
      -device vhost-user-scsi-pci,chardev=ID[,num_queues=N]
                                          virtio-scsi served by a vhost-user back-end
                                          (e.g. keel vhost-user-scsi --socket-path=PATH --blk-file=FILE)
      -device vhost-vsock-pci,guest-cid=N[,vhostfd=N]
                                          AF_VSOCK to the guest's CID (3 or more) by /dev/vhost-vsock
      -device help                        list devices

    Monitors:
      -qmp DEV, -qmp-pretty DEV           QMP on DEV: stdio, unix:PATH,server=on[,wait=off],
                                          tcp:[HOST]:PORT,server=on[,wait=off] (several clients at once)
      -monitor DEV                        the human monitor on DEV (same devices; none for none)
      -chardev socket,id=ID,path=PATH|host=HOST,port=PORT,server=on[,wait=off]
      -chardev stdio,id=ID
      -mon chardev=ID[,mode=control|readline][,pretty=on]
                                          with -nographic or -serial mon:stdio, Ctrl-A c switches
                                          between the console and the human monitor

      -h, -help, --help                   this text
      -version, --version                 Keel's version
    """

    public static let machineList = """
    Supported machines are:
    pc                   Keel x86-64 PC board (no firmware; direct kernel boot)
    q35                  Keel x86-64 PC board (alias)
    microvm              Keel x86-64 PC board (alias)
    """

    public static let deviceList = """
    Devices Keel offers:
    name "isa-debug-exit", bus ISA, desc "exit with status (value << 1) | 1 on a write"
    name "pc-testdev", bus ISA, desc "QEMU's PC test device (port 0xe0 and MMIO readback)"
    name "virtio-blk-pci", bus PCI, desc "virtio block device (modern)"
    name "vhost-user-blk-pci", bus PCI, desc "virtio block device served by a vhost-user back-end, chardev=ID"
    name "virtio-rng-pci", bus PCI, desc "virtio entropy source (modern)"
    name "virtio-net-pci", bus PCI, desc "virtio network device (modern), netdev=ID"
    name "virtio-serial-pci", bus PCI, desc "virtio serial controller (modern), ports from virtconsole"
    name "virtconsole", bus virtio-serial-bus, desc "console port (hvc) on the last virtio-serial-pci, chardev=ID"
    name "virtio-scsi-pci", bus PCI, desc "virtio SCSI host adapter (modern), id=ID gives bus ID.0"
    name "vhost-user-scsi-pci", bus PCI, desc "virtio SCSI host adapter served by a vhost-user back-end, chardev=ID"
    name "vhost-vsock-pci", bus PCI, desc "virtio vsock served by the host's /dev/vhost-vsock, guest-cid=N"
    name "scsi-hd", bus SCSI, desc "SCSI disk on a virtio-scsi bus, drive=ID[,scsi-id=][,lun=][,serial=]"
    """
}
