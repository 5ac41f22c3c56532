/// Processor control: CPUID, MSRs, control and debug registers, descriptor tables, SYSCALL/SYSRET.
extension X86CPU {
    @inline(__always) func requireCPL0() throws(X86Exception) {
        if st.pointee.cpl != 0 { throw X86Exception.gp(0) }
    }

    func executeSystem(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        switch i.pointee.op {
        case .hlt:
            try requireCPL0()
            s.pointee.halted = true
            s.pointee.breakBlock = true
        case .cli, .sti:
            if s.pointee.cr0 & CR0.pe != 0 && s.pointee.cpl > UInt8((s.pointee.rflags >> 12) & 3) { throw X86Exception.gp(0) }
            if i.pointee.op == .cli { s.pointee.rflags &= ~RFlags.if } else {
                if s.pointee.rflags & RFlags.if == 0 { s.pointee.interruptShadow = true }
                s.pointee.rflags |= RFlags.if
            }
        case .cpuid:
            let (a, b, c, d) = cpuid.query(UInt32(truncatingIfNeeded: gpr[0]), UInt32(truncatingIfNeeded: gpr[1]))
            gpr[0] = UInt64(a); gpr[3] = UInt64(b); gpr[1] = UInt64(c); gpr[2] = UInt64(d)
        case .rdtsc, .rdtscp:
            if s.pointee.cr4 & 4 != 0 && s.pointee.cpl != 0 { throw X86Exception.gp(0) }
            let t = tsc
            gpr[0] = t & 0xFFFF_FFFF; gpr[2] = t >> 32
            if i.pointee.op == .rdtscp { gpr[1] = s.pointee.tscAux & 0xFFFF_FFFF }
        case .rdmsr:
            try requireCPL0()
            let v = try readMSR(UInt32(truncatingIfNeeded: gpr[1]))
            gpr[0] = v & 0xFFFF_FFFF; gpr[2] = v >> 32
        case .wrmsr:
            try requireCPL0()
            try writeMSR(UInt32(truncatingIfNeeded: gpr[1]), (gpr[2] << 32) | (gpr[0] & 0xFFFF_FFFF))
        case .syscall: try syscallInstruction()
        case .sysret: try sysretInstruction(to64: i.pointee.prefixes & Prefix.rexW != 0)
        case .swapgs:
            try requireCPL0()
            let g = s.pointee.gs.base
            s.pointee.gs.base = s.pointee.kernelGSBase
            s.pointee.kernelGSBase = g
        case .movFromCR:
            try requireCPL0()
            let v: UInt64
            switch i.pointee.reg {
            case 0: v = s.pointee.cr0
            case 2: v = s.pointee.cr2
            case 3: v = s.pointee.cr3
            case 4: v = s.pointee.cr4
            case 8: v = s.pointee.cr8
            default: throw X86Exception.ud
            }
            setReg(i.pointee.rm, i.pointee.size, v)
        case .movToCR:
            try requireCPL0()
            try writeCR(i.pointee.reg, reg(i.pointee.rm, i.pointee.size))
        case .movFromDR, .movToDR:
            try requireCPL0()
            var n = i.pointee.reg
            if n == 4 || n == 5 {
                if s.pointee.cr4 & 8 != 0 { throw X86Exception.ud }
                n += 2
            }
            if i.pointee.op == .movFromDR {
                let v: UInt64
                switch n {
                case 0: v = s.pointee.dr0
                case 1: v = s.pointee.dr1
                case 2: v = s.pointee.dr2
                case 3: v = s.pointee.dr3
                case 6: v = s.pointee.dr6
                case 7: v = s.pointee.dr7
                default: throw X86Exception.ud
                }
                setReg(i.pointee.rm, i.pointee.size, v)
            } else {
                let v = reg(i.pointee.rm, i.pointee.size)
                switch n {
                case 0: s.pointee.dr0 = v
                case 1: s.pointee.dr1 = v
                case 2: s.pointee.dr2 = v
                case 3: s.pointee.dr3 = v
                case 6: guard v >> 32 == 0 else { throw X86Exception.gp(0) }; s.pointee.dr6 = (v & 0xE00F) | 0xFFFF_0FF0
                case 7: guard v >> 32 == 0 else { throw X86Exception.gp(0) }; s.pointee.dr7 = (v & 0xFFFF_2BFF) | 0x400
                default: throw X86Exception.ud
                }
            }
        case .clts:
            try requireCPL0()
            s.pointee.cr0 &= ~CR0.ts
        case .wbinvd:
            try requireCPL0()
        case .clflush:
            _ = try translate(linearAddress(i), .read)
        case .group6: try descriptorTableRegister(i)
        case .group7Mem: try group7(i)
        case .fxsave, .fxrstor, .ldmxcsr, .stmxcsr, .rdrand:
            // Not offered by the CPU model yet (no x87/SSE state).
            throw X86Exception.ud
        default:
            throw X86Exception.ud
        }
    }

