/// Splits a byte stream into JSON texts, as QEMU's JSON streamer does for QMP input: a message
/// ends where its outermost brace or bracket closes (no newline needed), and several messages may
/// arrive in one read or one message across many. It only tracks strings and nesting; the parser
/// checks the rest.
///
/// Bounded: a message longer than `maxMessageSize` bytes or nested deeper than `maxDepth` is not
/// buffered any further; it is skipped to its end and reported as one error. Memory stays below
/// `maxMessageSize` per connection whatever the client sends.
public struct JSONStreamer {
    public enum Piece: Equatable {
        case message([UInt8])
        case error(String)
    }

    public static let defaultMaxMessageSize = 8 << 20

    public let maxMessageSize: Int
    public let maxDepth: Int

    private var buffer: [UInt8] = []
    private var depth = 0
    private var quote: UInt8 = 0       // nonzero inside a string: the quote that ends it
    private var escaped = false
    private var bare = false           // a top-level number/keyword/garbage token is being read
    private var overflow: String?      // the error to report when the current message ends

    public init(maxMessageSize: Int = defaultMaxMessageSize, maxDepth: Int = JSONParser.defaultMaxDepth) {
        self.maxMessageSize = maxMessageSize
        self.maxDepth = maxDepth
    }

    /// True while part of a message has been received.
    public var isMidMessage: Bool { depth > 0 || quote != 0 || bare || !buffer.isEmpty }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ emit: (Piece) -> Void) {
        for c in bytes { feed(c, emit) }
    }

    public mutating func feed(_ bytes: [UInt8], _ emit: (Piece) -> Void) {
        for c in bytes { feed(c, emit) }
    }

    private mutating func append(_ c: UInt8) {
        guard overflow == nil else { return }
        if buffer.count >= maxMessageSize {
            overflow = "JSON token size limit exceeded"
            buffer = []
            return
        }
        buffer.append(c)
    }

    private mutating func finish(_ emit: (Piece) -> Void) {
        if let e = overflow { emit(.error(e)) } else { emit(.message(buffer)) }
        buffer = []
        overflow = nil
        depth = 0
        bare = false
    }

    private static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
    private static func isStructural(_ c: UInt8) -> Bool {
        c == UInt8(ascii: "{") || c == UInt8(ascii: "}") || c == UInt8(ascii: "[") || c == UInt8(ascii: "]")
            || c == UInt8(ascii: "\"") || c == UInt8(ascii: "'")
    }

    private mutating func feed(_ c: UInt8, _ emit: (Piece) -> Void) {
        if quote != 0 {
            append(c)
            if escaped { escaped = false } else if c == UInt8(ascii: "\\") { escaped = true } else if c == quote {
                quote = 0
                if depth == 0 { finish(emit) }
            }
            return
        }
        if bare {
            if Self.isSpace(c) || Self.isStructural(c) || c == UInt8(ascii: ",") || c == UInt8(ascii: ":") {
                finish(emit)
                if Self.isSpace(c) { return }
            } else {
                append(c)
                return
            }
        }
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            quote = c
            append(c)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
            if depth > maxDepth && overflow == nil {
                overflow = "JSON nesting depth limit exceeded"
                buffer = []
            }
            append(c)
        case UInt8(ascii: "}"), UInt8(ascii: "]"):
            append(c)
            if depth <= 1 { finish(emit) } else { depth -= 1 }
        default:
            if depth > 0 {
                append(c)
            } else if !Self.isSpace(c) {
                bare = true
                append(c)
            }
        }
    }
}
