import Synchronization

/// The interpreter's dispatch: one switch over `Op` per instruction.
extension X86CPU {
    @inline(__always)
    func execute(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let s = st
        let size = i.pointee.size
        switch i.pointee.op {
        case .aluRMReg:
            let b = reg(i.pointee.reg, size), op = i.pointee.sub
            if op == 7 { _ = alu(7, try readRM(i, size), b, size) }
            else if isLocked(i) { try modifyRM(i, size) { a in self.alu(op, a, b, size) } }
            else { let (a, t) = try rmwRead(i, size); try rmwWrite(i, size, t, alu(op, a, b, size)) }
        case .aluRegRM:
            let b = try readRM(i, size), r = i.pointee.reg, op = i.pointee.sub
            let v = alu(op, reg(r, size), b, size)
            if op != 7 { setReg(r, size, v) }
        case .aluRMImm:
            let b = i.pointee.imm & sizeMask(size), op = i.pointee.sub
            if op == 7 { _ = alu(7, try readRM(i, size), b, size) }
            else if isLocked(i) { try modifyRM(i, size) { a in self.alu(op, a, b, size) } }
            else { let (a, t) = try rmwRead(i, size); try rmwWrite(i, size, t, alu(op, a, b, size)) }
        case .testRMReg:
            let a = try readRM(i, size)
            _ = alu(4, a, reg(i.pointee.reg, size), size)
        case .testRMImm:
            let a = try readRM(i, size)
            _ = alu(4, a, i.pointee.imm & sizeMask(size), size)
        case .incRM:
            if isLocked(i) { try modifyRM(i, size) { v in self.incDec(v, size, dec: false) } }
            else { let (v, t) = try rmwRead(i, size); try rmwWrite(i, size, t, incDec(v, size, dec: false)) }
        case .decRM:
            if isLocked(i) { try modifyRM(i, size) { v in self.incDec(v, size, dec: true) } }
            else { let (v, t) = try rmwRead(i, size); try rmwWrite(i, size, t, incDec(v, size, dec: true)) }
        case .notRM:
            try modifyRM(i, size) { v in ~v & sizeMask(size) }
        case .negRM:
            if isLocked(i) { try modifyRM(i, size) { v in self.alu(5, 0, v, size) } }
            else { let (v, t) = try rmwRead(i, size); try rmwWrite(i, size, t, alu(5, 0, v, size)) }
        case .mulRM: multiply(try readRM(i, size), size, signed: false)
        case .imulRM: multiply(try readRM(i, size), size, signed: true)
        case .divRM: try divide(try readRM(i, size), size, signed: false)
        case .idivRM: try divide(try readRM(i, size), size, signed: true)
        case .imulRegRM:
            let b = try readRM(i, size)
            setReg(i.pointee.reg, size, imul2(reg(i.pointee.reg, size), b, size))
        case .imulRegRMImm:
            let a = try readRM(i, size)
            setReg(i.pointee.reg, size, imul2(a, i.pointee.imm & sizeMask(size), size))
        case .shiftRM:
            let count = i.pointee.prefixes & Prefix.countCL != 0 ? gpr[1] & 0xFF : i.pointee.imm
            let op = i.pointee.sub
            if count & (size == 3 ? 63 : 31) == 0 {
                // No operation, but the operand is still read (and a 32-bit register still written).
                if i.pointee.isMem { _ = try readRM(i, size) } else if size == 2 { setReg(i.pointee.rm, 2, reg(i.pointee.rm, 2)) }
                return
            }
            let (v, t) = try rmwRead(i, size)
            try rmwWrite(i, size, t, shift(op, v, count, size))
        case .shld, .shrd:
            let count = i.pointee.prefixes & Prefix.countCL != 0 ? gpr[1] & 0xFF : i.pointee.imm
            let src = reg(i.pointee.reg, size), left = i.pointee.op == .shld
            if count & (size == 3 ? 63 : 31) == 0 {
                if i.pointee.isMem { _ = try readRM(i, size) } else if size == 2 { setReg(i.pointee.rm, 2, reg(i.pointee.rm, 2)) }
                return
            }
            let (v, t) = try rmwRead(i, size)
            try rmwWrite(i, size, t, doubleShift(left: left, v, src, count, size))
        case .btReg, .btImm:
            try bitTest(i, size)
        case .bsf, .bsr, .tzcnt, .lzcnt, .popcnt:
            bitScan(i.pointee.op, try readRM(i, size), size, dst: i.pointee.reg)
        case .bswap:
            let r = i.pointee.rm
            if size == 3 { gpr[Int(r & 15)] = gpr[Int(r & 15)].byteSwapped }
            else if size == 2 { setReg(r, 2, UInt64(UInt32(truncatingIfNeeded: gpr[Int(r & 15)]).byteSwapped)) }
            else { setReg(r, 1, 0) }  // 16-bit BSWAP is undefined; AMD and Intel clear the word.
        case .cmpxchg: try compareExchange(i, size)
        case .xadd:
            let src = reg(i.pointee.reg, size)
            if i.pointee.isMem {
                var old: UInt64 = 0
                try modifyRM(i, size) { v in old = v; return self.alu(0, v, src, size) }
                setReg(i.pointee.reg, size, old)
            } else {
                // Source gets the old destination first; the sum wins when both are one register.
                let old = reg(i.pointee.rm, size)
                let sum = alu(0, old, src, size)
                setReg(i.pointee.reg, size, old)
                setReg(i.pointee.rm, size, sum)
            }
        case .cmpxchg8b16b: try compareExchangeDouble(i)
        case .xchgRMReg:
            let src = reg(i.pointee.reg, size)
            var old: UInt64 = 0
            if i.pointee.isMem {
                try modifyLinear(linearAddress(i), size, locked: true) { v in old = v; return src }
            } else {
                old = reg(i.pointee.rm, size); setReg(i.pointee.rm, size, src)
            }
            setReg(i.pointee.reg, size, old)
        case .movRMReg: try writeRM(i, size, reg(i.pointee.reg, size))
        case .movRegRM: setReg(i.pointee.reg, size, try readRM(i, size))
        case .movRMImm: try writeRM(i, size, i.pointee.imm)
        case .movzx:
            setReg(i.pointee.reg, size, try readRM(i, i.pointee.sub))
        case .movsx:
            let src = i.pointee.sub
            setReg(i.pointee.reg, size, UInt64(bitPattern: signExtend(try readRM(i, src), src)))
        case .movsxd:
            setReg(i.pointee.reg, size, UInt64(bitPattern: signExtend(try readRM(i, 2), 2)))
        case .lea:
            var a = UInt64(bitPattern: Int64(i.pointee.disp))
            let b = i.pointee.base
            if b < 16 { a &+= gpr[Int(b)] } else if b == Reg.rip { a &+= s.pointee.rip }
            if i.pointee.index < 16 { a &+= gpr[Int(i.pointee.index)] << UInt64(i.pointee.scale) }
            if i.pointee.addrSize != 3 { a &= i.pointee.addrSize == 2 ? 0xFFFF_FFFF : 0xFFFF }
            setReg(i.pointee.reg, size, a)
        case .movbeLoad:
            let v = try readRM(i, size)
            setReg(i.pointee.reg, size, byteSwap(v, size))
        case .movbeStore:
            try writeRM(i, size, byteSwap(reg(i.pointee.reg, size), size))
        case .movMoffsLoad:
            setReg(Reg.rax, size, try readLinear(addressOf(i.pointee.imm, seg: i.pointee.seg, addrSize: i.pointee.addrSize), size))
        case .movMoffsStore:
            try writeLinear(addressOf(i.pointee.imm, seg: i.pointee.seg, addrSize: i.pointee.addrSize), size, reg(Reg.rax, size))
        case .movSregRM:
            let sel = UInt16(truncatingIfNeeded: try readRM(i, 1))
            try loadSegment(i.pointee.reg, sel)
            if i.pointee.reg == UInt8(SegReg.ss) { s.pointee.interruptShadow = true }
        case .movRMSreg:
            let sel = UInt64(segment(i.pointee.reg).selector)
            if i.pointee.isMem { try writeRM(i, 1, sel) } else { setReg(i.pointee.rm, size, sel) }
        case .cbw:
            switch size {
            case 1: setReg(Reg.rax, 1, UInt64(bitPattern: signExtend(gpr[0], 0)))
            case 2: setReg(Reg.rax, 2, UInt64(bitPattern: signExtend(gpr[0], 1)))
            default: gpr[0] = UInt64(bitPattern: signExtend(gpr[0], 2))
            }
        case .cwd:
            let negative = reg(Reg.rax, size) & signBit(size) != 0
            setReg(Reg.rdx, size, negative ? ~0 : 0)
        case .xlat:
            let off = (gpr[Int(Reg.rbx)] &+ (gpr[0] & 0xFF))
            setReg(Reg.rax, 0, try readLinear(addressOf(off, seg: i.pointee.seg, addrSize: i.pointee.addrSize), 0))
        case .cmov:
            let v = try readRM(i, size)
            if s.pointee.condition(i.pointee.sub) { setReg(i.pointee.reg, size, v) }
            else if size == 2 { setReg(i.pointee.reg, 2, reg(i.pointee.reg, 2)) }
        case .setcc:
            try writeRM(i, 0, s.pointee.condition(i.pointee.sub) ? 1 : 0)
        case .lahf:
            let f = s.pointee.currentRFlags()
            setReg(16, 0, (f & 0xD5) | 2)
        case .sahf:
            let ah = (gpr[0] >> 8) & 0xD5
            s.pointee.materializeFlags()
            s.pointee.rflags = (s.pointee.rflags & ~0xD5) | ah
        case .clc: s.pointee.materializeFlags(); s.pointee.rflags &= ~RFlags.cf
        case .stc: s.pointee.materializeFlags(); s.pointee.rflags |= RFlags.cf
        case .cmc: s.pointee.materializeFlags(); s.pointee.rflags ^= RFlags.cf
        case .cld: s.pointee.rflags &= ~RFlags.df
        case .std: s.pointee.rflags |= RFlags.df
        case .nop: break
        case .fence:
            // MFENCE orders this vCPU's stores before its later loads for other threads (vCPUs,
            // devices); LFENCE and SFENCE order nothing TSO leaves unordered.
            if i.pointee.sub == 6 { atomicMemoryFence(ordering: .sequentiallyConsistent) }
        case .pause: break
        case .sse: try executeSSE(i)
        case .mmx: try executeMMX(i)
        case .x87: try executeX87(i)
        case .fwait: try fwait()
        case .fxsave, .fxrstor, .ldmxcsr, .stmxcsr: try executeFXState(i)
        default:
            try executeControl(i)
        }
    }