    // MARK: - Control registers

    func writeCR(_ n: UInt8, _ v: UInt64) throws(X86Exception) {
        let s = st
        switch n {
        case 0:
            guard v >> 32 == 0 else { throw X86Exception.gp(0) }
            var value = v | CR0.et
            value &= CR0.pe | CR0.mp | CR0.em | CR0.ts | CR0.et | CR0.ne | CR0.wp | CR0.am | CR0.nw | CR0.cd | CR0.pg
            if value & CR0.pg != 0 && value & CR0.pe == 0 { throw X86Exception.gp(0) }
            if value & CR0.nw != 0 && value & CR0.cd == 0 { throw X86Exception.gp(0) }
            let old = s.pointee.cr0
            if value & CR0.pg != 0 && old & CR0.pg == 0 && s.pointee.efer & EFER.lme != 0 {
                guard s.pointee.cr4 & CR4.pae != 0 else { throw X86Exception.gp(0) }
                s.pointee.efer |= EFER.lma
            }
            if value & CR0.pg == 0 && old & CR0.pg != 0 && s.pointee.efer & EFER.lma != 0 {
                guard s.pointee.codeMode != .long64 else { throw X86Exception.gp(0) }
                s.pointee.efer &= ~EFER.lma
            }
            s.pointee.cr0 = value
            if (old ^ value) & (CR0.pg | CR0.wp | CR0.pe) != 0 { flushTLB(global: true) }
            updateMode()
        case 2:
            s.pointee.cr2 = v
        case 3:
            if s.pointee.efer & EFER.lma != 0 && v & ~((1 << Self.physicalAddressBits) - 1) != 0 { throw X86Exception.gp(0) }
            s.pointee.cr3 = v
            flushTLB(global: false)
        case 4:
            let allowed: UInt64 = CR4.pse | CR4.pae | CR4.pge | CR4.osfxsr | CR4.osxmmexcpt | 0x4 | 0x8 | 0x40 | 0x100
            guard v & ~allowed == 0 else { throw X86Exception.gp(0) }
            if s.pointee.efer & EFER.lma != 0 && v & CR4.pae == 0 { throw X86Exception.gp(0) }
            let old = s.pointee.cr4
            s.pointee.cr4 = v
            if (old ^ v) & (CR4.pse | CR4.pae | CR4.pge) != 0 { flushTLB(global: true) }
        case 8:
            guard v & ~0xF == 0 else { throw X86Exception.gp(0) }
            s.pointee.cr8 = v
        default:
            throw X86Exception.ud
        }
    }

    // MARK: - MSRs

