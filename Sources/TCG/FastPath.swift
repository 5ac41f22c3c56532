/// Decode-time specialization of the hottest instruction forms. `Instruction.fast` is a hint for
/// the interpreter only (`op` and the operand fields keep their meaning for every other reader):
/// a form fixes what `execute` would otherwise find out per instruction (register or memory
/// operand, which operand is the destination, the 64-bit branch and stack widths), so the run
/// loop runs it inline without the call into `execute` and its operand-kind branches.
enum FastForm {
    static let none: UInt8 = 0
    /// ALU op (`sub`) on two registers, result to `rm` (01/09/... with mod 11).
    static let aluToRM: UInt8 = 1
    /// ALU op on two registers, result to `reg` (03/0B/... with mod 11).
    static let aluToReg: UInt8 = 2
    /// ALU op of a register with an immediate (80/81/83 with mod 11).
    static let aluImm: UInt8 = 3
    /// ALU op, register with a memory source (03/0B/... with a memory operand).
    static let aluLoad: UInt8 = 4
    /// CMP of memory with a register, or with an immediate.
    static let cmpMemReg: UInt8 = 5
    static let cmpMemImm: UInt8 = 6
    static let movToRM: UInt8 = 7
    static let movToReg: UInt8 = 8
    static let load: UInt8 = 9
    static let store: UInt8 = 10
    static let movImm: UInt8 = 11
    static let storeImm: UInt8 = 12
    static let lea: UInt8 = 13
    static let incReg: UInt8 = 14
    static let decReg: UInt8 = 15
    static let testRegReg: UInt8 = 16
    static let testRegImm: UInt8 = 17
    static let movzxReg: UInt8 = 18
    static let movzxLoad: UInt8 = 19
    static let imulRegReg: UInt8 = 20
    // 64-bit mode, 64-bit operand size: rip and rsp need no masking.
    static let jcc64: UInt8 = 21
    static let jmp64: UInt8 = 22
    static let call64: UInt8 = 23
    static let ret64: UInt8 = 24
    static let push64: UInt8 = 25
    static let pop64: UInt8 = 26
    static let imulRegImm: UInt8 = 27
    /// Shift or rotate of a register (count from imm or CL).
    static let shiftReg: UInt8 = 28
    static let movsxdReg: UInt8 = 29
    static let movsxdLoad: UInt8 = 30
    static let movsxReg: UInt8 = 31
    static let movsxLoad: UInt8 = 32
    static let setccReg: UInt8 = 33
    static let cmovReg: UInt8 = 34
    static let cmovLoad: UInt8 = 35
    static let nop: UInt8 = 36
    static let testLoadImm: UInt8 = 37

    /// The fast form of a decoded instruction in `mode`, or `none`.
    static func of(_ i: Instruction, mode: CodeMode) -> UInt8 {
        if i.prefixes & Prefix.lock != 0 { return none }
        let mem = i.isMem
        let wide64 = mode == .long64 && i.size == 3
        switch i.op {
        case .aluRMReg: return mem ? (i.sub == 7 ? cmpMemReg : none) : aluToRM
        case .aluRegRM: return mem ? aluLoad : aluToReg
        case .aluRMImm: return mem ? (i.sub == 7 ? cmpMemImm : none) : aluImm
        case .movRMReg: return mem ? store : movToRM
        case .movRegRM: return mem ? load : movToReg
        case .movRMImm: return mem ? storeImm : movImm
        case .lea: return lea
        case .incRM: return mem ? none : incReg
        case .decRM: return mem ? none : decReg
        case .testRMReg: return mem ? none : testRegReg
        case .movzx: return mem ? movzxLoad : movzxReg
        case .imulRegRM: return mem ? none : imulRegReg
        case .imulRegRMImm: return mem ? none : imulRegImm
        case .shiftRM: return mem ? none : shiftReg
        case .movsxd: return mem ? movsxdLoad : movsxdReg
        case .movsx: return mem ? movsxLoad : movsxReg
        case .setcc: return mem ? none : setccReg
        case .cmov: return mem ? cmovLoad : cmovReg
        case .nop: return nop
        case .testRMImm: return mem ? testLoadImm : testRegImm
        case .jcc: return wide64 ? jcc64 : none
        case .jmpRel: return wide64 ? jmp64 : none
        case .callRel: return wide64 ? call64 : none
        case .ret: return wide64 && i.imm == 0 ? ret64 : none
        case .pushRM: return wide64 && !mem ? push64 : none
        case .popRM: return wide64 && !mem ? pop64 : none
        default: return none
        }
    }
}

