/* Launch benchmark guest: the first instruction at the PVH entry writes isa-debug-exit,
   so a run measures the VMM's start-up and tear-down and one exit, nothing else. */
#include "bench-pvh-note.h"

    .text
    .code32
    .globl pvh_start32
pvh_start32:
    movb $DEBUG_EXIT_VALUE, %al
    outb %al, $DEBUG_EXIT_PORT
1:  cli
    hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
