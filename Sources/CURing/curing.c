#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include "curing.h"

struct curing { struct io_uring ring; };

curing *curing_create(unsigned entries, int *error) {
    curing *r = calloc(1, sizeof *r);
    if (!r) { *error = ENOMEM; return NULL; }
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) { free(r); *error = -rc; return NULL; }
    return r;
}

void curing_destroy(curing *r) { io_uring_queue_exit(&r->ring); free(r); }

int curing_register_eventfd(curing *r, int fd) { return io_uring_register_eventfd(&r->ring, fd); }


int curing_prep_readv(curing *r, int fd, const void *iovecs, unsigned count, uint64_t offset, uint64_t token) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -1;
    io_uring_prep_readv(sqe, fd, iovecs, count, offset);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int curing_prep_writev(curing *r, int fd, const void *iovecs, unsigned count, uint64_t offset, uint64_t token) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -1;
    io_uring_prep_writev(sqe, fd, iovecs, count, offset);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int curing_prep_fdatasync(curing *r, int fd, uint64_t token) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -1;
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int curing_prep_fallocate(curing *r, int fd, int mode, uint64_t offset, uint64_t length, uint64_t token) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -1;
    io_uring_prep_fallocate(sqe, fd, mode, offset, length);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int curing_submit(curing *r) { return io_uring_submit(&r->ring); }

int curing_next_completion(curing *r, uint64_t *token, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&r->ring, &cqe) != 0 || !cqe) return 0;
    *token = cqe->user_data;
    *result = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 1;
}

unsigned curing_ready(curing *r) { return io_uring_cq_ready(&r->ring); }
