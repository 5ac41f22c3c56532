/* The guest end of VhostKernelLinuxTests' vsock test, linked static into the initramfs.
 *   vsock_echo listen PORT      accept one AF_VSOCK stream connection, echo it until EOF
 *   vsock_echo send CID PORT MSG  connect to CID:PORT, send MSG, print what comes back
 * Prints "VSOCK-ECHOED <n>" / "VSOCK-SENT <reply>" or "VSOCK-FAIL <why>". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *what) {
    printf("VSOCK-FAIL %s: %s\n", what, strerror(errno));
    fflush(stdout);
    return 1;
}

static struct sockaddr_vm address(unsigned cid, unsigned port) {
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "listen") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return fail("socket");
        struct sockaddr_vm a = address(VMADDR_CID_ANY, (unsigned)atoi(argv[2]));
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return fail("bind");
        if (listen(s, 1) < 0) return fail("listen");
        printf("VSOCK-LISTENING %s\n", argv[2]);
        fflush(stdout);
        int c = accept(s, NULL, NULL);
        if (c < 0) return fail("accept");
        static char buffer[65536];
        long total = 0;
        for (;;) {
            ssize_t n = read(c, buffer, sizeof buffer);
            if (n < 0) return fail("read");
            if (n == 0) break;
            for (ssize_t o = 0; o < n;) {
                ssize_t w = write(c, buffer + o, (size_t)(n - o));
                if (w < 0) return fail("write");
                o += w;
            }
            total += n;
        }
        printf("VSOCK-ECHOED %ld\n", total);
        fflush(stdout);
        close(c);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0) return fail("socket");
        struct sockaddr_vm a = address((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]));
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) return fail("connect");
        size_t length = strlen(argv[4]);
        if (write(s, argv[4], length) != (ssize_t)length) return fail("write");
        shutdown(s, SHUT_WR);
        char reply[256];
        ssize_t n = read(s, reply, sizeof reply - 1);
        if (n < 0) return fail("read");
        reply[n] = 0;
        printf("VSOCK-SENT %s\n", reply);
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "usage: vsock_echo listen PORT | send CID PORT MESSAGE\n");
    return 2;
}
