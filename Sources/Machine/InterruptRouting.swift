import Devices

/// Where the board's interrupts go: the accelerator's interrupt controllers (KVM's in-kernel
/// PIC/IOAPIC/LAPICs, or tcg's own). Set by the accelerator; replaced when it is rebuilt on reset.
public protocol InterruptController: AnyObject {
    /// Drives global system interrupt `gsi` to `level`.
    func setIRQ(_ gsi: UInt32, level: Bool)
    /// Delivers a message-signalled interrupt.
    func signalMSI(address: UInt64, data: UInt32)
}

/// The board's fixed wiring to whichever interrupt controller is current.
public final class InterruptRouting: @unchecked Sendable {
    public weak var controller: InterruptController?
    private var lines: [UInt32: GSILine] = [:]
    public init() {}

    /// The device-side line wired to `gsi` (one per GSI, as ISA lines are not shared).
    public func line(_ gsi: UInt32) -> InterruptLine {
        if let l = lines[gsi] { return l }
        let l = GSILine(gsi: gsi, routing: self)
        lines[gsi] = l
        return l
    }

    /// At machine reset the new interrupt controller starts with every line low; so do we.
    public func forgetLevels() {
        for l in lines.values { l.level = false }
    }
}

final class GSILine: InterruptLine {
    let gsi: UInt32
    unowned let routing: InterruptRouting
    var level = false

    init(gsi: UInt32, routing: InterruptRouting) { self.gsi = gsi; self.routing = routing }

    func setLevel(_ asserted: Bool) {
        guard asserted != level else { return }
        level = asserted
        routing.controller?.setIRQ(gsi, level: asserted)
    }
}
