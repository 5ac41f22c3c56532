/// The Ctrl-A escape keys of QEMU's multiplexed console (`-nographic`, `mon:stdio`),
/// applied to host input before it reaches the frontend.
///
/// As in QEMU's char-mux.c: C-a C-a sends one C-a; C-a followed by a key Keel does not
/// implement is swallowed (both bytes), as QEMU swallows unknown escapes.
public struct MuxEscape {
    public static let escapeByte: UInt8 = 0x01 // Ctrl-A

    public enum Action: Equatable {
        /// C-a x: the user asked to quit.
        case quit
        /// C-a h (or C-a ?): print `helpText`.
        case help
        /// C-a c: switch input between the frontend and the monitor.
        case monitor
    }

    public static let helpText =
        "\r\n" +
        "C-a h    print this help\r\n" +
        "C-a x    exit emulator\r\n" +
        "C-a c    switch between console and monitor\r\n" +
        "C-a C-a  sends C-a\r\n"
    public static let terminatedText = "keel: Terminated\r\n"
    /// For a muxed chardev that has no monitor attached.
    public static let noMonitorText = "\r\nkeel: no monitor on this console\r\n"

    private var gotEscape = false

    public init() {}

    /// Filters `input`: bytes for the frontend are appended to `output`; escape commands are
    /// reported to `action` in order. Stops after `.quit` (the rest of the input is dropped).
    public mutating func process(_ input: UnsafeRawBufferPointer, into output: inout [UInt8],
                                 action: (Action) -> Void) {
        for byte in input {
            if gotEscape {
                gotEscape = false
                switch byte {
                case Self.escapeByte: output.append(byte)
                case UInt8(ascii: "h"), UInt8(ascii: "?"): action(.help)
                case UInt8(ascii: "x"):
                    action(.quit)
                    return
                case UInt8(ascii: "c"): action(.monitor)
                default: break
                }
            } else if byte == Self.escapeByte {
                gotEscape = true
            } else {
                output.append(byte)
            }
        }
    }
}
