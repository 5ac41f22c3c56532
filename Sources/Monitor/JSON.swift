/// A JSON value as QMP uses it. Objects keep their members in order (QEMU's replies list members
/// in a fixed order, and tests read better that way); numbers are integers when written without a
/// fraction or exponent and fit in 64 bits, as in QEMU's JSON parser.
public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.double(let x), .double(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The member named `key` of an object (the last one, if repeated); nil otherwise.
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.last { $0.0 == key }?.1
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var intValue: Int64? { if case .int(let i) = self { return i } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectMembers: [(String, JSON)]? { if case .object(let m) = self { return m } else { return nil } }

    /// QAPI's name for the type of this value, as QEMU's error messages say it.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral {
    public init(stringLiteral s: String) { self = .string(s) }
    public init(integerLiteral i: Int64) { self = .int(i) }
    public init(booleanLiteral b: Bool) { self = .bool(b) }
    public init(arrayLiteral a: JSON...) { self = .array(a) }
    public init(dictionaryLiteral m: (String, JSON)...) { self = .object(m) }
    public init(nilLiteral: ()) { self = .null }
}

extension JSON {
    public static func int<T: BinaryInteger>(_ v: T) -> JSON { .int(Int64(clamping: v)) }

    /// Compact JSON ("{"a": 1, "b": [2, 3]}", with QEMU's spacing), or QEMU's pretty form
    /// (four-space indents) for `-mon pretty=on`.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(to out: inout String, pretty: Bool, indent: Int) {
        func newline(_ level: Int) {
            guard pretty else { return }
            out += "\n"
            out += String(repeating: " ", count: 4 * level)
        }
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            // JSON has no inf/nan; QEMU writes them bare, which clients cannot parse. Keep it valid.
            if d.isFinite { out += "\(d)" } else { out += "null" }
        case .string(let s): JSON.quote(s, into: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += pretty ? "," : ", " }
                newline(indent + 1)
                v.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if !a.isEmpty { newline(indent) }
            out += "]"
        case .object(let m):
            out += "{"
            for (i, (k, v)) in m.enumerated() {
                if i > 0 { out += pretty ? "," : ", " }
                newline(indent + 1)
                JSON.quote(k, into: &out)
                out += ": "
                v.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if !m.isEmpty { newline(indent) }
            out += "}"
        }
    }

    static let hexDigits = Array("0123456789abcdef")

    /// A JSON string literal: quotes, backslashes and control characters escaped; everything
    /// else as UTF-8 (strings are always valid Unicode here).
    static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || u.value == 0x7F {
                    out += "\\u00"
                    out.append(hexDigits[Int(u.value >> 4)])
                    out.append(hexDigits[Int(u.value & 0xF)])
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}
