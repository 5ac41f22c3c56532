import Devices

/// The flags of a `keel vhost-user-*` back-end, read as QEMU's contrib back-ends take them:
/// `--name=value` or `--name value`.
struct VhostUserBackendArguments {
    private let args: [String]
    private var i = 0

    init(_ args: [String]) { self.args = args }

    /// The next flag, or nil at the end.
    mutating func next() -> String? {
        guard i < args.count else { return nil }
        defer { i += 1 }
        return args[i]
    }

    /// `flag`'s value if it is `name` (or one of `names`), inline or as the following argument.
    mutating func value(_ flag: String, _ names: String...) throws -> String? {
        for name in names {
            if flag.hasPrefix(name + "=") { return String(flag.dropFirst(name.count + 1)) }
            guard flag == name else { continue }
            guard i < args.count else { throw VhostUserError("\(name) requires a value") }
            defer { i += 1 }
            return args[i]
        }
        return nil
    }
}
