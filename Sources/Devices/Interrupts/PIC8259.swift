
/// One 8259A (datasheet: ICW1-4, OCW1-3), the state both chips of the pair share.
struct PIC8259Chip {
    var lastIRR: UInt8 = 0        // input levels, for edge detection
    var irr: UInt8 = 0
    var imr: UInt8 = 0
    var isr: UInt8 = 0
    var priorityAdd: UInt8 = 0    // the IRQ with lowest priority is priorityAdd - 1 (rotation)
    var vectorBase: UInt8 = 0
    var readISR = false           // OCW3 RR/RIS: port 0 reads ISR (else IRR)
    var poll = false
    var specialMask = false
    var initState = 0             // 0: ready; 1-3: expecting ICW2, ICW3, ICW4
    var needsICW4 = false
    var singleMode = false
    var autoEOI = false
    var rotateOnAutoEOI = false
    var specialFullyNested = false
    var elcr: UInt8 = 0           // edge/level control (level when set)
    let elcrMask: UInt8
    let isMaster: Bool

    init(isMaster: Bool) {
        self.isMaster = isMaster
        // IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge-triggered on a PC.
        elcrMask = isMaster ? 0xF8 : 0xDE
    }

    /// ICW1: everything but ELCR returns to its initial state; level-triggered requests stay.
    mutating func initReset() {
        lastIRR = 0; irr &= elcr; imr = 0; isr = 0; priorityAdd = 0; vectorBase = 0
        readISR = false; poll = false; specialMask = false; initState = 0; needsICW4 = false
        singleMode = false; autoEOI = false; rotateOnAutoEOI = false; specialFullyNested = false
    }

    mutating func setInput(_ irq: Int, _ level: Bool) {
        let mask = UInt8(1) << UInt8(irq & 7)
        if elcr & mask != 0 {
            if level { irr |= mask; lastIRR |= mask } else { irr &= ~mask; lastIRR &= ~mask }
        } else if level {
            if lastIRR & mask == 0 { irr |= mask }
            lastIRR |= mask
        } else {
            lastIRR &= ~mask
        }
    }

    /// The rotated priority (0 highest) of the highest-priority bit in `mask`; 8 if none.
    func priority(_ mask: UInt8) -> Int {
        guard mask != 0 else { return 8 }
        var p = 0
        while p < 8 && mask & (1 << UInt8((p + Int(priorityAdd)) & 7)) == 0 { p += 1 }
        return p
    }

    /// The IRQ this chip would raise INT for: unmasked, above any in-service level.
    func pendingIRQ() -> Int? {
        let p = priority(irr & ~imr)
        guard p < 8 else { return nil }
        var inService = isr
        if specialMask { inService &= ~imr }
        // Special fully nested: the master lets a slave interrupt nest on IR2.
        if specialFullyNested && isMaster { inService &= ~(1 << 2) }
        guard p < priority(inService) else { return nil }
        return (p + Int(priorityAdd)) & 7
    }

    mutating func intack(_ irq: Int) {
        let mask = UInt8(1) << UInt8(irq & 7)
        if autoEOI {
            if rotateOnAutoEOI { priorityAdd = UInt8((irq + 1) & 7) }
        } else {
            isr |= mask
        }
        if elcr & mask == 0 { irr &= ~mask }
    }

    mutating func writeCommand(_ v: UInt8) {
        if v & 0x10 != 0 {                       // ICW1
            initReset()
            initState = 1
            needsICW4 = v & 1 != 0
            singleMode = v & 2 != 0
        } else if v & 0x08 != 0 {                // OCW3
            if v & 0x04 != 0 { poll = true }
            if v & 0x02 != 0 { readISR = v & 1 != 0 }
            if v & 0x40 != 0 { specialMask = v & 0x20 != 0 }
        } else {                                 // OCW2
            let irqField = Int(v & 7)
            switch v >> 5 {
            case 0: rotateOnAutoEOI = false
            case 4: rotateOnAutoEOI = true
            case 1, 5:                           // non-specific EOI (and rotate)
                let p = priority(isr)
                if p < 8 {
                    let irq = (p + Int(priorityAdd)) & 7
                    isr &= ~(1 << UInt8(irq))
                    if v >> 5 == 5 { priorityAdd = UInt8((irq + 1) & 7) }
                }
            case 3:                              // specific EOI
                isr &= ~(1 << UInt8(irqField))
            case 6:                              // set priority: irqField becomes lowest
                priorityAdd = UInt8((irqField + 1) & 7)
            case 7:                              // rotate on specific EOI
                isr &= ~(1 << UInt8(irqField))
                priorityAdd = UInt8((irqField + 1) & 7)
            default: break                       // 2: no operation
            }
        }
    }

    mutating func writeData(_ v: UInt8) {
        switch initState {
        case 1:                                  // ICW2: vector base (T7-T3)
            vectorBase = v & 0xF8
            initState = singleMode ? (needsICW4 ? 3 : 0) : 2
        case 2:                                  // ICW3: cascade wiring (fixed on a PC)
            initState = needsICW4 ? 3 : 0
        case 3:                                  // ICW4
            specialFullyNested = v & 0x10 != 0
            autoEOI = v & 0x02 != 0
            initState = 0
        default:                                 // OCW1
            imr = v
        }
    }

