// libslirp from the system (Debian's libslirp-dev at build time, libslirp0 at run time, 4.7): the
// user-mode network stack behind `-netdev user`, as QEMU uses it. It is opened with dlopen the
// first time a `-netdev user` starts, so a VMM without one does not map libslirp and GLib
// (about 0.8 MiB resident).
#ifndef KEEL_SLIRP_H
#define KEEL_SLIRP_H
#include <slirp/libslirp.h>
#include <poll.h>

/// Loads libslirp.so.0 once; NULL on success, else the loader's message.
const char *keel_slirp_load(void);

Slirp *keel_slirp_new(const SlirpConfig *cfg, const SlirpCb *callbacks, void *opaque);
void keel_slirp_cleanup(Slirp *slirp);
void keel_slirp_input(Slirp *slirp, const uint8_t *pkt, int pkt_len);
void keel_slirp_pollfds_fill(Slirp *slirp, uint32_t *timeout, SlirpAddPollCb add_poll, void *opaque);
void keel_slirp_pollfds_poll(Slirp *slirp, int select_error, SlirpGetREventsCb get_revents, void *opaque);
void keel_slirp_handle_timer(Slirp *slirp, SlirpTimerId id, void *cb_opaque);
int keel_slirp_add_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr, int host_port,
                           struct in_addr guest_addr, int guest_port);
#endif