    func readMSR(_ index: UInt32) throws(X86Exception) -> UInt64 {
        let s = st
        switch index {
        case 0x10: return tsc
        case 0x8B: return 1 << 32   // IA32_BIOS_SIGN_ID: microcode revision 1 (Intel's early_init_intel reads it)
        case 0x10A: return CPUIDModel.archCapabilitiesMSR
        case 0x1B, 0x6E0, 0x800...0x8FF where unretainedAPIC != nil:
            guard let apic = unretainedAPIC else { throw X86Exception.gp(0) }
            platform.lock.lock()
            let v = apic._withUnsafeGuaranteedRef { $0.readMSR(index) }
            platform.lock.unlock()
            guard let v else { throw X86Exception.gp(0) }
            return v
        case 0x1B: return s.pointee.apicBase
        case 0xFE: return 0x508  // MTRRcap: 8 variable ranges, fixed ranges, write-combining
        case 0x174: return s.pointee.sysenterCS
        case 0x175: return s.pointee.sysenterESP
        case 0x176: return s.pointee.sysenterEIP
        case 0x1A0: return s.pointee.miscEnable
        case 0x277: return s.pointee.pat
        case 0x2FF: return s.pointee.mtrrDefType
        case 0x200...0x20F, 0x250, 0x258, 0x259, 0x268...0x26F:
            return mtrr(index).pointee
        case 0xC000_0080: return s.pointee.efer
        case 0xC000_0081: return s.pointee.star
        case 0xC000_0082: return s.pointee.lstar
        case 0xC000_0083: return s.pointee.cstar
        case 0xC000_0084: return s.pointee.sfmask
        case 0xC000_0100: return s.pointee.fs.base
        case 0xC000_0101: return s.pointee.gs.base
        case 0xC000_0102: return s.pointee.kernelGSBase
        case 0xC000_0103: return s.pointee.tscAux
        default:
            if Self.isReadAsZeroMSR(index) { return 0 }
            throw X86Exception.gp(0)
        }
    }

    func writeMSR(_ index: UInt32, _ v: UInt64) throws(X86Exception) {
        let s = st
        func canonical() throws(X86Exception) { if !Self.isCanonical(v) { throw X86Exception.gp(0) } }
        switch index {
        case 0x10: setTSC(v)
        case 0x8B: break            // writing 0 before CPUID + RDMSR is how the revision is read
        case 0x1B, 0x6E0, 0x800...0x8FF where unretainedAPIC != nil:
            guard let apic = unretainedAPIC else { throw X86Exception.gp(0) }
            platform.lock.lock()
            let ok = apic._withUnsafeGuaranteedRef { $0.writeMSR(index, v) }
            platform.lock.unlock()
            if !ok { throw X86Exception.gp(0) }
            if index == 0x1B { s.pointee.apicBase = v }
        case 0x1B:
            guard v & ~(0xFF_FFFF_F000 | 0x900) == 0 else { throw X86Exception.gp(0) }
            s.pointee.apicBase = v
        case 0x174: s.pointee.sysenterCS = v & 0xFFFF
        case 0x175: try canonical(); s.pointee.sysenterESP = v
        case 0x176: try canonical(); s.pointee.sysenterEIP = v
        case 0x1A0: s.pointee.miscEnable = v
        case 0x277:
            for k in 0..<8 {
                let t = (v >> UInt64(8 * k)) & 0xFF
                guard t == 0 || t == 1 || (t >= 4 && t <= 7) else { throw X86Exception.gp(0) }
            }
            s.pointee.pat = v
        case 0x2FF:
            guard v & ~0xCFF == 0 else { throw X86Exception.gp(0) }
            s.pointee.mtrrDefType = v
        case 0x200...0x20F, 0x250, 0x258, 0x259, 0x268...0x26F:
            mtrr(index).pointee = v
        case 0xC000_0080:
            guard v & ~(EFER.sce | EFER.lme | EFER.lma | EFER.nxe) == 0 else { throw X86Exception.gp(0) }
            var value = (v & ~EFER.lma) | (s.pointee.efer & EFER.lma)
            // LME cannot change while paging is on.
            if s.pointee.cr0 & CR0.pg != 0 && (value ^ s.pointee.efer) & EFER.lme != 0 { throw X86Exception.gp(0) }
            if value & EFER.lme == 0 { value &= ~EFER.lma }
            if (value ^ s.pointee.efer) & EFER.nxe != 0 { flushTLB(global: true) }
            s.pointee.efer = value
        case 0xC000_0081: s.pointee.star = v
        case 0xC000_0082: try canonical(); s.pointee.lstar = v
        case 0xC000_0083: try canonical(); s.pointee.cstar = v
        case 0xC000_0084: s.pointee.sfmask = v & 0xFFFF_FFFF
        case 0xC000_0100: try canonical(); s.pointee.fs.base = v
        case 0xC000_0101: try canonical(); s.pointee.gs.base = v
        case 0xC000_0102: try canonical(); s.pointee.kernelGSBase = v
        case 0xC000_0103: s.pointee.tscAux = v & 0xFFFF_FFFF
        default:
            if Self.isReadAsZeroMSR(index) { return }
            throw X86Exception.gp(0)
        }
    }

