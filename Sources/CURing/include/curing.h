// liburing (Debian's liburing-dev) behind an opaque handle: including liburing.h in a Swift
// module next to CKeel makes clang see two copies of the libc headers, so Swift sees only this.
#pragma once
#include <stdint.h>

typedef struct curing curing;

/// NULL on failure with *error set to the errno io_uring_queue_init returned.
curing *curing_create(unsigned entries, int *error);
void curing_destroy(curing *ring);
/// 0 or -errno.
int curing_register_eventfd(curing *ring, int fd);
/// Each prep returns 0, or -1 when the submission queue is full. `iovecs` is a struct iovec array.
int curing_prep_readv(curing *ring, int fd, const void *iovecs, unsigned count, uint64_t offset, uint64_t token);
int curing_prep_writev(curing *ring, int fd, const void *iovecs, unsigned count, uint64_t offset, uint64_t token);
int curing_prep_fdatasync(curing *ring, int fd, uint64_t token);
int curing_prep_fallocate(curing *ring, int fd, int mode, uint64_t offset, uint64_t length, uint64_t token);
/// The number submitted or -errno.
int curing_submit(curing *ring);
/// 1 and the completion's token and result (marked seen), or 0 when none is ready.
int curing_next_completion(curing *ring, uint64_t *token, int32_t *result);
/// Completions posted and not yet taken.
unsigned curing_ready(curing *ring);
