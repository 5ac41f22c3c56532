// zlib from the system (Debian's zlib1g-dev): qcow2's compressed clusters are raw deflate.
#include <zlib.h>
