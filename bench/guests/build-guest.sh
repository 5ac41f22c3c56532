#!/bin/sh
# Builds a PVH test guest outside XCTest (same flags as Tests/KeelTests/Support/GuestBuilder.swift).
# Usage: bench/guests/build-guest.sh OUT.elf SOURCE.gc [MORE.gc|MORE.gS ...]
#   e.g. bench/guests/build-guest.sh /tmp/pio-loop.elf bench/guests/pio-loop.gc
#        keel -accel kvm -m 64 -kernel /tmp/pio-loop.elf -append "count=100000" -nographic \
#             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -device pc-testdev
# The guest prints "pio-loop: done N pio writes in ring R, C TSC cycles, ..." and exits with status 33.
# -append options: count=N, access=pio|mmio, ring=3|0 (see pio-loop.gc).
set -eu
[ $# -ge 2 ] || { echo "usage: $0 OUT.elf SOURCE [SOURCE...]" >&2; exit 2; }
out=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
rt=$root/Tests/KeelTests/Guests/runtime
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cflags="-ffreestanding -nostdlib -fno-pic -fno-pie -static -mno-red-zone -mgeneral-regs-only -O2
        -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin -Wall -Wextra -Wno-unused-parameter"
i=0
objs=""
for src in "$rt/entry.gS" "$rt/rt.gc" "$@"; do
    case $src in *.gS|*.S) lang=assembler-with-cpp ;; *) lang=c ;; esac
    i=$((i + 1))
    gcc $cflags -I "$rt" -c -x $lang "$src" -o "$work/$i.o"
    objs="$objs $work/$i.o"
done
gcc -nostdlib -static -no-pie -Wl,-z,max-page-size=0x1000 -Wl,--build-id=none -Wl,-z,noexecstack \
    -Wl,--no-warn-rwx-segments -Wl,-T,"$rt/guest.ld" -o "$out" $objs
echo "$out"
