import Glibc
import Machine

/// vhost-kernel on the command line: `-netdev tap,vhost=on[,vhostfd=N]` (vhost-net) and
/// `-device vhost-vsock-pci,guest-cid=N[,vhostfd=N]`. Without an fd handed over, a host that
/// lacks the device node is told so at parse time, in one line.
enum VhostKernel {
    /// The refusal for a missing node, or nil when `device` exists (opening it may still fail:
    /// that error comes when the machine is built, with the errno text).
    static func unavailable(device: String, option: String) -> String? {
        access(device, F_OK) == 0 ? nil : "\(option): \(device) is not available on this host"
    }

    /// `vhost=`, `vhostfd=`, `vhostfds=`, `vhostforce=` of a tap (QEMU: any of vhost=on, an fd
    /// or vhostforce=on turns vhost on).
    static func parseTapOptions(_ o: inout OptionList, _ t: inout TapNetdevConfiguration, option: String) throws {
        let vhost = try o.takeBool("vhost")
        if let fd = o.take("vhostfd") { t.vhostFDs = [try NetCommandLine.parseFD(fd, option: option, key: "vhostfd")] }
        if let fds = o.take("vhostfds") {
            t.vhostFDs = try fds.split(separator: ":", omittingEmptySubsequences: false).map {
                try NetCommandLine.parseFD(String($0), option: option, key: "vhostfds")
            }
        }
        let force = try o.takeBool("vhostforce") ?? false
        t.vhost = vhost ?? (!t.vhostFDs.isEmpty || force)
        guard t.vhost else { return }
        if t.vhostFDs.isEmpty, let why = unavailable(device: VhostKernelPaths.net, option: "\(option) tap,vhost=on") {
            throw ConfigurationErrorText(why)
        }
    }

    /// `-device vhost-vsock-pci,guest-cid=N[,vhostfd=N]`.
    static func parseVsock(_ o: inout OptionList, _ value: String, into c: inout MachineConfiguration) throws {
        let option = "-device vhost-vsock-pci"
        guard let text = o.take("guest-cid") else { throw ConfigurationErrorText("\(option): guest-cid= is required (3 or more)") }
        guard let cid = UInt64(text) else { throw ConfigurationErrorText("\(option): guest-cid=\(text): not a number") }
        if let why = VhostVsockConfiguration.guestCIDProblem(cid) { throw ConfigurationErrorText("\(option): \(why)") }
        var v = VhostVsockConfiguration(guestCID: cid)
        if let fd = o.take("vhostfd") { v.vhostFD = try NetCommandLine.parseFD(fd, option: option, key: "vhostfd") }
        _ = o.take("id"); _ = o.take("bus"); _ = o.take("addr")
        try o.rejectUnused(value)
        if v.vhostFD == nil, let why = unavailable(device: VhostKernelPaths.vsock, option: option) { throw ConfigurationErrorText(why) }
        c.pciDevices.append(.vhostVsock(v))
    }
}
