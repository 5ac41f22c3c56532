/* The PVH entry note (Xen PVH ABI, XEN_ELFNOTE_PHYS32_ENTRY = 18): the 32-bit physical entry. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18
    .asciz "Xen"
    .long pvh_start32
    .balign 4

/* isa-debug-exit: a write of v ends the VMM with status (v << 1) | 1; 0x10 gives 33. */
#define DEBUG_EXIT_PORT  0xf4
#define DEBUG_EXIT_VALUE 0x10
