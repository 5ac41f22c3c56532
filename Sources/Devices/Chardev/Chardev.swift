/// The device side of a character device (QEMU's CharFrontend): a UART, later a virtio console.
/// Called on the chardev's event loop with that loop's lock (the big lock) held.
public protocol ChardevFrontend: AnyObject {
    /// Bytes the frontend can accept now; 0 pauses the chardev's input until
    /// `Chardev.frontendCanReceive()` is called.
    func receiveCapacity() -> Int
    /// At most `receiveCapacity()` bytes of host input.
    func receive(_ bytes: UnsafeRawBufferPointer)
}

/// The host side of a character device (QEMU's Chardev): stdio, a file, a unix socket, nothing.
///
/// Threading: `write` and `frontendCanReceive` may be called from any thread that holds the big
/// lock (a vCPU emulating an access); input is read and delivered on the event loop the chardev
/// was opened on. Open a chardev before that loop runs or on its thread; `close` it on the loop's
/// thread or after the loop stopped.
public protocol Chardev: AnyObject {
    /// Held weakly: the frontend owns its chardev, not the reverse.
    var frontend: ChardevFrontend? { get set }
    /// Guest output. Never blocks the caller forever: a stalled socket peer loses output.
    func write(_ bytes: UnsafeRawBufferPointer)
    /// The frontend freed space: resume reading input if it was paused.
    func frontendCanReceive()
    /// Stops input, closes host resources (restoring the terminal for stdio). Idempotent.
    func close()
}

/// A chardev that could not be opened: the message names the option and the value.
public struct ChardevError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Input goes nowhere and output is discarded (`-serial null`, `-serial none`).
public final class NullChardev: Chardev {
    public weak var frontend: ChardevFrontend?
    public init() {}
    public func write(_ bytes: UnsafeRawBufferPointer) {}
    public func frontendCanReceive() {}
    public func close() {}
}

/// A chardev with QEMU's Ctrl-A multiplexer (`-nographic`, `mon:stdio`): C-a c switches its input
/// between the frontend (the UART) and a monitor. Output from both always goes out, as in QEMU.
public protocol MuxChardev: Chardev {
    /// The human monitor's side; held strongly (the monitor lives as long as the chardev).
    var monitorFrontend: ChardevFrontend? { get set }
}

/// A frontend that wants to know when the mux gives it the input focus (the monitor prints its
/// prompt then).
public protocol ChardevFocusObserver: AnyObject {
    func focusChanged(_ focused: Bool)
}

/// The focus state shared by the muxed chardevs.
struct MuxFocus {
    var monitorFrontend: ChardevFrontend?
    var monitorFocused = false

    func current(_ frontend: ChardevFrontend?) -> ChardevFrontend? {
        monitorFocused ? monitorFrontend : frontend
    }

    /// C-a c: returns false when no monitor is attached (the caller says so).
    mutating func toggle() -> Bool {
        guard let m = monitorFrontend else { return false }
        monitorFocused.toggle()
        (m as? ChardevFocusObserver)?.focusChanged(monitorFocused)
        return true
    }
}
