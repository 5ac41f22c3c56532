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
