/// A JSON text could not be parsed; the description is QEMU's wording where it has one.
public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

/// A strict, bounded JSON parser (RFC 8259) with QEMU's one extension: strings may also be
/// single-quoted. Nesting deeper than `maxDepth` fails instead of recursing further, so a hostile
/// client cannot exhaust the stack; invalid UTF-8 and lone surrogates fail too.
public struct JSONParser {
    public static let defaultMaxDepth = 1024

    private let bytes: [UInt8]
    private var i = 0
    private let maxDepth: Int

    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws -> JSON {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws -> JSON {
        var p = JSONParser(bytes: bytes, maxDepth: maxDepth)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.i == bytes.count else { throw JSONParseError("JSON parse error, trailing characters after value") }
        return v
    }

    private init(bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    private var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipWhitespace() {
        while let c = peek, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 }
    }

    private mutating func value(depth: Int) throws -> JSON {
        guard let c = peek else { throw JSONParseError("JSON parse error, expecting value") }
        switch c {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            guard depth < maxDepth else { throw JSONParseError("JSON nesting depth limit exceeded") }
            return c == UInt8(ascii: "{") ? try object(depth: depth + 1) : try array(depth: depth + 1)
        case UInt8(ascii: "\""), UInt8(ascii: "'"): return .string(try string())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default:
            if let k = keyword() { return k }
            if isKeywordByte(c) {
                let start = i
                while let d = peek, isKeywordByte(d), i - start < 64 { i += 1 }
                throw JSONParseError("JSON parse error, invalid keyword '\(String(decoding: bytes[start..<i], as: UTF8.self))'")
            }
            if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") || c == UInt8(ascii: ",") || c == UInt8(ascii: ":") {
                throw JSONParseError("JSON parse error, expecting value")
            }
            throw JSONParseError("JSON parse error, stray '\(Self.printable(c))'")
        }
    }

    private func isKeywordByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
    }

    static func printable(_ c: UInt8) -> String {
        c >= 0x20 && c < 0x7F ? String(UnicodeScalar(c)) : "\\x" + String(c, radix: 16)
    }

    private mutating func keyword() -> JSON? {
        for (word, v) in [("true", JSON.bool(true)), ("false", .bool(false)), ("null", .null)] {
            let w = Array(word.utf8)
            guard bytes.count - i >= w.count, bytes[i..<(i + w.count)].elementsEqual(w) else { continue }
            let after = i + w.count
            if after < bytes.count, isKeywordByte(bytes[after]) { return nil }
            i = after
            return v
        }
        return nil
    }

    private mutating func object(depth: Int) throws -> JSON {
        i += 1
        var members: [(String, JSON)] = []
        skipWhitespace()
        if peek == UInt8(ascii: "}") { i += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard let c = peek, c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") else {
                throw JSONParseError("JSON parse error, key is not a string in object")
            }
            let key = try string()
            skipWhitespace()
            guard peek == UInt8(ascii: ":") else { throw JSONParseError("JSON parse error, missing : in object pair") }
            i += 1
            skipWhitespace()
            let v = try value(depth: depth)
            if members.contains(where: { $0.0 == key }) {
                throw JSONParseError("JSON parse error, duplicate key '\(key)'")
            }
            members.append((key, v))
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "}"): i += 1; return .object(members)
            default: throw JSONParseError("JSON parse error, expected separator in dict")
            }
        }
    }

    private mutating func array(depth: Int) throws -> JSON {
        i += 1
        var items: [JSON] = []
        skipWhitespace()
        if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try value(depth: depth))
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "]"): i += 1; return .array(items)
            default: throw JSONParseError("JSON parse error, expected separator in list")
            }
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard bytes.count - i >= 4 else { throw JSONParseError("JSON parse error, truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw JSONParseError("JSON parse error, invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private mutating func string() throws -> String {
        let quote = bytes[i]
        i += 1
        var raw: [UInt8] = []
        while true {
            guard let c = peek else { throw JSONParseError("JSON parse error, missing closing quote") }
            i += 1
            if c == quote { break }
            if c < 0x20 { throw JSONParseError("JSON parse error, control character in string") }
            guard c == UInt8(ascii: "\\") else { raw.append(c); continue }
            guard let e = peek else { throw JSONParseError("JSON parse error, missing closing quote") }
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "\\"), UInt8(ascii: "/"): raw.append(e)
            case UInt8(ascii: "b"): raw.append(0x08)
            case UInt8(ascii: "f"): raw.append(0x0C)
            case UInt8(ascii: "n"): raw.append(0x0A)
            case UInt8(ascii: "r"): raw.append(0x0D)
            case UInt8(ascii: "t"): raw.append(0x09)
            case UInt8(ascii: "u"):
                var cp = try hex4()
                if cp >= 0xD800 && cp < 0xDC00 {
                    guard bytes.count - i >= 2, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw JSONParseError("JSON parse error, missing low surrogate")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low < 0xE000 else { throw JSONParseError("JSON parse error, invalid low surrogate") }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                } else if cp >= 0xDC00 && cp < 0xE000 {
                    throw JSONParseError("JSON parse error, lone low surrogate")
                }
                guard let scalar = Unicode.Scalar(cp) else { throw JSONParseError("JSON parse error, invalid code point") }
                raw.append(contentsOf: Array(String(Character(scalar)).utf8))
            default:
                throw JSONParseError("JSON parse error, invalid escape sequence in string")
            }
        }
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw JSONParseError("JSON parse error, invalid UTF-8 sequence in string")
        }
        return s
    }

    private mutating func number() throws -> JSON {
        let start = i
        var isInteger = true
        func digits() -> Int {
            let s = i
            while let c = peek, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { i += 1 }
            return i - s
        }
        if peek == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        let n = digits()
        guard n > 0 else { throw JSONParseError("JSON parse error, invalid number") }
        if n > 1 && bytes[intStart] == UInt8(ascii: "0") { throw JSONParseError("JSON parse error, leading zero in number") }
        if peek == UInt8(ascii: ".") {
            isInteger = false
            i += 1
            guard digits() > 0 else { throw JSONParseError("JSON parse error, invalid number") }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            isInteger = false
            i += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw JSONParseError("JSON parse error, invalid number") }
        }
        if let c = peek, isKeywordByte(c) { throw JSONParseError("JSON parse error, invalid number") }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if isInteger, let v = Int64(text) { return .int(v) }
        // Too large for 64 bits, or not an integer: a double, as QEMU does.
        guard let d = Double(text) else { throw JSONParseError("JSON parse error, invalid number") }
        return .double(d)
    }
}
