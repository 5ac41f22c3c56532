#define _GNU_SOURCE
#include <sys/mman.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include "ckeel.h"

int ckeel_memfd_create(const char *name, unsigned flags) { return memfd_create(name, flags); }
int ckeel_punch_hole(int fd, long offset, long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

#include <pthread.h>
int ckeel_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
int ckeel_get_thread_name(char *buffer, size_t size) { return pthread_getname_np(pthread_self(), buffer, size); }

#include <unistd.h>
int ckeel_gettid(void) { return (int)gettid(); }

#include <linux/fs.h>
int ckeel_fallocate(int fd, int mode, long offset, long length) { return fallocate(fd, mode, offset, length); }
int ckeel_o_direct(void) { return O_DIRECT; }
long ckeel_seek_data(int fd, long offset) { return lseek(fd, offset, SEEK_DATA); }
long ckeel_seek_hole(int fd, long offset) { return lseek(fd, offset, SEEK_HOLE); }
int ckeel_blkgetsize64(int fd, unsigned long long *size) { return ioctl(fd, BLKGETSIZE64, size); }
#include <sys/vfs.h>
long ckeel_fs_type(int fd) { struct statfs s; return fstatfs(fd, &s) == 0 ? (long)s.f_type : -1; }
#include <sys/uio.h>
long ckeel_preadv_nowait(int fd, const struct iovec *iov, int count, long offset) {
    return preadv2(fd, iov, count, offset, RWF_NOWAIT);
}

#include <string.h>
#include <net/if.h>
int ckeel_tun_set_iff(int fd, char *name, int flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = (short)flags;
    int r = ioctl(fd, TUNSETIFF, &ifr);
    if (r == 0) memcpy(name, ifr.ifr_name, IFNAMSIZ);
    return r;
}
int ckeel_tun_get_iff(int fd, char *name, int *flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int r = ioctl(fd, TUNGETIFF, &ifr);
    if (r == 0) { memcpy(name, ifr.ifr_name, IFNAMSIZ); *flags = (unsigned short)ifr.ifr_flags; }
    return r;
}
