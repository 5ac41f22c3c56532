/// A small encoder for the ACPI Machine Language subset Keel's DSDT needs (ACPI 6.x §20.2):
/// name strings, PkgLength, Scope, Device, Name, Method/Return, Package, Buffer, String and
/// integers with the shortest prefix.
public indirect enum AML: Sendable, Equatable {
    case scope(String, [AML])
    case device(String, [AML])
    case name(String, AML)
    /// Method(name, argumentCount, Serialized/NotSerialized) { body }; sync level 0.
    case method(String, argumentCount: UInt8, serialized: Bool, [AML])
    case `return`(AML)
    case integer(UInt64)
    case string(String)
    case package([AML])
    case buffer([UInt8])

    /// EisaId("PNP0501"): the compressed 32-bit form of a PNP ID, for _HID/_CID.
    public static func eisaID(_ id: String) throws -> AML { .integer(UInt64(try AMLEncoding.eisaID(id))) }

    /// ResourceTemplate(){...}: a Buffer of descriptors closed by an End Tag with a valid checksum.
    public static func resourceTemplate(_ descriptors: [AMLResourceDescriptor]) throws -> AML {
        .buffer(try AMLResourceDescriptor.template(descriptors))
    }

    public func encoded() throws -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out)
        return out
    }

    func encode(into out: inout [UInt8]) throws {
        switch self {
        case .scope(let path, let terms):
            out.append(AMLOpcode.scope)
            try Self.appendPackage(into: &out, AMLEncoding.nameString(path) + Self.encodeList(terms))
        case .device(let path, let terms):
            out.append(contentsOf: AMLOpcode.device)
            try Self.appendPackage(into: &out, AMLEncoding.nameString(path) + Self.encodeList(terms))
        case .name(let path, let value):
            out.append(AMLOpcode.name)
            out.append(contentsOf: try AMLEncoding.nameString(path))
            try value.encode(into: &out)
        case .method(let path, let argumentCount, let serialized, let terms):
            guard argumentCount <= 7 else { throw ACPIError.invalidAML("method \(path) takes \(argumentCount) arguments (max 7)") }
            out.append(AMLOpcode.method)
            // MethodFlags: ArgCount in bits 0-2, SerializeFlag in bit 3, SyncLevel (0) in bits 4-7.
            let flags = argumentCount | (serialized ? 0x08 : 0)
            try Self.appendPackage(into: &out, AMLEncoding.nameString(path) + [flags] + Self.encodeList(terms))
        case .return(let value):
            out.append(AMLOpcode.return)
            try value.encode(into: &out)
        case .integer(let v):
            AMLEncoding.appendInteger(v, into: &out)
        case .string(let s):
            out.append(AMLOpcode.stringPrefix)
            for b in s.utf8 {
                guard b >= 0x01, b <= 0x7F else { throw ACPIError.invalidAML("string \"\(s)\" is not 7-bit ASCII without NUL") }
                out.append(b)
            }
            out.append(0)
        case .package(let elements):
            guard elements.count <= 255 else { throw ACPIError.invalidAML("package of \(elements.count) elements (max 255)") }
            out.append(AMLOpcode.package)
            try Self.appendPackage(into: &out, [UInt8(elements.count)] + Self.encodeList(elements))
        case .buffer(let data):
            out.append(AMLOpcode.buffer)
            var body: [UInt8] = []
            AMLEncoding.appendInteger(UInt64(data.count), into: &body)  // BufferSize
            body.append(contentsOf: data)
            try Self.appendPackage(into: &out, body)
        }
    }

    private static func encodeList(_ terms: [AML]) throws -> [UInt8] {
        var out: [UInt8] = []
        for t in terms { try t.encode(into: &out) }
        return out
    }

    private static func appendPackage(into out: inout [UInt8], _ body: [UInt8]) throws {
        out.append(contentsOf: try AMLEncoding.packageLength(body.count))
        out.append(contentsOf: body)
    }
}

enum AMLOpcode {
    static let zero: UInt8 = 0x00
    static let one: UInt8 = 0x01
    static let name: UInt8 = 0x08
    static let bytePrefix: UInt8 = 0x0A
    static let wordPrefix: UInt8 = 0x0B
    static let dwordPrefix: UInt8 = 0x0C
    static let stringPrefix: UInt8 = 0x0D
    static let qwordPrefix: UInt8 = 0x0E
    static let scope: UInt8 = 0x10
    static let buffer: UInt8 = 0x11
    static let package: UInt8 = 0x12
    static let method: UInt8 = 0x14
    static let dualNamePrefix: UInt8 = 0x2E
    static let multiNamePrefix: UInt8 = 0x2F
    static let rootChar: UInt8 = 0x5C       // '\'
    static let parentPrefix: UInt8 = 0x5E   // '^'
    static let nullName: UInt8 = 0x00
    static let device: [UInt8] = [0x5B, 0x82] // ExtOpPrefix DeviceOp
    static let `return`: UInt8 = 0xA4
}

