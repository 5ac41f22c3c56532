// The C shim: ioctl request numbers (macros Swift cannot import) and thin variadic wrappers. No logic.
#ifndef CKEEL_H
#define CKEEL_H
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/sysinfo.h>
#include <fcntl.h>
#include <termios.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/memfd.h>
#include <signal.h>

static inline int ckeel_ioctl(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
static inline int ckeel_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
static inline int ckeel_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
/* PAUSE: a spin-wait hint (halt polling). */
static inline void ckeel_cpu_relax(void) { __builtin_ia32_pause(); }
// GNU extensions, compiled in shim.c so this header need not define _GNU_SOURCE.
int ckeel_memfd_create(const char *name, unsigned flags);
int ckeel_punch_hole(int fd, long offset, long length);
int ckeel_set_thread_name(const char *name);  /* at most 15 characters */
int ckeel_get_thread_name(char *buffer, size_t size);  /* the calling thread's */
int ckeel_gettid(void);
// Block backends: fallocate with explicit FALLOC_FL_* flags, O_DIRECT, SEEK_DATA/SEEK_HOLE, BLKGETSIZE64.
int ckeel_fallocate(int fd, int mode, long offset, long length);
int ckeel_o_direct(void);
long ckeel_seek_data(int fd, long offset);
long ckeel_seek_hole(int fd, long offset);
int ckeel_blkgetsize64(int fd, unsigned long long *size);
/* fstatfs's f_type (the file system's magic), -1 on error. */
long ckeel_fs_type(int fd);
#include <sys/uio.h>
/* preadv2(RWF_NOWAIT): -1 with EAGAIN where the data is not all in the page cache. */
long ckeel_preadv_nowait(int fd, const struct iovec *iov, int count, long offset);
static const int CKEEL_FALLOC_PUNCH_HOLE = 0x02 | 0x01;  /* PUNCH_HOLE | KEEP_SIZE */
static const int CKEEL_FALLOC_ZERO_RANGE = 0x10 | 0x01;  /* ZERO_RANGE | KEEP_SIZE */
static inline int ckeel_open(const char *path, int flags, unsigned mode) { return open(path, flags, mode); }

static const unsigned long CKEEL_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKEEL_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKEEL_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKEEL_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKEEL_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKEEL_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long CKEEL_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKEEL_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKEEL_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKEEL_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKEEL_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKEEL_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKEEL_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKEEL_KVM_IRQFD = KVM_IRQFD;
static const unsigned long CKEEL_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKEEL_KVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long CKEEL_KVM_RUN = KVM_RUN;
static const unsigned long CKEEL_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKEEL_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKEEL_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKEEL_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKEEL_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKEEL_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKEEL_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKEEL_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKEEL_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKEEL_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKEEL_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKEEL_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKEEL_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKEEL_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
static const unsigned long CKEEL_KVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CKEEL_KVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;

// A no-op handler: the signal only has to interrupt KVM_RUN (with immediate_exit set).
static void ckeel_kick_handler(int sig) { (void)sig; }
static inline int ckeel_install_kick_handler(int sig) {
    struct sigaction sa = {0};
    sa.sa_handler = ckeel_kick_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, 0);
}

// struct kvm_run's exit payloads live in an anonymous union; these return pointers into it.
static inline struct kvm_run_io_s { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; } *
ckeel_run_io(struct kvm_run *run) { return (struct kvm_run_io_s *)&run->io; }
static inline struct kvm_run_mmio_s { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; } *
ckeel_run_mmio(struct kvm_run *run) { return (struct kvm_run_mmio_s *)&run->mmio; }
static inline __u32 ckeel_run_system_event_type(struct kvm_run *run) { return run->system_event.type; }
static inline __u64 ckeel_run_fail_entry_reason(struct kvm_run *run) { return run->fail_entry.hardware_entry_failure_reason; }
static inline __u32 ckeel_run_internal_suberror(struct kvm_run *run) { return run->internal.suberror; }
static inline __u8 ckeel_run_eoi_vector(struct kvm_run *run) { return run->eoi.vector; }

// tun/tap (the tap netdev): ioctl numbers and flags, and ifreq-based calls compiled in shim.c
// (struct ifreq's union is awkward from Swift). `name` is IFNAMSIZ (16) bytes, in and out.
#include <linux/if_tun.h>
static const unsigned long CKEEL_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned long CKEEL_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CKEEL_TUNGETFEATURES = TUNGETFEATURES;
static const int CKEEL_IFF_TAP = IFF_TAP;
static const int CKEEL_IFF_NO_PI = IFF_NO_PI;
static const int CKEEL_IFF_VNET_HDR = IFF_VNET_HDR;
static const int CKEEL_IFF_MULTI_QUEUE = IFF_MULTI_QUEUE;
int ckeel_tun_set_iff(int fd, char *name, int flags);
int ckeel_tun_get_iff(int fd, char *name, int *flags);

// vhost-kernel (/dev/vhost-net, /dev/vhost-vsock): ioctl numbers from <linux/vhost.h>; the structs
// (vhost_vring_state, vhost_vring_file, vhost_vring_addr, vhost_memory_region) import as they are.
#include <linux/vhost.h>
static const unsigned long CKEEL_VHOST_GET_FEATURES = VHOST_GET_FEATURES;
static const unsigned long CKEEL_VHOST_SET_FEATURES = VHOST_SET_FEATURES;
static const unsigned long CKEEL_VHOST_SET_OWNER = VHOST_SET_OWNER;
static const unsigned long CKEEL_VHOST_RESET_OWNER = VHOST_RESET_OWNER;
static const unsigned long CKEEL_VHOST_SET_MEM_TABLE = VHOST_SET_MEM_TABLE;
static const unsigned long CKEEL_VHOST_SET_VRING_NUM = VHOST_SET_VRING_NUM;
static const unsigned long CKEEL_VHOST_SET_VRING_ADDR = VHOST_SET_VRING_ADDR;
static const unsigned long CKEEL_VHOST_SET_VRING_BASE = VHOST_SET_VRING_BASE;
static const unsigned long CKEEL_VHOST_GET_VRING_BASE = VHOST_GET_VRING_BASE;
static const unsigned long CKEEL_VHOST_SET_VRING_KICK = VHOST_SET_VRING_KICK;
static const unsigned long CKEEL_VHOST_SET_VRING_CALL = VHOST_SET_VRING_CALL;
static const unsigned long CKEEL_VHOST_SET_VRING_ERR = VHOST_SET_VRING_ERR;
static const unsigned long CKEEL_VHOST_GET_BACKEND_FEATURES = VHOST_GET_BACKEND_FEATURES;
static const unsigned long CKEEL_VHOST_SET_BACKEND_FEATURES = VHOST_SET_BACKEND_FEATURES;
static const unsigned long CKEEL_VHOST_NET_SET_BACKEND = VHOST_NET_SET_BACKEND;
static const unsigned long CKEEL_VHOST_VSOCK_SET_GUEST_CID = VHOST_VSOCK_SET_GUEST_CID;
static const unsigned long CKEEL_VHOST_VSOCK_SET_RUNNING = VHOST_VSOCK_SET_RUNNING;
static const int CKEEL_VHOST_NET_F_VIRTIO_NET_HDR = VHOST_NET_F_VIRTIO_NET_HDR;
static const int CKEEL_VHOST_F_LOG_ALL = VHOST_F_LOG_ALL;
// struct vhost_memory ends in a flexible array: its header size, where regions[] starts.
static const unsigned long CKEEL_VHOST_MEMORY_HEADER_SIZE = sizeof(struct vhost_memory);

#endif
