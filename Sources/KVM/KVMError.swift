import Glibc

/// A failed KVM operation, naming the ioctl or capability involved.
public enum KVMError: Error, CustomStringConvertible {
    case unavailable(path: String, errno: Int32)
    case apiVersion(Int32)
    case missingCapability(String)
    case ioctl(String, errno: Int32)

    public var description: String {
        switch self {
        case .unavailable(let p, let e):
            return "cannot open \(p): \(String(cString: strerror(e)))" + (e == ENOENT ? " (no KVM on this host; use -accel tcg)" : "")
        case .apiVersion(let v): return "KVM API version \(v) is not the stable version 12"
        case .missingCapability(let c): return "KVM lacks the capability Keel needs: \(c)"
        case .ioctl(let n, let e): return "\(n): \(String(cString: strerror(e)))"
        }
    }
}

@inline(__always)
func check(_ r: Int32, _ name: @autoclosure () -> String) throws -> Int32 {
    if r < 0 { throw KVMError.ioctl(name(), errno: errno) }
    return r
}
