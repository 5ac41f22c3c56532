/* timerun: runs one command in its own process group with a hard timeout and reports its wall
 * time (CLOCK_MONOTONIC, fork to reap), exit status and rusage on one line:
 *     wall_us=N status=S utime_us=N stime_us=N maxrss_kb=N
 * With -s MS -o DIR it instead lets the command run MS milliseconds, copies its
 * /proc/PID/{status,smaps_rollup,smaps,stat} into DIR, then ends it (SIGTERM, then SIGKILL).
 * On timeout the whole process group is killed, "status=timeout" is printed and timerun exits 124.
 * The report goes to stdout, or is appended to FILE with -r FILE (the command's own output then
 * cannot mix with it).
 * usage: timerun [-t TIMEOUT_MS] [-r FILE] [-s SNAPSHOT_MS -o DIR] -- COMMAND [ARG...]        */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t child = -1;
static int child_fd = -1; /* pidfd: poll wakes the moment the child ends */

static void on_signal(int sig) {
    if (child > 0) kill(-child, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void copy_file(const char *from, const char *dir, const char *name) {
    char to[4096];
    snprintf(to, sizeof to, "%s/%s", dir, name);
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in >= 0 && out >= 0) {
        char buf[65536];
        ssize_t n;
        while ((n = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)n) != n) break;
    } else {
        fprintf(stderr, "timerun: cannot copy %s to %s: %s\n", from, to, strerror(errno));
    }
    if (in >= 0) close(in);
    if (out >= 0) close(out);
}

/* Waits for the child until deadline_us; returns 1 if it ended (status in *st). */
static int wait_until(long long deadline_us, int *st, struct rusage *ru) {
    for (;;) {
        pid_t r = wait4(child, st, WNOHANG, ru);
        if (r == child) return 1;
        if (r < 0 && errno != EINTR) { perror("timerun: wait4"); exit(2); }
        long long left = deadline_us - now_us();
        if (left <= 0) return 0;
        if (child_fd >= 0) {
            struct pollfd p = {child_fd, POLLIN, 0};
            poll(&p, 1, (int)((left + 999) / 1000));
        } else {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
}

int main(int argc, char **argv) {
    long timeout_ms = 30000, snapshot_ms = -1;
    const char *dir = NULL, *report = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+t:s:o:r:")) != -1) {
        switch (opt) {
        case 't': timeout_ms = atol(optarg); break;
        case 's': snapshot_ms = atol(optarg); break;
        case 'o': dir = optarg; break;
        case 'r': report = optarg; break;
        default: fprintf(stderr, "usage: timerun [-t MS] [-r FILE] [-s MS -o DIR] -- CMD...\n"); return 2;
        }
    }
    if (optind >= argc || (snapshot_ms >= 0 && !dir)) {
        fprintf(stderr, "usage: timerun [-t MS] [-r FILE] [-s MS -o DIR] -- CMD...\n");
        return 2;
    }
    FILE *out = stdout;
    if (report && !(out = fopen(report, "ae"))) {
        fprintf(stderr, "timerun: cannot open %s: %s\n", report, strerror(errno));
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);

    long long start = now_us();
    child = fork();
    if (child < 0) { perror("timerun: fork"); return 2; }
    if (child == 0) {
        setpgid(0, 0);
        execvp(argv[optind], argv + optind);
        fprintf(stderr, "timerun: cannot run %s: %s\n", argv[optind], strerror(errno));
        _exit(127);
    }
    setpgid(child, child);
    child_fd = (int)syscall(SYS_pidfd_open, child, 0);

    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    if (snapshot_ms >= 0) {
        if (wait_until(start + snapshot_ms * 1000, &st, &ru)) {
            fprintf(stderr, "timerun: %s ended before the snapshot (wait status 0x%x)\n", argv[optind], st);
            return 3;
        }
        const char *names[] = {"status", "smaps_rollup", "smaps", "stat"};
        for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
            char from[64];
            snprintf(from, sizeof from, "/proc/%d/%s", (int)child, names[i]);
            copy_file(from, dir, names[i]);
        }
        kill(-child, SIGTERM);
        if (!wait_until(now_us() + 2000000, &st, &ru)) {
            kill(-child, SIGKILL);
            wait4(child, &st, 0, &ru);
        }
        fprintf(out, "snapshot_ms=%ld utime_us=%ld stime_us=%ld\n", snapshot_ms,
               ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec,
               ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec);
        return 0;
    }
    if (!wait_until(start + timeout_ms * 1000, &st, &ru)) {
        kill(-child, SIGKILL);
        wait4(child, &st, 0, &ru);
        fprintf(out, "wall_us=%lld status=timeout\n", now_us() - start);
        return 124;
    }
    long long wall = now_us() - start;
    kill(-child, SIGKILL); /* anything the command left behind in its group */
    int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    fprintf(out, "wall_us=%lld status=%d utime_us=%ld stime_us=%ld maxrss_kb=%ld\n", wall, status,
           ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec,
           ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec, ru.ru_maxrss);
    return 0;
}
