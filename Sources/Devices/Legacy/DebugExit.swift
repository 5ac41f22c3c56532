/// QEMU's isa-debug-exit: a guest write of value v (any width) ends the emulator with status
/// (v << 1) | 1, so a test guest can report success or failure; status 1 can only mean v = 0.
/// Reads return 0. QEMU's default placement is iobase 0xf4, iosize 4.
public final class DebugExit: BusDevice {
    public static let defaultBase: UInt64 = 0xF4
    public static let defaultSize: UInt64 = 4

    private let onExit: (Int32) -> Void

    /// `onExit` receives the status QEMU would pass to exit(); the caller decides how to stop.
    public init(onExit: @escaping (Int32) -> Void) {
        self.onExit = onExit
    }

    /// The exit status for a written value (truncated to a C int, as QEMU's exit() argument).
    public static func status(forWrittenValue v: UInt64) -> Int32 {
        Int32(truncatingIfNeeded: (v << 1) | 1)
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        onExit(Self.status(forWrittenValue: data.littleEndianValue))
    }
}