/// The encodings shared by AML terms (ACPI 6.x §20.2.2 name objects, §20.2.4 PkgLength, §20.2.3 data objects).
public enum AMLEncoding {
    /// PkgLength for a body of `bodyLength` bytes; the encoded value counts its own 1-4 bytes too.
    public static func packageLength(_ bodyLength: Int) throws -> [UInt8] {
        guard bodyLength >= 0 else { throw ACPIError.invalidAML("negative package length") }
        if bodyLength + 1 <= 0x3F { return [UInt8(bodyLength + 1)] }
        // Multi-byte form: byte 0 holds the count of following bytes in bits 6-7 and the low nibble;
        // each following byte holds the next 8 bits.
        for extra in 1...3 {
            let total = bodyLength + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var out: [UInt8] = [UInt8(extra << 6) | UInt8(total & 0x0F)]
            for i in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return out
        }
        throw ACPIError.invalidAML("package body of \(bodyLength) bytes is too large for PkgLength")
    }

    /// NameString: optional '\' or '^' prefixes, then NullName, one NameSeg, DualNamePath or MultiNamePath.
    /// Segments shorter than four characters are padded with '_' as the ASL compiler does.
    public static func nameString(_ path: String) throws -> [UInt8] {
        var out: [UInt8] = []
        var rest = Substring(path)
        if rest.first == "\\" {
            out.append(AMLOpcode.rootChar)
            rest = rest.dropFirst()
        } else {
            while rest.first == "^" {
                out.append(AMLOpcode.parentPrefix)
                rest = rest.dropFirst()
            }
        }
        let segments = rest.isEmpty ? [] : rest.split(separator: ".", omittingEmptySubsequences: false)
        var encoded: [UInt8] = []
        for s in segments { encoded.append(contentsOf: try nameSegment(s, path: path)) }
        switch segments.count {
        case 0: out.append(AMLOpcode.nullName)
        case 1: break
        case 2: out.append(AMLOpcode.dualNamePrefix)
        case 3...255:
            out.append(AMLOpcode.multiNamePrefix)
            out.append(UInt8(segments.count))
        default: throw ACPIError.invalidName(path)
        }
        return out + encoded
    }

    /// NameSeg: LeadNameChar ('A'-'Z', '_') followed by three NameChars ('A'-'Z', '0'-'9', '_').
    static func nameSegment<S: StringProtocol>(_ s: S, path: String) throws -> [UInt8] {
        var bytes = Array(s.utf8)
        guard (1...4).contains(bytes.count) else { throw ACPIError.invalidName(path) }
        while bytes.count < 4 { bytes.append(UInt8(ascii: "_")) }
        for (i, b) in bytes.enumerated() {
            let upper = b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z")
            let digit = b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")
            guard upper || b == UInt8(ascii: "_") || (digit && i > 0) else { throw ACPIError.invalidName(path) }
        }
        return bytes
    }

    public static func isValidNameSegment(_ s: String) -> Bool {
        (try? nameSegment(s, path: s)) != nil
    }

    /// ComputationalData integer with the shortest encoding: ZeroOp, OneOp, Byte/Word/DWord/QWordConst.
    static func appendInteger(_ v: UInt64, into out: inout [UInt8]) {
        switch v {
        case 0: out.append(AMLOpcode.zero)
        case 1: out.append(AMLOpcode.one)
        case ...0xFF: out.append(contentsOf: [AMLOpcode.bytePrefix, UInt8(v)])
        case ...0xFFFF: out.append(AMLOpcode.wordPrefix); appendLE(v, bytes: 2, into: &out)
        case ...0xFFFF_FFFF: out.append(AMLOpcode.dwordPrefix); appendLE(v, bytes: 4, into: &out)
        default: out.append(AMLOpcode.qwordPrefix); appendLE(v, bytes: 8, into: &out)
        }
    }

    private static func appendLE(_ v: UInt64, bytes: Int, into out: inout [UInt8]) {
        for i in 0..<bytes { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }

    /// EISA ID compression (ACPI 6.x §6.1.5 _HID): three letters of five bits each, then four hex
    /// digits, stored so the bytes read in order are "vendor hi, vendor lo, product hi, product lo".
    public static func eisaID(_ id: String) throws -> UInt32 {
        let c = Array(id.utf8)
        guard c.count == 7 else { throw ACPIError.invalidAML("EISA ID \"\(id)\" is not 3 letters + 4 hex digits") }
        var letters: [UInt32] = []
        for b in c[0..<3] {
            guard b >= UInt8(ascii: "A"), b <= UInt8(ascii: "Z") else {
                throw ACPIError.invalidAML("EISA ID \"\(id)\" is not 3 letters + 4 hex digits")
            }
            letters.append(UInt32(b - 0x40))
        }
        var digits: [UInt32] = []
        for b in c[3..<7] {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digits.append(UInt32(b - UInt8(ascii: "0")))
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digits.append(UInt32(b - UInt8(ascii: "A") + 10))
            default: throw ACPIError.invalidAML("EISA ID \"\(id)\" is not 3 letters + 4 hex digits")
            }
        }
        let vendor = letters[0] << 10 | letters[1] << 5 | letters[2]        // 15 bits
        let product = digits[0] << 12 | digits[1] << 8 | digits[2] << 4 | digits[3]
        let b0 = vendor >> 8, b1 = vendor & 0xFF, b2 = product >> 8, b3 = product & 0xFF
        return b0 | b1 << 8 | b2 << 16 | b3 << 24
    }
}
