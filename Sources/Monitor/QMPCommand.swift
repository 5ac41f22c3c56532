/// One QMP command: its parameters (checked before it runs, with QEMU's messages) and its body.
struct QMPCommand {
    enum ArgumentType: String {
        case string, int, bool, number, stringList

        func accepts(_ v: JSON) -> Bool {
            switch (self, v) {
            case (.string, .string), (.int, .int), (.bool, .bool), (.number, .int), (.number, .double): return true
            case (.stringList, .array(let a)): return a.allSatisfy { $0.stringValue != nil }
            default: return false
            }
        }

        /// QEMU's wording in "Invalid parameter type for 'x', expected: ...".
        var expected: String {
            switch self {
            case .string: return "string"
            case .int: return "integer"
            case .bool: return "boolean"
            case .number: return "number"
            case .stringList: return "array"
            }
        }
    }

    struct Parameter {
        let name: String
        let type: ArgumentType
        let isOptional: Bool

        static func required(_ name: String, _ type: ArgumentType) -> Parameter { Parameter(name: name, type: type, isOptional: false) }
        static func optional(_ name: String, _ type: ArgumentType) -> Parameter { Parameter(name: name, type: type, isOptional: true) }
    }

    let name: String
    let parameters: [Parameter]
    /// Runs with the big lock held; `arguments` has passed `check`.
    let run: (_ arguments: JSON) throws -> JSON

    init(_ name: String, _ parameters: [Parameter] = [], run: @escaping (_ arguments: JSON) throws -> JSON) {
        self.name = name
        self.parameters = parameters
        self.run = run
    }


    /// QEMU's input visitor: each declared parameter in order (missing, wrong type), then any
    /// member nobody declared.
    func check(_ arguments: JSON) throws {
        let members = arguments.objectMembers ?? []
        for p in parameters {
            guard let v = arguments[p.name], v != .null || !p.isOptional else {
                if p.isOptional { continue }
                throw QMPError.generic("Parameter '\(p.name)' is missing")
            }
            guard p.type.accepts(v) else {
                throw QMPError.generic("Invalid parameter type for '\(p.name)', expected: \(p.type.expected)")
            }
        }
        if let extra = members.first(where: { m in !parameters.contains { $0.name == m.0 } }) {
            throw QMPError.generic("Parameter '\(extra.0)' is unexpected")
        }
    }
}