    @inline(__always) func byteSwap(_ v: UInt64, _ size: UInt8) -> UInt64 {
        switch size {
        case 1: return UInt64(UInt16(truncatingIfNeeded: v).byteSwapped)
        case 2: return UInt64(UInt32(truncatingIfNeeded: v).byteSwapped)
        default: return v.byteSwapped
        }
    }

    /// BT/BTS/BTR/BTC: with a register bit offset and a memory operand the offset is signed and
    /// reaches outside the addressed operand (SDM Vol. 2 BT).
    func bitTest(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8) throws(X86Exception) {
        let bits = UInt64(8) << UInt64(size)
        let op = i.pointee.sub
        var bit: UInt64
        var la: UInt64 = 0
        if i.pointee.op == .btImm {
            bit = i.pointee.imm & (bits - 1)
            if i.pointee.isMem { la = linearAddress(i) }
        } else {
            let off = signExtend(reg(i.pointee.reg, size), size)
            bit = UInt64(bitPattern: off) & (bits - 1)
            if i.pointee.isMem {
                let bytes = Int64(1) << Int64(size)
                la = linearAddress(i) &+ UInt64(bitPattern: (off >> Int64(3 + size)) &* bytes)
                if i.pointee.addrSize != 3 { la &= 0xFFFF_FFFF }
            }
        }
        let mask = UInt64(1) << bit
        var old: UInt64 = 0
        let body: (UInt64) -> UInt64 = { v in
            old = v
            switch op {
            case 1: return v | mask
            case 2: return v & ~mask
            case 3: return v ^ mask
            default: return v
            }
        }
        if i.pointee.isMem {
            if op == 0 { old = try readLinear(la, size) }
            else { try modifyLinear(la, size, locked: i.pointee.prefixes & Prefix.lock != 0, body) }
        } else {
            let v = reg(i.pointee.rm, size)
            let r = body(v)
            if op != 0 { setReg(i.pointee.rm, size, r) }
        }
        let f = st.pointee.statusFlags() & ~RFlags.cf
        st.pointee.setStatusFlags(f | (old & mask != 0 ? RFlags.cf : 0))
    }

