/// A monitor the host attaches to the machine (`-qmp`, `-monitor`, `-mon chardev=`): which
/// protocol it speaks and where it listens. The Monitor target serves it.
public struct MonitorSpec: Sendable, Equatable {
    public enum Mode: String, Sendable {
        /// QMP (`mode=control`).
        case control
        /// The human monitor (`mode=readline`).
        case readline
    }

    public enum Backend: Sendable, Equatable, CustomStringConvertible {
        case stdio
        /// A listening unix socket at `path`.
        case unixSocket(path: String)
        /// A listening TCP socket; `host` is a name or address ("" means every address).
        case tcpSocket(host: String, port: UInt16)

        /// QEMU's chardev filename form (query-chardev).
        public var description: String {
            switch self {
            case .stdio: return "stdio"
            case .unixSocket(let p): return "unix:\(p),server=on"
            case .tcpSocket(let h, let port): return "tcp:\(h):\(port),server=on"
            }
        }
    }

    public var mode: Mode
    public var backend: Backend
    /// Block startup until the first client connects (server sockets; QEMU's wait=on).
    public var wait: Bool
    /// Pretty-printed JSON (QMP only).
    public var pretty: Bool
    /// The chardev's id (query-chardev label).
    public var label: String

    public init(mode: Mode, backend: Backend, wait: Bool = false, pretty: Bool = false, label: String) {
        self.mode = mode
        self.backend = backend
        self.wait = wait
        self.pretty = pretty
        self.label = label
    }
}
