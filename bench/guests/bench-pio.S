/* PIO exit benchmark guest: COUNT `outb` to port PIO_PORT from ring 3 of 64-bit long mode, then
   isa-debug-exit. Ring 3 with IOPL 3 because on a PVM host guest user mode runs natively while
   guest kernel code is emulated: the loop then costs exits only. Built with -DCOUNT=N (N = 0
   gives the same guest without the loop, the baseline that is subtracted); -DRING0 runs the same
   loop in ring 0 instead (emulated on PVM, but there an exit from ring 0 is cheaper). Port 0xe0 is
   pc-testdev's; the bench runs without that device, so the write reaches no device model. */
#include "bench-pvh-note.h"

#ifndef COUNT
#error "build with -DCOUNT=N"
#endif
#define PIO_PORT 0xe0
#define MSR_EFER 0xc0000080

    .text
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    lgdt gdt_ptr
    movl %cr4, %eax
    orl $0x20, %eax               /* CR4.PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $0x100, %eax              /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax         /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    ljmp $0x08, $long64

    .code64
long64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq $kernel_stack_top, %rsp
#ifdef RING0
    jmp user_loop                 /* -DRING0: the same loop from kernel mode (emulated on PVM) */
#endif
    pushq $0x23                   /* SS: user data, RPL 3 */
    pushq $user_stack_top
    pushq $0x3002                 /* RFLAGS: IOPL 3, IF clear */
    pushq $0x2b                   /* CS: user code 64-bit, RPL 3 */
    pushq $user_loop
    iretq

user_loop:
    movl $COUNT, %ecx
    testl %ecx, %ecx
    jz 2f
1:  outb %al, $PIO_PORT
    decl %ecx
    jnz 1b
2:  movb $DEBUG_EXIT_VALUE, %al
    outb %al, $DEBUG_EXIT_PORT
3:  pause
    jmp 3b

    .data
    .balign 4096
/* Identity map of the first 2 MiB (one 2 MiB page), user-accessible: P | RW | US (| PS). */
pml4: .quad pdpt + 7
      .fill 511, 8, 0
pdpt: .quad pd + 7
      .fill 511, 8, 0
pd:   .quad 0x87
      .fill 511, 8, 0
gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff      /* 0x10 kernel data */
    .quad 0
    .quad 0x00cff2000000ffff      /* 0x20 user data, DPL 3 */
    .quad 0x00affa000000ffff      /* 0x28 user code, 64-bit, DPL 3 */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .bss
    .balign 16
    .skip 4096
kernel_stack_top:
    .skip 4096
user_stack_top:

    .section .note.GNU-stack, "", @progbits