    /// CMPXCHG: compare rAX with the destination; equal stores the source, else loads rAX.
    func compareExchange(_ i: UnsafeMutablePointer<Instruction>, _ size: UInt8) throws(X86Exception) {
        let expected = reg(Reg.rax, size), src = reg(i.pointee.reg, size)
        var old: UInt64 = 0
        if i.pointee.isMem {
            // The destination is written in both cases (with its old value when unequal).
            try modifyLinear(linearAddress(i), size, locked: true) { v in old = v; return v == expected ? src : v }
        } else {
            old = reg(i.pointee.rm, size)
            if old == expected { setReg(i.pointee.rm, size, src) }
        }
        _ = alu(7, expected, old, size)
        if old != expected { setReg(Reg.rax, size, old) }
    }

    /// CMPXCHG8B / CMPXCHG16B (16-byte form needs 16-byte alignment).
    func compareExchangeDouble(_ i: UnsafeMutablePointer<Instruction>) throws(X86Exception) {
        let la = linearAddress(i)
        let s = st
        let wide = i.pointee.size == 3
        if wide {
            guard la & 15 == 0 else { throw X86Exception.gp(0) }
            _ = try translate(la, .write)
            if let p = try atomicPointer(la, 16) {
                // One host CMPXCHG16B on RAM: atomic against the other vCPUs.
                let a = p.assumingMemoryBound(to: Atomic<WordPair>.self)
                let expected = WordPair(first: UInt(truncatingIfNeeded: gpr[0]), second: UInt(truncatingIfNeeded: gpr[2]))
                let desired = WordPair(first: UInt(truncatingIfNeeded: gpr[3]), second: UInt(truncatingIfNeeded: gpr[1]))
                let r = a.pointee.compareExchange(expected: expected, desired: desired, ordering: .sequentiallyConsistent)
                if !r.exchanged {
                    gpr[0] = UInt64(truncatingIfNeeded: r.original.first); gpr[2] = UInt64(truncatingIfNeeded: r.original.second)
                }
                let f = s.pointee.statusFlags() & ~RFlags.zf
                s.pointee.setStatusFlags(f | (r.exchanged ? RFlags.zf : 0))
                return
            }
            let lo = try readLinear(la, 3), hi = try readLinear(la &+ 8, 3)
            let equal = lo == gpr[0] && hi == gpr[2]
            if equal {
                try writeLinear(la, 3, gpr[3]); try writeLinear(la &+ 8, 3, gpr[1])
            } else {
                try writeLinear(la, 3, lo); try writeLinear(la &+ 8, 3, hi)
                gpr[0] = lo; gpr[2] = hi
            }
            let f = s.pointee.statusFlags() & ~RFlags.zf
            s.pointee.setStatusFlags(f | (equal ? RFlags.zf : 0))
        } else {
            let expected = (gpr[2] << 32) | (gpr[0] & 0xFFFF_FFFF)
            let desired = (gpr[1] << 32) | (gpr[3] & 0xFFFF_FFFF)
            var old: UInt64 = 0
            try modifyLinear(la, 3, locked: true) { v in old = v; return v == expected ? desired : v }
            let equal = old == expected
            if !equal { setReg(Reg.rax, 2, old & 0xFFFF_FFFF); setReg(Reg.rdx, 2, old >> 32) }
            let f = s.pointee.statusFlags() & ~RFlags.zf
            s.pointee.setStatusFlags(f | (equal ? RFlags.zf : 0))
        }
    }
}
