import CKeel
import Glibc
import Loop

/// `-serial stdio`: guest output to stdout, host input from stdin. When stdin is a terminal it is
/// put in raw mode (no echo, no line editing, no CR→LF mapping, as QEMU's stdio chardev does) and
/// restored by `close()` or by `StdioChardev.restoreTerminal()`, which the app calls on every
/// exit path (including fatal signals).
///
/// Ctrl-C: with the Ctrl-A escapes on (`-nographic`, `mon:stdio`) it goes to the guest and C-a x
/// quits; without them the terminal keeps ISIG, so Ctrl-C signals Keel.
///
/// Stdin is left blocking (setting O_NONBLOCK would also change stdout when both are the same
/// terminal); it is only read after epoll reports it readable, so reads do not block.
/// Stdout writes are blocking: a stdout nobody drains stalls the writing vCPU, as in QEMU.
public final class StdioChardev: MuxChardev {
    public weak var frontend: ChardevFrontend?
    private var mux = MuxFocus()
    public var monitorFrontend: ChardevFrontend? {
        get { mux.monitorFrontend }
        set { mux.monitorFrontend = newValue }
    }
    private var input: ChardevInput!
    private var closed = false

    private nonisolated(unsafe) static var savedTermios: termios?

    public init(loop: EventLoop, muxEscape: Bool, onQuit: @escaping () -> Void) {
        if isatty(0) != 0 { Self.enterRawMode(allowSignals: !muxEscape) }
        input = ChardevInput(
            loop: loop, muxEscape: muxEscape,
            frontend: { [weak self] in self.flatMap { $0.mux.current($0.frontend) } },
            onMuxAction: { [weak self] action in self?.handle(action, onQuit: onQuit) },
            onEndOfInput: {})
        // A stdin epoll cannot watch (/dev/null, a regular file: EPERM) gives no input, as
        // when it is at end of file; output still works.
        try? input.start(fd: 0)
    }

    deinit { close() }

    private func handle(_ action: MuxEscape.Action, onQuit: () -> Void) {
        switch action {
        case .help: writeText(MuxEscape.helpText)
        case .monitor: if !mux.toggle() { writeText(MuxEscape.noMonitorText) }
        case .quit:
            writeText(MuxEscape.terminatedText)
            onQuit()
        }
    }

    private func writeText(_ s: String) {
        var s = s
        s.withUTF8 { writeAll(fd: 1, UnsafeRawBufferPointer($0)) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard !closed else { return }
        writeAll(fd: 1, bytes)
    }

    public func frontendCanReceive() {
        guard !closed else { return }
        input.resume()
    }

    public func close() {
        guard !closed else { return }
        closed = true
        input.stop()
        Self.restoreTerminal()
    }

    private static func enterRawMode(allowSignals: Bool) {
        var tio = termios()
        guard tcgetattr(0, &tio) == 0 else { return }
        if savedTermios == nil { savedTermios = tio }
        tio.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
        tio.c_oflag |= tcflag_t(OPOST)
        tio.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | IEXTEN)
        if !allowSignals { tio.c_lflag &= ~tcflag_t(ISIG) }
        tio.c_cflag &= ~tcflag_t(CSIZE | PARENB)
        tio.c_cflag |= tcflag_t(CS8)
        withUnsafeMutableBytes(of: &tio.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        _ = tcsetattr(0, TCSANOW, &tio)
    }

    /// Puts stdin's terminal back as it was before Keel changed it. Safe to call more than once
    /// and when nothing was changed; uses only tcsetattr, so it may run in a signal handler.
    public static func restoreTerminal() {
        guard var tio = savedTermios else { return }
        _ = tcsetattr(0, TCSANOW, &tio)
    }
}
