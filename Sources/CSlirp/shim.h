// libslirp from the system (Debian's libslirp-dev, 4.7): the user-mode network stack behind
// `-netdev user`, as QEMU uses it.
#include <slirp/libslirp.h>
#include <poll.h>
