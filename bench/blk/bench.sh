#!/bin/sh
# The guest half of bench/blk.sh (copied into the benchmark initramfs as /bench.sh).
# Usage: sh /bench.sh SEQ_MIB RAND_OPS SPAN_MIB LABEL:DEVICE...
# Prints "BENCH LABEL ROW AMOUNT START END" per row, times from the guest's own clock, then BENCH-END.
seq=$1 ops=$2 span=$3
shift 3
ts() { /blkrand now; }   # busybox date has no %N
# No disk: the guest CPU's speed on a syscall-heavy loop, to read the disk rows against.
s=$(ts); dd if=/dev/zero of=/dev/null bs=4096 count=20000 2>/dev/null
e=$(ts); echo "BENCH none cpu-ref 20000 $s $e"
for disk in "$@"; do
    l=${disk%%:*} d=${disk#*:}
    s=$(ts); dd if=/dev/zero of=$d bs=1M count=$seq oflag=direct 2>/dev/null || echo BENCH-ERROR $l seq-write
    e=$(ts); echo "BENCH $l seq-write $seq $s $e"
    s=$(ts); dd if=$d of=/dev/null bs=1M count=$seq iflag=direct 2>/dev/null || echo BENCH-ERROR $l seq-read
    e=$(ts); echo "BENCH $l seq-read $seq $s $e"
    for op in write read; do
        r=$(/blkrand $d $op $ops $span)
        case "$r" in
            "blkrand $op "*) echo "BENCH $l rand-$op $ops 0 ${r##* }" ;;
            *) echo "BENCH-ERROR $l rand-$op $r" ;;
        esac
    done
done
echo BENCH-END
