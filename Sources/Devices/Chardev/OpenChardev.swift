import Loop

/// Opens the host side described by `spec`. `muxEscape` turns on QEMU's Ctrl-A console keys on
/// the input (C-a x calls `onQuit` on the loop's thread). `option` names the command-line option
/// in error messages, e.g. "-serial unix:/x: cannot connect: No such file or directory".
public func openChardev(_ spec: ChardevSpec, loop: EventLoop, muxEscape: Bool,
                        option: String = "-serial",
                        onQuit: @escaping () -> Void) throws -> Chardev {
    switch spec {
    case .stdio:
        return StdioChardev(loop: loop, muxEscape: muxEscape, onQuit: onQuit)
    case .file(let path):
        return try FileChardev(path: path, option: option)
    case .unixSocket(let path, let server, let wait):
        return try UnixSocketChardev(path: path, server: server, wait: wait, loop: loop,
                                     muxEscape: muxEscape, onQuit: onQuit, option: option)
    case .null, .disabled:
        return NullChardev()
    }
}
