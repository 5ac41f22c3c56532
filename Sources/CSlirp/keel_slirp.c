#include "keel_slirp.h"
#include <dlfcn.h>
#include <pthread.h>

// Resolved once by keel_slirp_load; the wrappers are only reached after it succeeded.
static struct {
    __typeof__(slirp_new) *new_;
    __typeof__(slirp_cleanup) *cleanup;
    __typeof__(slirp_input) *input;
    __typeof__(slirp_pollfds_fill) *pollfds_fill;
    __typeof__(slirp_pollfds_poll) *pollfds_poll;
    __typeof__(slirp_handle_timer) *handle_timer;
    __typeof__(slirp_add_hostfwd) *add_hostfwd;
} api;
static const char *load_error;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    void *h = dlopen("libslirp.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) { load_error = dlerror(); return; }
#define RESOLVE(field, name) \
    if (!(api.field = (__typeof__(api.field))dlsym(h, #name))) { load_error = "libslirp.so.0 lacks " #name; return; }
    RESOLVE(new_, slirp_new)
    RESOLVE(cleanup, slirp_cleanup)
    RESOLVE(input, slirp_input)
    RESOLVE(pollfds_fill, slirp_pollfds_fill)
    RESOLVE(pollfds_poll, slirp_pollfds_poll)
    RESOLVE(handle_timer, slirp_handle_timer)
    RESOLVE(add_hostfwd, slirp_add_hostfwd)
#undef RESOLVE
}

const char *keel_slirp_load(void) {
    pthread_once(&once, load);
    return load_error;
}

Slirp *keel_slirp_new(const SlirpConfig *cfg, const SlirpCb *callbacks, void *opaque) {
    return keel_slirp_load() ? NULL : api.new_(cfg, callbacks, opaque);
}
void keel_slirp_cleanup(Slirp *slirp) { api.cleanup(slirp); }
void keel_slirp_input(Slirp *slirp, const uint8_t *pkt, int pkt_len) { api.input(slirp, pkt, pkt_len); }
void keel_slirp_pollfds_fill(Slirp *slirp, uint32_t *timeout, SlirpAddPollCb add_poll, void *opaque) {
    api.pollfds_fill(slirp, timeout, add_poll, opaque);
}
void keel_slirp_pollfds_poll(Slirp *slirp, int select_error, SlirpGetREventsCb get_revents, void *opaque) {
    api.pollfds_poll(slirp, select_error, get_revents, opaque);
}
void keel_slirp_handle_timer(Slirp *slirp, SlirpTimerId id, void *cb_opaque) { api.handle_timer(slirp, id, cb_opaque); }
int keel_slirp_add_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr, int host_port,
                           struct in_addr guest_addr, int guest_port) {
    return api.add_hostfwd(slirp, is_udp, host_addr, host_port, guest_addr, guest_port);
}
