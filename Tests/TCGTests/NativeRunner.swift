import Foundation
import Glibc

/// Register file exchanged with the native stub: RAX..R15 (RSP unused) and RFLAGS.
struct RegisterFile: Equatable, CustomStringConvertible {
    var gpr = [UInt64](repeating: 0, count: 16)
    var rflags: UInt64 = 2

    var description: String {
        let names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
        var s = (0..<16).filter { $0 != 4 }.map { "\(names[$0])=\(String(gpr[$0], radix: 16))" }.joined(separator: " ")
        s += " rflags=\(String(rflags, radix: 16))"
        return s
    }
}

/// Runs instruction bytes on the host CPU: a stub in an RWX page loads a register file and
/// RFLAGS, executes the bytes, and stores registers and RFLAGS back. Only for instructions
/// that neither touch RSP nor fault.
final class NativeRunner {
    let page: UnsafeMutableRawPointer
    let pageSize = 4096
    /// Offset in the page of the saved state pointer, and of the per-call code.
    let slotOffset = 4088
    var state = UnsafeMutablePointer<UInt64>.allocate(capacity: 17)

    init?() {
        let p = mmap(nil, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { return nil }
        page = p
    }

    deinit {
        munmap(page, pageSize)
        state.deallocate()
    }

    static let loaded: [Int] = [0, 1, 2, 3, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]

    /// The stub for `insn`: prologue, loads, the instruction, stores, epilogue.
    func stub(_ insn: [UInt8]) -> [UInt8] {
        var c: [UInt8] = [0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57]
        func ripRel(_ bytes: [UInt8]) {
            // disp32 relative to the end of this instruction, to slotOffset.
            let end = c.count + bytes.count + 4
            let d = Int32(slotOffset - end)
            c += bytes
            withUnsafeBytes(of: d.littleEndian) { c += $0 }
        }
        ripRel([0x48, 0x89, 0x3D])                       // mov [rip+slot], rdi
        c += [0x48, 0x8B, 0x87, 0x80, 0, 0, 0, 0x50, 0x9D] // mov rax,[rdi+128]; push rax; popfq
        for r in Self.loaded {
            c += [r >= 8 ? 0x4C : 0x48, 0x8B, UInt8(0x87 | ((r & 7) << 3)), UInt8(8 * r), 0, 0, 0]
        }
        c += [0x48, 0x8B, 0x7F, 0x38]                     // mov rdi,[rdi+56]
        c += insn
        c += [0x57]                                       // push rdi
        ripRel([0x48, 0x8B, 0x3D])                       // mov rdi,[rip+slot]
        c += [0x8F, 0x47, 0x38]                           // pop [rdi+56]
        c += [0x9C, 0x8F, 0x87, 0x80, 0, 0, 0]            // pushfq; pop [rdi+128]
        for r in Self.loaded {
            c += [r >= 8 ? 0x4C : 0x48, 0x89, UInt8(0x87 | ((r & 7) << 3)), UInt8(8 * r), 0, 0, 0]
        }
        c += [0x41, 0x5F, 0x41, 0x5E, 0x41, 0x5D, 0x41, 0x5C, 0x5D, 0x5B, 0xC3]
        return c
    }

    func run(_ insn: [UInt8], _ input: RegisterFile) -> RegisterFile {
        let code = stub(insn)
        precondition(code.count < slotOffset)
        code.withUnsafeBytes { page.copyMemory(from: $0.baseAddress!, byteCount: code.count) }
        for k in 0..<16 { state[k] = input.gpr[k] }
        state[16] = input.rflags
        typealias Fn = @convention(c) (UnsafeMutablePointer<UInt64>) -> Void
        let fn = unsafeBitCast(page, to: Fn.self)
        fn(state)
        var out = RegisterFile()
        for k in 0..<16 { out.gpr[k] = state[k] }
        out.gpr[4] = input.gpr[4]
        out.rflags = state[16]
        return out
    }
}
