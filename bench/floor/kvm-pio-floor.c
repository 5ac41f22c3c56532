/* kvm-pio-floor: the least a VMM can do to run a bench guest, so its per-exit cost is the floor
 * Keel is compared against. It opens /dev/kvm, creates a VM with one memory slot (anonymous
 * memory) and one vCPU (no in-kernel irqchip, no PIT, no devices), loads the PT_LOAD segments
 * of a PVH ELF, enters it at the PVH entry in 32-bit protected mode as the PVH ABI describes,
 * and calls KVM_RUN in a loop. A port write to 0xf4 (isa-debug-exit) ends it with status
 * (v << 1) | 1, as QEMU and Keel do; every other port access is counted and ignored.
 * For the analysis in BENCHMARKS.md (not for the floor figures) the floor can also create what
 * a board creates, to isolate what those kernel objects cost at start-up and at exit:
 *   -i  in-kernel irqchip (PIC, IOAPIC, LAPIC) then PIT, before the memory slot (Keel's order)
 *   -I  the same after the memory slot
 *   -p  -i without the PIT
 *   -s  split irqchip (KVM_CAP_SPLIT_IRQCHIP: LAPIC in the kernel only, as QEMU's microvm)
 * usage: kvm-pio-floor [-m MiB] [-v] [-i|-I|-p|-s] GUEST.elf                                  */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define DEBUG_EXIT_PORT 0xf4

static void die(const char *what) {
    fprintf(stderr, "kvm-pio-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *what) {
    fprintf(stderr, "kvm-pio-floor: %s\n", what);
    exit(1);
}

/* The PVH entry from the ELF's Xen note; 0 if there is none. */
static uint64_t pvh_entry(const uint8_t *img, size_t size, const Elf64_Ehdr *eh) {
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph = (const void *)(img + eh->e_phoff + (size_t)i * eh->e_phentsize);
        if (ph->p_type != PT_NOTE || ph->p_offset + ph->p_filesz > size) continue;
        size_t off = ph->p_offset, end = ph->p_offset + ph->p_filesz;
        while (off + sizeof(Elf64_Nhdr) <= end) {
            const Elf64_Nhdr *n = (const void *)(img + off);
            size_t name = off + sizeof *n, desc = name + ((n->n_namesz + 3) & ~3u);
            size_t next = desc + ((n->n_descsz + 3) & ~3u);
            if (next > end) break;
            if (n->n_type == XEN_ELFNOTE_PHYS32_ENTRY && n->n_namesz == 4 && memcmp(img + name, "Xen", 4) == 0)
                return n->n_descsz == 8 ? *(const uint64_t *)(img + desc) : *(const uint32_t *)(img + desc);
            off = next;
        }
    }
    return 0;
}

static struct kvm_segment flat(uint16_t selector, uint8_t type, int code_or_data) {
    struct kvm_segment s = {
        .base = 0, .limit = 0xffffffff, .selector = selector, .type = type, .present = 1,
        .dpl = 0, .db = 1, .s = (uint8_t)code_or_data, .l = 0, .g = 1,
    };
    return s;
}

static void create_irqchip(int vm, int with_pit) {
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    if (!with_pit) return;
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
}

int main(int argc, char **argv) {
    size_t mem_mib = 64;
    int verbose = 0, irqchip = 0, opt;
    while ((opt = getopt(argc, argv, "m:viIps")) != -1) {
        if (opt == 'm') mem_mib = strtoul(optarg, NULL, 0);
        else if (opt == 'v') verbose = 1;
        else if (opt == 'i') irqchip = 1;
        else if (opt == 'I') irqchip = 2;
        else if (opt == 'p') irqchip = 3;
        else if (opt == 's') irqchip = 4;
        else fail("usage: kvm-pio-floor [-m MiB] [-v] [-i|-I|-p|-s] GUEST.elf");
    }
    if (optind != argc - 1) fail("usage: kvm-pio-floor [-m MiB] [-v] [-i|-I|-p|-s] GUEST.elf");
    size_t mem_size = mem_mib << 20;

    int fd = open(argv[optind], O_RDONLY);
    if (fd < 0) die(argv[optind]);
    struct stat st;
    if (fstat(fd, &st) < 0) die("fstat");
    size_t size = (size_t)st.st_size;
    uint8_t *img = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (img == MAP_FAILED) die("mmap guest ELF");
    const Elf64_Ehdr *eh = (const void *)img;
    if (size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64)
        fail("not a 64-bit ELF");
    if (eh->e_phoff + (size_t)eh->e_phnum * eh->e_phentsize > size) fail("bad program headers");

    uint8_t *ram = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED) die("mmap guest RAM");
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph = (const void *)(img + eh->e_phoff + (size_t)i * eh->e_phentsize);
        if (ph->p_type != PT_LOAD) continue;
        if (ph->p_offset + ph->p_filesz > size || ph->p_filesz > ph->p_memsz || ph->p_paddr + ph->p_memsz > mem_size)
            fail("PT_LOAD segment outside the file or guest RAM");
        memcpy(ram + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
    }
    uint64_t entry = pvh_entry(img, size, eh);
    if (entry == 0) fail("no PVH entry note");

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) fail("unexpected KVM API version");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (irqchip == 1 || irqchip == 3) create_irqchip(vm, irqchip == 1);
    if (irqchip == 4) {
        struct kvm_enable_cap cap = {.cap = KVM_CAP_SPLIT_IRQCHIP, .args = {24}};
        if (ioctl(vm, KVM_ENABLE_CAP, &cap) < 0) die("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)");
    }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)(uintptr_t)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    if (irqchip == 2) create_irqchip(vm, 1);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run)) die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    /* The host's supported CPUID as is: long mode must be visible for the guest's EFER.LME. */
    int nent = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) fail("out of memory");
    cpuid->nent = (uint32_t)nent;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");

    /* PVH ABI: 32-bit protected mode, paging off, flat 4 GiB CS/DS, TR a busy TSS (0x67). */
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs = flat(0x08, 0xb, 1);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat(0x10, 0x3, 1);
    sregs.tr = (struct kvm_segment){.base = 0, .limit = 0x67, .selector = 0x18, .type = 0xb, .present = 1};
    sregs.cr0 = 0x11; /* PE | ET */
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = entry, .rflags = 0x2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    unsigned long long io_exits = 0, other = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == DEBUG_EXIT_PORT) {
                uint32_t v = 0;
                memcpy(&v, (uint8_t *)run + run->io.data_offset, run->io.size <= 4 ? run->io.size : 4);
                if (verbose) fprintf(stderr, "kvm-pio-floor: %llu port exits, %llu other exits, debug-exit 0x%x\n", io_exits, other, v);
                return (int)(((v << 1) | 1) & 0xff);
            }
            io_exits++;
            break;
        case KVM_EXIT_INTR:
            other++;
            break;
        case KVM_EXIT_HLT:
            fail("guest halted"); /* fail() does not return */
            break;
        default:
            fprintf(stderr, "kvm-pio-floor: unexpected exit reason %u after %llu port exits\n", run->exit_reason, io_exits);
            return 1;
        }
    }
}