    /// Storage for the variable (0x200-0x20F) and fixed MTRRs.
    func mtrr(_ index: UInt32) -> UnsafeMutablePointer<UInt64> {
        let slot: Int
        switch index {
        case 0x200...0x20F: slot = Int(index - 0x200)
        case 0x250: slot = 16
        case 0x258: slot = 17
        case 0x259: slot = 18
        default: slot = 19 + Int((index &- 0x268) & 7)
        }
        return mtrrs + slot
    }

    // MARK: - SYSCALL / SYSRET (SDM Vol. 2; AMD APM Vol. 3)

    func syscallInstruction() throws(X86Exception) {
        let s = st
        guard s.pointee.efer & EFER.sce != 0, s.pointee.codeMode == .long64 else { throw X86Exception.ud }
        gpr[1] = s.pointee.rip
        gpr[11] = s.pointee.currentRFlags() & ~RFlags.rf
        let sel = UInt16(truncatingIfNeeded: s.pointee.star >> 32) & 0xFFFC
        s.pointee.cs = SegmentCache(selector: sel, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA09B)
        s.pointee.ss = SegmentCache(selector: sel &+ 8, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC093)
        s.pointee.rflags &= ~(s.pointee.sfmask | RFlags.rf)
        s.pointee.rflags |= 2
        s.pointee.rip = s.pointee.lstar
        updateMode()
    }

    func sysretInstruction(to64: Bool) throws(X86Exception) {
        let s = st
        guard s.pointee.efer & EFER.sce != 0 else { throw X86Exception.ud }
        try requireCPL0()
        let base = UInt16(truncatingIfNeeded: s.pointee.star >> 48)
        if to64 {
            guard Self.isCanonical(gpr[1]) else { throw X86Exception.gp(0) }
            s.pointee.cs = SegmentCache(selector: (base &+ 16) | 3, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA0FB)
            s.pointee.rip = gpr[1]
        } else {
            s.pointee.cs = SegmentCache(selector: base | 3, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0FB)
            s.pointee.rip = gpr[1] & 0xFFFF_FFFF
        }
        s.pointee.ss = SegmentCache(selector: (base &+ 8) | 3, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0F3)
        s.pointee.flagOp = .none
        s.pointee.rflags = (gpr[11] & RFlags.writable & ~(RFlags.rf | RFlags.vm)) | 2
        updateMode()
    }

    // MARK: - Descriptor-table registers

