/* Prints the host TSC rate in Hz (the guest's under -accel kvm: both VMMs pass the TSC through),
   measured against CLOCK_MONOTONIC over half a second. */
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    double t0 = now();
    unsigned long long c0 = __rdtsc();
    while (now() - t0 < 0.5) {}
    double t1 = now();
    unsigned long long c1 = __rdtsc();
    printf("%.0f\n", (c1 - c0) / (t1 - t0));
    return 0;
}