    /// A poll-mode read (OCW3 P): acknowledges like INTA and returns 0x80 | level, or 0.
    mutating func pollRead() -> UInt8 {
        poll = false
        guard let irq = pendingIRQ() else { return 0 }
        intack(irq)
        return 0x80 | UInt8(irq)
    }
}

/// The PC's cascaded 8259A pair: master at 0x20/0x21 (INT to the CPU / LINT0), slave at
/// 0xA0/0xA1 on master IR2, and the edge/level control registers at 0x4D0/0x4D1.
/// Big lock held for everything.
public final class PIC8259Pair: ExtINTSource, @unchecked Sendable {
    var master = PIC8259Chip(isMaster: true)
    var slave = PIC8259Chip(isMaster: false)
    /// The master's INT output changed (wire to the BSP's LAPIC LINT0).
    public var outputChanged: ((Bool) -> Void)?
    public private(set) var output = false

    /// Bus devices: ports 0x20-0x21, 0xA0-0xA1 and 0x4D0-0x4D1 (offsets 0 and 1 each).
    public private(set) lazy var masterPorts: BusDevice = PIC8259Ports(pair: self, kind: .master)
    public private(set) lazy var slavePorts: BusDevice = PIC8259Ports(pair: self, kind: .slave)
    public private(set) lazy var elcrPorts: BusDevice = PIC8259Ports(pair: self, kind: .elcr)

    public init() {}

    public func reset() {
        let me = master.elcr, se = slave.elcr
        master = PIC8259Chip(isMaster: true)
        slave = PIC8259Chip(isMaster: false)
        master.elcr = me; slave.elcr = se
        update()
    }

    /// Drives ISA IRQ `irq` (0-15; 2 is the cascade and not a device line). Others are ignored.
    public func setIRQ(_ irq: Int, level: Bool) {
        guard irq >= 0 && irq < 16 && irq != 2 else { return }
        if irq < 8 { master.setInput(irq, level) } else { slave.setInput(irq - 8, level) }
        update()
    }

    public var hasInterrupt: Bool { master.pendingIRQ() != nil }

    /// INTA: the vector of the highest-priority request; a spurious IRQ7 (or IRQ15, from the
    /// slave) vector when the request went away.
    public func acknowledge() -> UInt8 {
        defer { update() }
        guard let irq = master.pendingIRQ() else { return master.vectorBase | 7 }
        var vector: UInt8
        if irq == 2 {
            if let s = slave.pendingIRQ() {
                slave.intack(s)
                vector = slave.vectorBase | UInt8(s)
            } else {
                vector = slave.vectorBase | 7
            }
        } else {
            vector = master.vectorBase | UInt8(irq)
        }
        master.intack(irq)
        return vector
    }

    /// Propagates the slave's INT to master IR2 and the master's INT to `outputChanged`.
    func update() {
        master.setInput(2, slave.pendingIRQ() != nil)
        let out = master.pendingIRQ() != nil
        if out != output {
            output = out
            outputChanged?(out)
        }
    }

    // Port access (offset 0 or 1 within each pair of ports).
    func read(_ kind: PIC8259Ports.Kind, _ offset: UInt64) -> UInt8 {
        switch kind {
        case .elcr: return offset == 0 ? master.elcr : slave.elcr
        case .master, .slave:
            let isMaster = kind == .master
            var c = isMaster ? master : slave
            defer {
                if isMaster { master = c } else { slave = c }
                update()
            }
            if c.poll {
                // Polling the master for a slave request reads the master's IR2, as on hardware.
                return c.pollRead()
            }
            if offset == 0 { return c.readISR ? c.isr : c.irr }
            return c.imr
        }
    }

    func write(_ kind: PIC8259Ports.Kind, _ offset: UInt64, _ v: UInt8) {
        switch kind {
        case .elcr:
            if offset == 0 { master.elcr = v & master.elcrMask } else { slave.elcr = v & slave.elcrMask }
        case .master:
            if offset == 0 { master.writeCommand(v) } else { master.writeData(v) }
        case .slave:
            if offset == 0 { slave.writeCommand(v) } else { slave.writeData(v) }
        }
        update()
    }

    /// Linux's and the datasheet's view, for tests: (IRR, ISR, IMR) of master and slave.
    public var registers: (master: (irr: UInt8, isr: UInt8, imr: UInt8), slave: (irr: UInt8, isr: UInt8, imr: UInt8)) {
        ((master.irr, master.isr, master.imr), (slave.irr, slave.isr, slave.imr))
    }
}

final class PIC8259Ports: BusDevice {
    enum Kind { case master, slave, elcr }
    unowned let pair: PIC8259Pair
    let kind: Kind

    init(pair: PIC8259Pair, kind: Kind) { self.pair = pair; self.kind = kind }

    /// A wider access covers consecutive ports; bytes past the pair read 0xFF / are dropped.
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let (o, ovf) = offset.addingReportingOverflow(UInt64(i))
            data[i] = !ovf && o < 2 ? pair.read(kind, o) : 0xFF
        }
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        for i in 0..<data.count {
            let (o, ovf) = offset.addingReportingOverflow(UInt64(i))
            if !ovf && o < 2 { pair.write(kind, o, data[i]) }
        }
    }
}
