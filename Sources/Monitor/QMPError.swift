/// A QMP error reply: QEMU's error class (qapi/error.json) and a human description.
public struct QMPError: Error, Equatable, CustomStringConvertible {
    public enum ErrorClass: String, Sendable {
        case genericError = "GenericError"
        case commandNotFound = "CommandNotFound"
        case deviceNotActive = "DeviceNotActive"
        case deviceNotFound = "DeviceNotFound"
        case kvmMissingCap = "KVMMissingCap"
    }

    public let errorClass: ErrorClass
    public let desc: String

    public init(_ errorClass: ErrorClass, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public static func generic(_ desc: String) -> QMPError { QMPError(.genericError, desc) }

    public var description: String { "\(errorClass.rawValue): \(desc)" }

    /// {"class": ..., "desc": ...}
    public var json: JSON { ["class": .string(errorClass.rawValue), "desc": .string(desc)] }
}