    /// 0F 00: SLDT, STR, LLDT, LTR, VERR, VERW.
    func descriptorTableRegister(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        guard s.pointee.cr0 & CR0.pe != 0 else { throw X86Exception.ud }
        switch i.pointee.sub {
        case 0, 1:
            let sel = UInt64(i.pointee.sub == 0 ? s.pointee.ldtr.selector : s.pointee.tr.selector)
            if i.pointee.isMem { try writeRM(i, 1, sel) } else { setReg(i.pointee.rm, i.pointee.size == 1 ? 1 : 2, sel) }
        case 2, 3:
            try requireCPL0()
            let sel = UInt16(truncatingIfNeeded: try readRM(i, 1))
            let isTR = i.pointee.sub == 3
            if sel & 0xFFFC == 0 {
                guard !isTR else { throw X86Exception.gp(0) }
                s.pointee.ldtr = SegmentCache(selector: sel, base: 0, limit: 0, attributes: 0)
                return
            }
            guard sel & 4 == 0 else { throw X86Exception.gp(UInt32(sel & 0xFFFC)) }
            let lo = try readDescriptor(sel)
            var seg = SegmentCache.fromDescriptor(selector: sel, low: lo)
            let type = seg.attributes & 0x1F
            if isTR { guard type == 0x9 || type == 0x1 else { throw X86Exception.gp(UInt32(sel & 0xFFFC)) } }
            else { guard type == 0x2 else { throw X86Exception.gp(UInt32(sel & 0xFFFC)) } }
            guard seg.present else { throw X86Exception.np(UInt32(sel & 0xFFFC)) }
            if s.pointee.efer & EFER.lma != 0 {
                let hi = try readDescriptor(sel &+ 8)
                seg.base |= (hi & 0xFFFF_FFFF) << 32
            }
            if isTR {
                try writeSystem(s.pointee.gdtBase &+ UInt64(sel & 0xFFF8) &+ 5, 0, (lo >> 40) | 2)
                seg.attributes |= 2
                s.pointee.tr = seg
            } else {
                s.pointee.ldtr = seg
            }
        default:
            // VERR/VERW: ZF = whether the segment is readable/writable at the current privilege.
            let sel = UInt16(truncatingIfNeeded: try readRM(i, 1))
            var ok = false
            if sel & 0xFFFC != 0, let lo = try? readDescriptor(sel) {
                let seg = SegmentCache.fromDescriptor(selector: sel, low: lo)
                let code = seg.attributes & 8 != 0, conforming = code && seg.attributes & 4 != 0
                if seg.attributes & 0x10 != 0 && (conforming || (seg.dpl >= s.pointee.cpl && seg.dpl >= UInt8(sel & 3))) {
                    ok = i.pointee.sub == 4 ? (!code || seg.attributes & 2 != 0) : (!code && seg.attributes & 2 != 0)
                }
            }
            let f = s.pointee.statusFlags() & ~RFlags.zf
            s.pointee.setStatusFlags(f | (ok ? RFlags.zf : 0))
        }
    }

    /// 0F 01 memory forms: SGDT, SIDT, LGDT, LIDT, SMSW, LMSW, INVLPG.
    func group7(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        let sub = i.pointee.sub
        let long = s.pointee.codeMode == .long64
        switch sub {
        case 0, 1:
            guard i.pointee.isMem else { throw X86Exception.ud }
            let la = linearAddress(i)
            let limit = UInt64(sub == 0 ? s.pointee.gdtLimit : s.pointee.idtLimit)
            let base = sub == 0 ? s.pointee.gdtBase : s.pointee.idtBase
            try writeLinear(la, 1, limit)
            if long { try writeLinear(la &+ 2, 3, base) } else { try writeLinear(la &+ 2, 2, base & 0xFFFF_FFFF) }
        case 2, 3:
            guard i.pointee.isMem else { throw X86Exception.ud }
            try requireCPL0()
            let la = linearAddress(i)
            let limit = UInt16(truncatingIfNeeded: try readLinear(la, 1))
            var base = long ? try readLinear(la &+ 2, 3) : try readLinear(la &+ 2, 2)
            if !long && i.pointee.size == 1 { base &= 0xFF_FFFF }
            if long && !Self.isCanonical(base) { throw X86Exception.gp(0) }
            if sub == 2 { s.pointee.gdtBase = base; s.pointee.gdtLimit = limit } else { s.pointee.idtBase = base; s.pointee.idtLimit = limit }
        case 4:
            let v = s.pointee.cr0
            if i.pointee.isMem { try writeRM(i, 1, v & 0xFFFF) } else { setReg(i.pointee.rm, i.pointee.size, v) }
        case 6:
            try requireCPL0()
            let v = try readRM(i, 1)
            // LMSW changes PE (set only), MP, EM, TS.
            let nv = (s.pointee.cr0 & ~0xE) | (v & 0xF) | (s.pointee.cr0 & CR0.pe)
            try writeCR(0, nv)
        case 7:
            guard i.pointee.isMem else { throw X86Exception.ud }
            try requireCPL0()
            flushTLBPage(linearAddress(i))
        default:
            throw X86Exception.ud
        }
    }
}
