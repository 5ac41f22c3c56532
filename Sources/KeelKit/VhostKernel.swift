import Glibc

/// vhost-kernel (`-netdev tap,vhost=on`, `-device vhost-vsock-pci`): the data path is Linux's
/// vhost-net / vhost-vsock. Keel does not drive them yet, so both are refused at parse time with
/// one line saying why (the device node missing, as on hosts without the modules, or the data
/// path not implemented).
enum VhostKernel {
    static let netDevice = "/dev/vhost-net"
    static let vsockDevice = "/dev/vhost-vsock"

    static func unavailable(device: String, option: String) -> String {
        if access(device, F_OK) != 0 { return "\(option): \(device) is not available on this host" }
        return "\(option): \(device) exists but Keel's vhost-kernel data path is not implemented"
    }
}
