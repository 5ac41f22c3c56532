import Glibc

extension X86CPU {
    /// Runs guest code until an exit: at most about `budget` instructions (checked at block
    /// boundaries), or until HLT, a triple fault, or `exitRequest`.
    public func run(budget: Int) -> CPUExit {
        let s = st
        let regs = gpr, tlb = self.tlb
        var remaining = budget
        // The APIC is polled once per block. It is weakly referenced elsewhere, so its refcount
        // lives in a side table and a retain/release pair per block cost ~30% of a Linux boot:
        // `self` keeps it alive for the whole call, so the poll borrows it unretained.
        let apic = self.apic
        let apicRef = apic.map { Unmanaged.passUnretained($0) }
        // Only the exit taken right before a block is dispatched may be linked to it.
        pendingLink = 0
        while remaining > 0 {
            var link = pendingLink
            pendingLink = 0
            if exitRequest.load(ordering: .relaxed) {
                exitRequest.store(false, ordering: .relaxed)
                return .requested
            }
            let shadow = s.pointee.interruptShadow
            s.pointee.interruptShadow = false
            updateAlignmentCheck()
            // An event held back by the shadow of STI or MOV SS is taken after one block: that
            // block is not chained on (up to 1024 blocks could run before the next poll).
            var heldBack = false
            if let apicRef, apicRef._withUnsafeGuaranteedRef({ $0.hasPendingEvent }) {
                link = 0
                heldBack = shadow
                // Unretained too: an interrupt waiting out a busy lock comes here every block.
                if !apicRef._withUnsafeGuaranteedRef({ serviceEvents($0, shadow: shadow) }) { return .tripleFault }
            }
            if s.pointee.halted || s.pointee.waitingForSIPI {
                // With a LocalAPIC an NMI or INIT can still end HLT with IF clear.
                if s.pointee.waitingForSIPI || apic != nil { return .halted }
                return s.pointee.rflags & RFlags.if != 0 ? .halted : .haltedForever
            }
            let insns: UnsafeMutablePointer<Instruction>
            let count: Int
            let slot: UnsafeMutablePointer<DecodeCache.Slot>?
            do {
                (insns, count, slot) = try block()
            } catch {
                s.pointee.currentRIP = s.pointee.rip
                if !deliverEvent(vector: error.vector, errorCode: error.hasErrorCode ? error.errorCode : nil, kind: .fault) {
                    return .tripleFault
                }
                continue
            }
            var k = 0
            let mask = ipMask
            // RFLAGS.TF: one instruction, then a single-step #DB trap (SDM Vol. 3 §18.3.1.4).
            // An instruction that sets TF ends its block (setRFlags), so TF is seen here.
            let stepping = s.pointee.rflags & RFlags.tf != 0
            // RF (set by IRETQ from a fault frame) lasts for one instruction: cleared below once
            // the block's first instruction completed.
            let resuming = s.pointee.rflags & RFlags.rf != 0
            if !stepping && !resuming, let slot, s.pointee.codeMode == .long64,
               let done = runTranslated(slot, insns, count, budget: heldBack ? 1 : remaining,
                                        link: s.pointee.rip == pendingLinkRIP ? link : 0) {
                remaining &-= done > 0 ? done : 1
                if s.pointee.tripleFaulted {
                    s.pointee.tripleFaulted = false
                    return .tripleFault
                }
                continue
            }
            let limit = stepping ? min(count, 1) : count
            while k < limit {
                let ip = insns + k
                let cur = s.pointee.rip
                s.pointee.currentRIP = cur
                s.pointee.rip = (cur &+ UInt64(ip.pointee.length)) & mask
                do {
                    try step(self, ip, s, regs, tlb)
                } catch {
                    if !deliverInstructionFault(error, ip) {
                        s.pointee.instructionCount &+= UInt64(k)
                        return .tripleFault
                    }
                    break
                }
                k += 1
                if s.pointee.breakBlock {
                    s.pointee.breakBlock = false
                    break
                }
            }
            if resuming && k > 0 { s.pointee.rflags &= ~RFlags.rf }
            if stepping && k == 1 && !Self.deliversItsOwnEvent(insns.pointee.op) && !Self.delaysSingleStep(insns) {
                s.pointee.dr6 |= 0x4000  // BS
                if !deliverEvent(vector: X86Exception.debug, errorCode: nil, kind: .fault) {
                    s.pointee.instructionCount &+= UInt64(k)
                    return .tripleFault
                }
                s.pointee.breakBlock = false
            }
            s.pointee.instructionCount &+= UInt64(k)
            remaining &-= k > 0 ? k : 1
            if s.pointee.tripleFaulted {
                s.pointee.tripleFaulted = false
                return .tripleFault
            }
        }
        return .budget
    }

    /// Instruction `ip` faulted: back to its start, and the exception delivered (a #GP on the
    /// stack becomes #SS). False: it could not be (a triple fault).
    func deliverInstructionFault(_ error: X86Exception, _ ip: UnsafeMutablePointer<Instruction>) -> Bool {
        st.pointee.rip = st.pointee.currentRIP
        let e = stackSegmentFault(error, ip)
        return deliverEvent(vector: e.vector, errorCode: e.hasErrorCode ? e.errorCode : nil, kind: .fault)
    }

    func traceLine(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
