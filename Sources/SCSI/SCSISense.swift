/// SAM-5 status codes a command ends with (the ones Keel's target returns).
public enum SCSIStatus: UInt8, Sendable {
    case good = 0x00
    case checkCondition = 0x02
}

/// Sense keys (SPC-4 §4.5.6, table 51).
public enum SCSISenseKey: UInt8, Sendable {
    case noSense = 0x0
    case notReady = 0x2
    case mediumError = 0x3
    case hardwareError = 0x4
    case illegalRequest = 0x5
    case unitAttention = 0x6
    case dataProtect = 0x7
    case abortedCommand = 0xB
}

/// A sense key with its additional sense code and qualifier (SPC-4 §4.5.6, table 52).
public struct SCSISense: Equatable, Sendable {
    public var key: SCSISenseKey
    public var asc: UInt8
    public var ascq: UInt8
    /// SPC-4 §4.5.2.4.2 field pointer into the CDB (or parameter list) of an invalid field.
    public var fieldPointer: UInt16?
    public var fieldInCDB = true

    public init(_ key: SCSISenseKey, _ asc: UInt8, _ ascq: UInt8, fieldPointer: UInt16? = nil, inCDB: Bool = true) {
        self.key = key; self.asc = asc; self.ascq = ascq; self.fieldPointer = fieldPointer; fieldInCDB = inCDB
    }

    public static let noSense = SCSISense(.noSense, 0x00, 0x00)
    public static let invalidOpcode = SCSISense(.illegalRequest, 0x20, 0x00)
    public static let lbaOutOfRange = SCSISense(.illegalRequest, 0x21, 0x00)
    public static let invalidFieldInCDB = SCSISense(.illegalRequest, 0x24, 0x00)
    public static func invalidField(cdbByte: UInt16) -> SCSISense { SCSISense(.illegalRequest, 0x24, 0x00, fieldPointer: cdbByte) }
    public static let logicalUnitNotSupported = SCSISense(.illegalRequest, 0x25, 0x00)
    public static let invalidFieldInParameterList = SCSISense(.illegalRequest, 0x26, 0x00)
    public static let parameterListLengthError = SCSISense(.illegalRequest, 0x1A, 0x00)
    public static let savingParametersNotSupported = SCSISense(.illegalRequest, 0x39, 0x00)
    public static let writeProtected = SCSISense(.dataProtect, 0x27, 0x00)
    public static let spaceAllocationFailed = SCSISense(.dataProtect, 0x27, 0x07)
    public static let unrecoveredReadError = SCSISense(.mediumError, 0x11, 0x00)
    public static let writeError = SCSISense(.mediumError, 0x0C, 0x00)
    public static let internalTargetFailure = SCSISense(.hardwareError, 0x44, 0x00)

    /// Fixed-format sense data (SPC-4 §4.5.3): 18 bytes, response code 70h (current error).
    public var fixedFormat: [UInt8] {
        var s = [UInt8](repeating: 0, count: 18)
        s[0] = 0x70
        s[2] = key.rawValue
        s[7] = 10                                   // additional sense length: bytes 8...17
        s[12] = asc
        s[13] = ascq
        if let p = fieldPointer {
            s[15] = 0x80 | (fieldInCDB ? 0x40 : 0)  // SKSV, C/D
            s[16] = UInt8(p >> 8)
            s[17] = UInt8(truncatingIfNeeded: p)
        }
        return s
    }
}

/// What a command produced: its status, fixed-format sense data when it is CHECK CONDITION,
/// and how many bytes it placed in the data-in buffer.
public struct SCSIResult: Equatable, Sendable {
    public var status: SCSIStatus
    public var sense: [UInt8]
    public var dataInLength: Int
    /// The transport's buffers were smaller than the transfer the CDB asked for: nothing was
    /// done; a virtio-scsi device answers VIRTIO_SCSI_S_OVERRUN.
    public var overrun: Bool

    public static func good(_ dataIn: Int = 0) -> SCSIResult {
        SCSIResult(status: .good, sense: [], dataInLength: dataIn, overrun: false)
    }
    public static func check(_ sense: SCSISense) -> SCSIResult {
        SCSIResult(status: .checkCondition, sense: sense.fixedFormat, dataInLength: 0, overrun: false)
    }
    public static let overrunResult = SCSIResult(status: .good, sense: [], dataInLength: 0, overrun: true)
}