/// Runs one instruction: its fast form inline, anything else through `execute`. A free
/// transparent function (not a method) so that it is always inlined into the run loop.
@_transparent
func step(_ cpu: X86CPU, _ i: UnsafeMutablePointer<Instruction>, _ s: UnsafeMutablePointer<CPUState>,
          _ gpr: UnsafeMutablePointer<UInt64>, _ tlb: UnsafeMutablePointer<TLBEntry>) throws(X86Exception) {
    let size = i.pointee.size
    switch i.pointee.fast {
    case FastForm.aluToRM:
        let r = i.pointee.rm, op = i.pointee.sub
        let v = s.pointee.aluResult(op, readGPR(gpr, r, size), readGPR(gpr, i.pointee.reg, size), size)
        if op != 7 { writeGPR(gpr, r, size, v) }
    case FastForm.aluToReg:
        let r = i.pointee.reg, op = i.pointee.sub
        let v = s.pointee.aluResult(op, readGPR(gpr, r, size), readGPR(gpr, i.pointee.rm, size), size)
        if op != 7 { writeGPR(gpr, r, size, v) }
    case FastForm.aluImm:
        let r = i.pointee.rm, op = i.pointee.sub
        let v = s.pointee.aluResult(op, readGPR(gpr, r, size), i.pointee.imm & sizeMask(size), size)
        if op != 7 { writeGPR(gpr, r, size, v) }
    case FastForm.aluLoad:
        let b = try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb)
        let r = i.pointee.reg, op = i.pointee.sub
        let v = s.pointee.aluResult(op, readGPR(gpr, r, size), b, size)
        if op != 7 { writeGPR(gpr, r, size, v) }
    case FastForm.cmpMemReg:
        let a = try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb)
        _ = s.pointee.aluResult(7, a, readGPR(gpr, i.pointee.reg, size), size)
    case FastForm.cmpMemImm:
        let a = try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb)
        _ = s.pointee.aluResult(7, a, i.pointee.imm & sizeMask(size), size)
    case FastForm.movToRM: writeGPR(gpr, i.pointee.rm, size, readGPR(gpr, i.pointee.reg, size))
    case FastForm.movToReg: writeGPR(gpr, i.pointee.reg, size, readGPR(gpr, i.pointee.rm, size))
    case FastForm.load:
        writeGPR(gpr, i.pointee.reg, size, try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb))
    case FastForm.store:
        try store(cpu, s.pointee.operandAddress(i, gpr), size, readGPR(gpr, i.pointee.reg, size), s, tlb)
    case FastForm.movImm: writeGPR(gpr, i.pointee.rm, size, i.pointee.imm)
    case FastForm.storeImm:
        try store(cpu, s.pointee.operandAddress(i, gpr), size, i.pointee.imm, s, tlb)
    case FastForm.lea:
        var a = UInt64(bitPattern: Int64(i.pointee.disp))
        let b = i.pointee.base
        if b < 16 { a &+= gpr[Int(b)] } else if b == Reg.rip { a &+= s.pointee.rip }
        if i.pointee.index < 16 { a &+= gpr[Int(i.pointee.index)] << UInt64(i.pointee.scale) }
        if i.pointee.addrSize != 3 { a &= i.pointee.addrSize == 2 ? 0xFFFF_FFFF : 0xFFFF }
        writeGPR(gpr, i.pointee.reg, size, a)
    case FastForm.incReg:
        let r = i.pointee.rm
        writeGPR(gpr, r, size, s.pointee.incDecResult(readGPR(gpr, r, size), size, dec: false))
    case FastForm.decReg:
        let r = i.pointee.rm
        writeGPR(gpr, r, size, s.pointee.incDecResult(readGPR(gpr, r, size), size, dec: true))
    case FastForm.testRegReg:
        _ = s.pointee.aluResult(4, readGPR(gpr, i.pointee.rm, size), readGPR(gpr, i.pointee.reg, size), size)
    case FastForm.testRegImm:
        _ = s.pointee.aluResult(4, readGPR(gpr, i.pointee.rm, size), i.pointee.imm & sizeMask(size), size)
    case FastForm.movzxReg:
        writeGPR(gpr, i.pointee.reg, size, readGPR(gpr, i.pointee.rm, i.pointee.sub))
    case FastForm.movzxLoad:
        writeGPR(gpr, i.pointee.reg, size, try load(cpu, s.pointee.operandAddress(i, gpr), i.pointee.sub, s, tlb))
    case FastForm.imulRegReg:
        let r = i.pointee.reg
        let a = readGPR(gpr, r, size), b = readGPR(gpr, i.pointee.rm, size)
        writeGPR(gpr, r, size, s.pointee.imulResult(a, b, size))
    case FastForm.imulRegImm:
        let a = readGPR(gpr, i.pointee.rm, size)
        writeGPR(gpr, i.pointee.reg, size, s.pointee.imulResult(a, i.pointee.imm & sizeMask(size), size))
    case FastForm.jcc64:
        if s.pointee.condition(i.pointee.sub) { s.pointee.rip &+= i.pointee.imm }
    case FastForm.jmp64:
        s.pointee.rip &+= i.pointee.imm
    case FastForm.call64:
        let ret = s.pointee.rip
        let sp = gpr[Int(Reg.rsp)] &- 8
        try store(cpu, sp, 3, ret, s, tlb)
        gpr[Int(Reg.rsp)] = sp
        s.pointee.rip = ret &+ i.pointee.imm
    case FastForm.ret64:
        let sp = gpr[Int(Reg.rsp)]
        let t = try load(cpu, sp, 3, s, tlb)
        if !X86CPU.isCanonical(t) { throw X86Exception.gp(0) }
        gpr[Int(Reg.rsp)] = sp &+ 8
        s.pointee.rip = t
    case FastForm.push64:
        let v = gpr[Int(i.pointee.rm & 15)]
        let sp = gpr[Int(Reg.rsp)] &- 8
        try store(cpu, sp, 3, v, s, tlb)
        gpr[Int(Reg.rsp)] = sp
    case FastForm.pop64:
        let sp = gpr[Int(Reg.rsp)]
        let v = try load(cpu, sp, 3, s, tlb)
        gpr[Int(Reg.rsp)] = sp &+ 8
        gpr[Int(i.pointee.rm & 15)] = v
    case FastForm.shiftReg:
        let r = i.pointee.rm
        let raw = i.pointee.prefixes & Prefix.countCL != 0 ? gpr[1] & 0xFF : i.pointee.imm
        let count = raw & (size == 3 ? 63 : 31)
        let v = readGPR(gpr, r, size)
        if count == 0 {
            writeGPR(gpr, r, size, v)  // no flags change; a 32-bit register is still zero-extended
        } else if let res = s.pointee.shiftResult(i.pointee.sub, v, count, size) {
            writeGPR(gpr, r, size, res)
        } else {
            writeGPR(gpr, r, size, cpu.shift(i.pointee.sub, v, count, size))
        }
    case FastForm.movsxdReg:
        writeGPR(gpr, i.pointee.reg, size, UInt64(bitPattern: signExtend(readGPR(gpr, i.pointee.rm, 2), 2)))
    case FastForm.movsxdLoad:
        let v = try load(cpu, s.pointee.operandAddress(i, gpr), 2, s, tlb)
        writeGPR(gpr, i.pointee.reg, size, UInt64(bitPattern: signExtend(v, 2)))
    case FastForm.movsxReg:
        let src = i.pointee.sub
        writeGPR(gpr, i.pointee.reg, size, UInt64(bitPattern: signExtend(readGPR(gpr, i.pointee.rm, src), src)))
    case FastForm.movsxLoad:
        let src = i.pointee.sub
        let v = try load(cpu, s.pointee.operandAddress(i, gpr), src, s, tlb)
        writeGPR(gpr, i.pointee.reg, size, UInt64(bitPattern: signExtend(v, src)))
    case FastForm.setccReg:
        writeGPR(gpr, i.pointee.rm, 0, s.pointee.condition(i.pointee.sub) ? 1 : 0)
    case FastForm.cmovReg:
        let r = i.pointee.reg
        // Not taken, a 32-bit destination is still zero-extended.
        let v = s.pointee.condition(i.pointee.sub) ? readGPR(gpr, i.pointee.rm, size) : readGPR(gpr, r, size)
        writeGPR(gpr, r, size, v)
    case FastForm.cmovLoad:
        let m = try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb)
        let r = i.pointee.reg
        writeGPR(gpr, r, size, s.pointee.condition(i.pointee.sub) ? m : readGPR(gpr, r, size))
    case FastForm.nop:
        break
    case FastForm.testLoadImm:
        let a = try load(cpu, s.pointee.operandAddress(i, gpr), size, s, tlb)
        _ = s.pointee.aluResult(4, a, i.pointee.imm & sizeMask(size), size)
    default:
        try cpu.execute(i)
    }
}

@_transparent
func load(_ cpu: X86CPU, _ la: UInt64, _ size: UInt8, _ s: UnsafeMutablePointer<CPUState>,
          _ tlb: UnsafeMutablePointer<TLBEntry>) throws(X86Exception) -> UInt64 {
    if let v = tlbRead(tlb, la, size, user: s.pointee.userTag) { return v }
    return try cpu.readSlow(la, 1 << Int(size), .read)
}

@_transparent
func store(_ cpu: X86CPU, _ la: UInt64, _ size: UInt8, _ v: UInt64, _ s: UnsafeMutablePointer<CPUState>,
           _ tlb: UnsafeMutablePointer<TLBEntry>) throws(X86Exception) {
    if tlbWrite(tlb, la, size, v, user: s.pointee.userTag) { return }
    try cpu.writeSlow(la, 1 << Int(size), v)
}
