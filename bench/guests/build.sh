#!/bin/bash
# Builds the bench guests into OUTDIR: bench-exit.elf, bench-idle.elf, and for each N given
# (default: 0 and 20000) bench-pio-<N>.elf (loop in ring 3) and bench-pio-ring0-<N>.elf (the same
# loop in ring 0).   usage: build.sh OUTDIR [N...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR [N...]}; shift
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(0 20000)
mkdir -p "$out"
build() { # name source [cpp flags...]
    local name=$1 src=$2; shift 2
    gcc -c -x assembler-with-cpp -I"$here" "$@" "$here/$src" -o "$out/$name.o"
    ld -m elf_x86_64 -static -nostdlib --build-id=none -z max-page-size=0x1000 -z noexecstack \
        -T "$here/bench-guest.ld" -o "$out/$name.elf" "$out/$name.o"
    rm -f "$out/$name.o"
}
build bench-exit bench-exit.S
build bench-idle bench-idle.S
for n in "${counts[@]}"; do
    build "bench-pio-$n" bench-pio.S -DCOUNT="$n"
    build "bench-pio-ring0-$n" bench-pio.S -DCOUNT="$n" -DRING0
done
