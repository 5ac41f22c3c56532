#!/bin/bash
# keel img convert vs qemu-img convert, side by side in one run, on the same 1 GiB image:
#   raw -> qcow2 and qcow2 -> raw, of a sparse-ish disk (~40% data in runs, holes between).
# Each conversion runs BENCH_IMG_RUNS times per tool (alternating); the median wall time is
# reported with the ratio qemu/keel (>= 1.0 means Keel is not slower). Both tools use their
# default target cache mode, which for qemu-img convert is unsafe (no fdatasync); Keel's is too.
# Exit status: 0 when measured, 2 when a prerequisite is missing.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${BENCH_IMG_RUNS:-5}
die() { echo "bench/img: $*" >&2; exit 2; }
for tool in swift qemu-img qemu-io awk sort; do command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y qemu-utils)"; done

WORK=$(mktemp -d /var/tmp/keel-img-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && swift build -c release --product keel >/dev/null 2>&1) || die "release build failed"
KEEL="$ROOT/.build/release/keel"

# The source: 1 GiB raw, data in 4 MiB runs every 10 MiB (varied bytes, so nothing is all-zero
# by accident), the rest holes.
SRC="$WORK/src.raw"
qemu-img create -q -f raw "$SRC" 1G
cmds=()
for ((mb = 0; mb < 1024; mb += 10)); do cmds+=(-c "write -P $(((mb / 10) % 250 + 1)) ${mb}M 4M"); done
qemu-io -f raw "${cmds[@]}" "$SRC" >/dev/null || die "qemu-io failed"
QSRC="$WORK/src.qcow2"
qemu-img convert -f raw -O qcow2 "$SRC" "$QSRC"
sync

now() { date +%s.%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
measure() {  # tool label args... -> appends seconds to $WORK/<tool>-<label>
    local tool=$1 label=$2; shift 2
    rm -f "$WORK/out"
    local t0; t0=$(now)
    if [ "$tool" = keel ]; then "$KEEL" img convert "$@" "$WORK/out"; else qemu-img convert "$@" "$WORK/out"; fi || die "$tool convert $* failed"
    local t1; t1=$(now)
    echo "$t1 - $t0" | bc -l >> "$WORK/$tool-$label"
}

for ((i = 0; i < RUNS; i++)); do
    for tool in qemu keel; do
        measure $tool raw2qcow2 -f raw -O qcow2 "$SRC"
        measure $tool qcow22raw -f qcow2 -O raw "$QSRC"
    done
done
# The last outputs must match the source.
qemu-img compare -q -f qcow2 -F raw "$QSRC" "$WORK/out" || die "qcow2 -> raw output differs from its source"

printf "%-22s %10s %10s %8s\n" "keel img convert (1 GiB)" "qemu-img" "keel" "ratio"
for label in raw2qcow2 qcow22raw; do
    q=$(median < "$WORK/qemu-$label"); k=$(median < "$WORK/keel-$label")
    ratio=$(echo "$q / $k" | bc -l)
    name=$([ $label = raw2qcow2 ] && echo "raw -> qcow2" || echo "qcow2 -> raw")
    printf "%-22s %9.3fs %9.3fs %7.2fx\n" "$name" "$q" "$k" "$ratio"
done
echo "(median of $RUNS runs each; ratio = qemu-img time / keel time, goal >= 1.0)"
