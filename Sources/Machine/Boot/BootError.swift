/// A host-side boot input (kernel, initrd, command line) Keel cannot use. The description is one
/// line naming the file and the problem, e.g. "kernel /boot/vmlinuz: truncated (...)".
public struct BootError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        case unreadable          // open/read failed, not a regular file
        case empty
        case notAKernel          // neither a bzImage header nor an ELF with a PVH note
        case truncated           // the file ends before something its header points to
        case malformed           // inconsistent header values
        case unsupported         // too old a boot protocol, no 64-bit entry, big-endian ELF, ...
        case placement           // a segment outside RAM or overlapping Keel's boot area
        case initrdTooLarge
        case commandLineTooLong
        case commandLineInvalid
    }

    public let kind: Kind
    /// What the problem is about: "kernel /path", "initrd /path", "command line".
    public let subject: String
    public let problem: String

    public init(_ kind: Kind, _ subject: String, _ problem: String) {
        self.kind = kind; self.subject = subject; self.problem = problem
    }

    public var description: String { "\(subject): \(problem)" }
}

@inline(__always)
func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16, uppercase: true) }
