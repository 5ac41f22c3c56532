import CKeel
import Glibc

/// `-serial file:PATH`: guest output appended to a file created (or truncated) at open.
/// There is never any input.
public final class FileChardev: Chardev {
    public weak var frontend: ChardevFrontend?
    private var fd: Int32

    public init(path: String, option: String = "-serial") throws {
        let f = ckeel_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
        guard f >= 0 else {
            throw ChardevError("\(option) file:\(path): cannot open: \(String(cString: strerror(errno)))")
        }
        fd = f
    }

    deinit { close() }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard fd >= 0 else { return }
        writeAll(fd: fd, bytes)
    }

    public func frontendCanReceive() {}

    public func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
    }
}
