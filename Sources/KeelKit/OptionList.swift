/// QEMU's option-list syntax (QemuOpts): `[implied,]key=value,key=value`, where ",," stands for a
/// literal comma. The first element may be a bare value for an implied key (a driver name, a size).
struct OptionList {
    let option: String
    private(set) var implied: String?
    private(set) var pairs: [(key: String, value: String)] = []
    private var used: Set<String> = []

    init(option: String, _ text: String, impliedKey: String? = nil) throws {
        self.option = option
        var parts: [String] = []
        var current = ""
        var chars = Array(text)[...]
        while let c = chars.popFirst() {
            if c == "," {
                if chars.first == "," { current.append(","); chars.removeFirst(); continue }
                parts.append(current); current = ""
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        for (i, p) in parts.enumerated() {
            if let eq = p.firstIndex(of: "=") {
                let key = String(p[..<eq])
                guard !key.isEmpty else { throw ConfigurationErrorText("\(option) \(text): empty parameter name") }
                if let k = impliedKey, key == k, i == 0 { implied = String(p[p.index(after: eq)...]); continue }
                pairs.append((key, String(p[p.index(after: eq)...])))
            } else if i == 0 && impliedKey != nil {
                implied = p
            } else if p.isEmpty {
                continue
            } else {
                // QEMU's legacy boolean shorthand: "server" means server=on, "nowait" wait=off.
                if p.hasPrefix("no") { pairs.append((String(p.dropFirst(2)), "off")) } else { pairs.append((p, "on")) }
            }
        }
    }

    mutating func take(_ key: String) -> String? {
        used.insert(key)
        return pairs.last { $0.key == key }?.value
    }

    /// Every value of a key that may repeat (`hostfwd=`), in order.
    mutating func takeAll(_ key: String) -> [String] {
        used.insert(key)
        return pairs.filter { $0.key == key }.map(\.value)
    }

    mutating func takeBool(_ key: String) throws -> Bool? {
        guard let v = take(key) else { return nil }
        switch v {
        case "on", "yes", "true": return true
        case "off", "no", "false": return false
        default: throw ConfigurationErrorText("\(option): \(key)=\(v): expected on or off")
        }
    }

    /// Fails naming the first parameter nobody asked for.
    func rejectUnused(_ what: String) throws {
        if let p = pairs.first(where: { !used.contains($0.key) }) {
            throw ConfigurationErrorText("\(option) \(what): unknown parameter '\(p.key)'")
        }
    }
}

struct ConfigurationErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// QEMU's size syntax: a number with an optional K/M/G/T suffix (binary units); `defaultUnit`
/// applies to a bare number (-m takes MiB).
func parseSize(_ text: String, defaultUnit: UInt64, option: String) throws -> UInt64 {
    var digits = Substring(text)
    var unit = defaultUnit
    guard digits.dropLast().allSatisfy(\.isNumber), !digits.isEmpty else {
        throw ConfigurationErrorText("\(option) \(text): not a size")
    }
    if let last = digits.last, last.isLetter {
        switch last.uppercased() {
        case "B": unit = 1
        case "K": unit = 1 << 10
        case "M": unit = 1 << 20
        case "G": unit = 1 << 30
        case "T": unit = 1 << 40
        default: throw ConfigurationErrorText("\(option) \(text): unknown size suffix '\(last)'")
        }
        digits = digits.dropLast()
    }
    guard let n = UInt64(digits) else { throw ConfigurationErrorText("\(option) \(text): not a size") }
    let (v, o) = n.multipliedReportingOverflow(by: unit)
    guard !o else { throw ConfigurationErrorText("\(option) \(text): size too large") }
    return v
}

/// Integers as QEMU accepts them in device properties: decimal or 0x-prefixed hex.
func parseInteger(_ text: String, option: String, key: String) throws -> UInt64 {
    let v: UInt64?
    if text.hasPrefix("0x") || text.hasPrefix("0X") { v = UInt64(text.dropFirst(2), radix: 16) } else { v = UInt64(text) }
    guard let v else { throw ConfigurationErrorText("\(option): \(key)=\(text): not a number") }
    return v
}
