/* RSS benchmark guest: halts at once with interrupts off. With an in-kernel LAPIC KVM keeps
   the vCPU asleep inside KVM_RUN, so the host sees an idle process; the guest touches only
   the page holding this code (plus what the VMM writes for booting). */
#include "bench-pvh-note.h"

    .text
    .code32
    .globl pvh_start32
pvh_start32:
1:  cli
    hlt
    jmp 1b

    .section .note.GNU-stack, "", @progbits
