/* Keel test-guest runtime: freestanding x86-64, identity-mapped low 4 GiB, polling COM1. */
#ifndef KEEL_GUEST_RT_H
#define KEEL_GUEST_RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed long s64;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
#define NULL ((void *)0)

/* main's return value goes to isa-debug-exit; the host sees (code << 1) | 1. */
#define EXIT_PASS 0x10 /* host status 33 */
#define EXIT_FAIL 0x01 /* host status 3 */
#define EXIT_TRAP 0x7e /* host status 253: unexpected CPU exception */

/* How the guest was entered (set by the entry stubs). */
enum { BOOT_PVH = 1, BOOT_LINUX32 = 2, BOOT_LINUX64 = 3 };
extern u32 boot_kind;
extern u64 boot_ptr;       /* PVH: hvm_start_info; Linux: boot_params */
extern u32 entry_cr0;      /* CR0 as the 32-bit entry found it (PVH / Linux 32-bit only) */
extern u32 entry_efer_lo;  /* EFER low half as the 32-bit entry found it */

/* Xen PVH hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
} __attribute__((packed));
struct hvm_memmap_entry { u64 addr, size; u32 type, reserved; } __attribute__((packed));

/* Port I/O. */
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }

/* MMIO: volatile single accesses of exactly the stated width. */
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

static inline u64 rdmsr(u32 msr) {
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v) {
    __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* Freestanding string helpers (gcc may also emit calls to memcpy/memset). */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* COM1 16550A, polling. */
#define COM1 0x3f8
void serial_init(void);
void serial_putc(char c);
int serial_getc_poll(void); /* -1 if no byte ready */
void kputs(const char *s);
int kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* isa-debug-exit at 0xf4; falls back to halting if the device is missing. */
void debug_exit(u32 code) __attribute__((noreturn));
void halt_forever(void) __attribute__((noreturn));

/* Command line from the boot protocol; "key=value" lookup (value ends at space). */
const char *boot_cmdline(void);
const char *cmdline_value(const char *key);
int cmdline_has(const char *word);
u64 parse_u64(const char *s); /* decimal or 0x-hex, stops at the first non-digit */

/* CMOS / RTC. */
u8 cmos_read(u8 reg);
void cmos_write(u8 reg, u8 v);
/* Waits until `seconds` RTC second transitions have passed or `done()` returns nonzero. */
int rtc_wait(unsigned seconds, int (*done)(void));

/* ACPI. */
struct acpi_sdt {
    char signature[4];
    u32 length;
    u8 revision, checksum;
    char oem_id[6], oem_table_id[8];
    u32 oem_revision, creator_id, creator_revision;
} __attribute__((packed));
void *acpi_rsdp(void);
struct acpi_sdt *acpi_find_table(const char *sig);

/* Interrupts: IDT with exception reporting; vectors 32..47 dispatch to handlers, and an
   exception vector (0..31) with a handler goes to it instead of being reported. */
struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
void set_irq_handler(unsigned vector, void (*fn)(struct trap_frame *));
void load_idt(void); /* for APs: the BSP's IDT */

/* Local APIC (xAPIC MMIO) and IOAPIC. */
#define LAPIC_BASE 0xfee00000ull
#define IOAPIC_BASE 0xfec00000ull
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
u32 lapic_id(void);
void lapic_enable(void);
void lapic_eoi(void);
void ioapic_route(unsigned pin, u8 vector, u8 dest_apic_id); /* edge, active high, fixed */

/* Selectors of the runtime's GDT (entry.S). */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS (0x20 | 3)
#define USER_CS (0x28 | 3)
/* Runs fn(arg) in ring 3 with IOPL 3 (port I/O allowed); fn must not return. */
void enter_user_mode(void (*fn)(u64), u64 arg, void *stack_top) __attribute__((noreturn));

int main(void);

#endif
