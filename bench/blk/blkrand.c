/* Random 4 KiB O_DIRECT reads or writes on a block device, timed by the guest's own clock.
   Busybox has no fio; bench/blk.sh builds this statically and appends it to the benchmark
   initramfs. Usage: blkrand DEVICE read|write COUNT SPAN_MIB, or blkrand now (CLOCK_MONOTONIC seconds)
   Offsets come from a fixed xorshift stream (the same every run, in every VMM).
   Prints "blkrand <op> <count> <seconds>" or "blkrand error ..." on failure. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    /* busybox date has no %N: the shell times dd with this. */
    if (argc == 2 && strcmp(argv[1], "now") == 0) { printf("%.6f\n", now()); return 0; }
    if (argc != 5) { fprintf(stderr, "usage: blkrand DEVICE read|write COUNT SPAN_MIB\n"); return 2; }
    int writing = strcmp(argv[2], "write") == 0;
    long count = atol(argv[3]);
    uint64_t blocks = (uint64_t)atol(argv[4]) * 256;   /* 4 KiB blocks in the span */
    if (count <= 0 || blocks == 0) { fprintf(stderr, "blkrand: bad COUNT or SPAN_MIB\n"); return 2; }
    int fd = open(argv[1], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) { printf("blkrand error open %s\n", argv[1]); return 1; }
    void *buf;
    if (posix_memalign(&buf, 4096, 4096)) return 1;
    memset(buf, 0x5a, 4096);
    uint64_t x = 88172645463325252ull;
    double t0 = now();
    for (long i = 0; i < count; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        off_t off = (off_t)(x % blocks) * 4096;
        ssize_t n = writing ? pwrite(fd, buf, 4096, off) : pread(fd, buf, 4096, off);
        if (n != 4096) { printf("blkrand error %s at %lld\n", argv[2], (long long)off); return 1; }
    }
    double t1 = now();
    printf("blkrand %s %ld %.6f\n", argv[2], count, t1 - t0);
    return 0;
}
