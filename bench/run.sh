#!/bin/bash
# Keel's foundation benchmarks: Keel against a reference on the same guest in the same run.
#   1. launch -> isa-debug-exit of a tiny PVH guest: Keel vs QEMU (microvm), wall-time medians
#   2. PIO exit round trip: Keel vs a bare C KVM loop (bench/floor) and QEMU, microseconds/exit
#   3. RSS of an idle -m 512 guest without the guest's own pages: Keel vs QEMU
# Builds Keel (release), the guests and the helpers, runs everything, prints a table.
# Exit status: 0 when every measurement was taken (a missed goal is reported, not an error),
# 1 when one could not be taken, 2 when a prerequisite is missing.
# Environment: BENCH_LAUNCH_RUNS (21), BENCH_PIO_RUNS (7), BENCH_PIO_N (20000),
#              BENCH_BUDGET (290: seconds for everything, build included; a run that would pass
#              it is cut off and counted as a measurement not taken), BENCH_KEEP=1 keeps the work
#              directory.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LAUNCH_RUNS=${BENCH_LAUNCH_RUNS:-21}
PIO_RUNS=${BENCH_PIO_RUNS:-7}
PIO_N=${BENCH_PIO_N:-20000}
START=$SECONDS
DEADLINE=$((START + ${BENCH_BUDGET:-290}))
left() { echo $((DEADLINE - SECONDS)); }
STATUS_OK=33   # isa-debug-exit value 0x10 -> (0x10 << 1) | 1

die() { echo "bench: $*" >&2; exit 2; }
for tool in gcc ld swift qemu-system-x86_64 awk sort; do
    command -v "$tool" >/dev/null || die "$tool not found (qemu: apt-get install -y qemu-system-x86)"
done
[ -r /dev/kvm ] && [ -w /dev/kvm ] || die "/dev/kvm is missing or not read/writable"

WORK=$(mktemp -d /tmp/keel-bench.XXXXXX)
cleanup() {
    # Every VMM runs under timerun in its own process group, which timerun kills on exit or on
    # a signal; nothing else is started in the background.
    if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "bench: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/logs"

# ---- build ----------------------------------------------------------------------------------
echo "== building (keel release, guests, helpers)" >&2
(cd "$ROOT" && timeout -k 5 "$(left)" swift build -c release --product keel) >"$WORK/logs/swift-build.log" 2>&1 \
    || { tail -20 "$WORK/logs/swift-build.log" >&2; die "swift build -c release --product keel failed"; }
KEEL="$(cd "$ROOT" && swift build -c release --show-bin-path)/keel"
[ -x "$KEEL" ] || die "keel binary not found at $KEEL"
gcc -O2 -Wall -Wextra -o "$WORK/timerun" "$ROOT/bench/tools/timerun.c" || die "building timerun failed"
gcc -O2 -Wall -Wextra -o "$WORK/kvm-pio-floor" "$ROOT/bench/floor/kvm-pio-floor.c" || die "building kvm-pio-floor failed"
"$ROOT/bench/guests/build.sh" "$WORK/g" 0 "$PIO_N" || die "building the bench guests failed"
G=$WORK/g
TIMERUN=$WORK/timerun

# ---- the three VMMs ---------------------------------------------------------------------------
DEBUG_EXIT=(-device isa-debug-exit,iobase=0xf4,iosize=0x04)
# Keel and QEMU get the very same arguments (Keel reads QEMU's command line): microvm, whose
# default in both is the split irqchip (LAPICs in the kernel, IOAPIC and PIT in the VMM).
vmm_args() {
    ARGS=(-enable-kvm -cpu host,-arch-capabilities -M microvm,x-option-roms=off
          -nodefaults -m "$1" -kernel "$2" "${DEBUG_EXIT[@]}" -display none -no-reboot)
}
# vmm_cmd VMM MIB GUEST: sets CMD to the command line that runs GUEST with MIB of RAM.
vmm_cmd() {
    vmm_args "$2" "$3"
    case $1 in
        keel)  CMD=("$KEEL" "${ARGS[@]}") ;;
        qemu)  CMD=(qemu-system-x86_64 "${ARGS[@]}") ;;
        floor) CMD=("$WORK/kvm-pio-floor" -m "$2" "$3") ;;
    esac
}

FAILED=()
# measure KEY TIMEOUT_MS CMD...: one timed run; appends its wall time (us) to $WORK/KEY.t when
# the command ends with the debug-exit status (or $EXPECT when set).
measure() {
    local key=$1 timeout=$2; shift 2
    local line want=${EXPECT:-$STATUS_OK}
    local budget_ms=$(( ($(left) - 10) * 1000 ))
    if [ "$budget_ms" -le 0 ]; then
        FAILED+=("$key: time budget exhausted")
        return 1
    fi
    [ "$timeout" -le "$budget_ms" ] || timeout=$budget_ms
    "$TIMERUN" -t "$timeout" -r "$WORK/logs/$key.report" -- "$@" </dev/null >>"$WORK/logs/$key.out" 2>>"$WORK/logs/$key.log"
    line=$(tail -1 "$WORK/logs/$key.report" 2>/dev/null)
    local wall=${line#wall_us=}; wall=${wall%% *}
    local status=${line#*status=}; status=${status%% *}
    if [ "$status" != "$want" ]; then
        FAILED+=("$key: status $status (expected $want): $*")
        echo "bench: $key: exit status $status, expected $want; log: $(tail -3 "$WORK/logs/$key.log" | tr '\n' ' ')" >&2
        return 1
    fi
    echo "$wall" >>"$WORK/$key.t"
}
median() { sort -n "$1" | awk '{v[NR]=$1} END {if (NR == 0) exit 1; if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
minmax() { sort -n "$1" | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s..%s", lo, hi}'; }
count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }

# ---- 1. launch -> debug-exit ------------------------------------------------------------------
echo "== 1. launch -> debug-exit, $LAUNCH_RUNS runs each, interleaved" >&2
for ((i = 0; i < LAUNCH_RUNS; i++)); do
    for vmm in keel qemu; do
        vmm_cmd $vmm 64 "$G/bench-exit.elf"
        measure launch-$vmm 10000 "${CMD[@]}"
    done
    # Reference rows for the analysis: the bare floor, the floor with the in-kernel irqchip and
    # PIT that Keel's board creates, and Keel's process start alone.
    vmm_cmd floor 64 "$G/bench-exit.elf"
    measure launch-floor 10000 "${CMD[@]}"
    measure launch-floor-irqchip 10000 "$WORK/kvm-pio-floor" -i -m 64 "$G/bench-exit.elf"
    EXPECT=0 measure launch-keel-version 10000 "$KEEL" --version
done

# ---- 2. PIO exit round trip --------------------------------------------------------------------
for variant in ring3 ring0; do
    if [ $variant = ring3 ]; then base=bench-pio; else base=bench-pio-ring0; fi
    echo "== 2. PIO exits ($variant loop): N=$PIO_N and N=0, $PIO_RUNS runs each, interleaved" >&2
    for ((i = 0; i < PIO_RUNS; i++)); do
        for vmm in keel floor qemu; do
            vmm_cmd $vmm 64 "$G/$base-$PIO_N.elf"
            measure "pio-$variant-$vmm-n" 60000 "${CMD[@]}"
            vmm_cmd $vmm 64 "$G/$base-0.elf"
            measure "pio-$variant-$vmm-0" 60000 "${CMD[@]}"
        done
    done
done

# ---- 3. RSS of an idle guest -------------------------------------------------------------------
echo "== 3. RSS with an idle guest, -m 512, snapshot after 1 s" >&2
# rss_report DIR RAM_KB: prints "vmrss anon file shmem guest_rss guest_pss pss" (kB) where guest_*
# are the Rss/Pss of the mapping that is guest RAM: Keel's memfd, QEMU's anonymous RAM block,
# recognised by its size being the guest's RAM size.
rss_report() {
    local dir=$1 ram_kb=$2
    awk -v ram="$ram_kb" '
        FILENAME ~ /status$/ && /^VmRSS:/ {vmrss=$2}
        FILENAME ~ /status$/ && /^RssAnon:/ {anon=$2}
        FILENAME ~ /status$/ && /^RssFile:/ {file=$2}
        FILENAME ~ /status$/ && /^RssShmem:/ {shmem=$2}
        FILENAME ~ /smaps_rollup$/ && /^Pss:/ {pss=$2}
        FILENAME ~ /smaps$/ && /^[0-9a-f]+-[0-9a-f]+ / {name=$6}
        FILENAME ~ /smaps$/ && /^Size:/ {size=$2}
        FILENAME ~ /smaps$/ && /^Rss:/ {rss=$2}
        FILENAME ~ /smaps$/ && /^Pss:/ {if (size == ram) {grss += rss; gpss += $2; found++}}
        END {if (!found || vmrss == "") exit 1; print vmrss, anon, file, shmem, grss, gpss, pss}
    ' "$dir/status" "$dir/smaps_rollup" "$dir/smaps"
}
RSS_MIB=512
for vmm in keel qemu; do
    mkdir -p "$WORK/rss-$vmm"
    if [ "$(left)" -lt 10 ]; then FAILED+=("rss-$vmm: time budget exhausted"); continue; fi
    vmm_cmd $vmm $RSS_MIB "$G/bench-idle.elf"
    "$TIMERUN" -s 1000 -o "$WORK/rss-$vmm" -r "$WORK/logs/rss-$vmm.report" -- "${CMD[@]}" \
        </dev/null >>"$WORK/logs/rss-$vmm.out" 2>>"$WORK/logs/rss-$vmm.log"
    line=$(tail -1 "$WORK/logs/rss-$vmm.report" 2>/dev/null)
    if [ -z "$line" ] || ! r=$(rss_report "$WORK/rss-$vmm" $((RSS_MIB * 1024))); then
        FAILED+=("rss-$vmm: no snapshot (see $WORK/logs/rss-$vmm.log)")
        echo "bench: rss-$vmm: no snapshot: $(tail -3 "$WORK/logs/rss-$vmm.log" | tr '\n' ' ')" >&2
        continue
    fi
    cpu=$(awk '{for (i = 1; i <= NF; i++) if ($i ~ /_us=/) {split($i, a, "="); t += a[2]}} END {print t}' <<<"${line#snapshot_ms=* }")
    echo "$r $cpu" >"$WORK/rss-$vmm.r"
done

# ---- report ---------------------------------------------------------------------------------
fmt_ms() { awk -v u="$1" 'BEGIN {printf "%.1f ms", u / 1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b <= 0) print "n/a"; else printf "%.2fx", a / b}'; }
verdict() { awk -v v="$1" -v goal="$2" 'BEGIN {print (v <= goal) ? "met" : "MISSED"}'; }
per_exit() { # KEY_PREFIX -> microseconds per exit, from medians
    local n=$WORK/$1-n.t z=$WORK/$1-0.t
    [ "$(count "$n")" -gt 0 ] && [ "$(count "$z")" -gt 0 ] || { echo ""; return; }
    awk -v a="$(median "$n")" -v b="$(median "$z")" -v n="$PIO_N" 'BEGIN {printf "%.3f", (a - b) / n}'
}

echo
echo "Keel benchmarks — $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -r), $(nproc) CPUs, $(qemu-system-x86_64 --version | head -1)"
echo "keel: $KEEL"
echo

echo "1. Launch -> isa-debug-exit, tiny PVH guest (bench-exit.elf), -m 64; wall time, median of $LAUNCH_RUNS interleaved runs"
printf '   %-58s %10s  %s\n' "command" "median" "min..max (us)"
for vmm in keel qemu floor floor-irqchip keel-version; do
    case $vmm in
        floor) label="reference: floor (bare KVM C program, no irqchip)" ;;
        floor-irqchip) label="reference: floor + in-kernel irqchip + PIT (floor -i)" ;;
        keel-version) label="reference: keel --version (process start only)" ;;
        *) label=$vmm ;;
    esac
    f=$WORK/launch-$vmm.t
    [ "$(count "$f")" -gt 0 ] || { printf '   %-58s %10s\n' "$label" "no data"; continue; }
    printf '   %-58s %10s  %s\n' "$label" "$(fmt_ms "$(median "$f")")" "$(minmax "$f")"
done
R1=""
if [ "$(count "$WORK/launch-keel.t")" -gt 0 ] && [ "$(count "$WORK/launch-qemu.t")" -gt 0 ]; then
    R1=$(awk -v a="$(median "$WORK/launch-keel.t")" -v b="$(median "$WORK/launch-qemu.t")" 'BEGIN {printf "%.3f", a / b}')
    echo "   keel / qemu = $(ratio "$(median "$WORK/launch-keel.t")" "$(median "$WORK/launch-qemu.t")")   goal <= 0.30x: $(verdict "$R1" 0.30)"
fi
echo

declare -A PE
echo "2. PIO exit round trip: $PIO_N outb to port 0xe0 (no device there), then debug-exit; -m 64"
echo "   us/exit = (median wall(N=$PIO_N) - median wall(N=0)) / $PIO_N, $PIO_RUNS interleaved runs of each"
for variant in ring3 ring0; do
    [ $variant = ring3 ] && what="loop in guest ring 3 (64-bit, IOPL 3; native on PVM)" || what="loop in guest ring 0 (64-bit; emulated on PVM)"
    echo "   $variant: $what"
    for vmm in keel floor qemu; do
        PE[$variant-$vmm]=$(per_exit "pio-$variant-$vmm")
        n=$WORK/pio-$variant-$vmm-n.t z=$WORK/pio-$variant-$vmm-0.t
        if [ -n "${PE[$variant-$vmm]}" ]; then
            printf '     %-6s %8s us/exit   (N=%s: %s, N=0: %s)\n' "$vmm" "${PE[$variant-$vmm]}" "$PIO_N" \
                "$(fmt_ms "$(median "$n")")" "$(fmt_ms "$(median "$z")")"
        else
            printf '     %-6s no data\n' "$vmm"
        fi
    done
    if [ -n "${PE[$variant-keel]}" ] && [ -n "${PE[$variant-floor]}" ]; then
        r=$(awk -v a="${PE[$variant-keel]}" -v b="${PE[$variant-floor]}" 'BEGIN {printf "%.3f", a / b}')
        echo "     keel / floor = $(ratio "${PE[$variant-keel]}" "${PE[$variant-floor]}")   goal <= 1.10x: $(verdict "$r" 1.10)   (qemu / floor = $(ratio "${PE[$variant-qemu]:-0}" "${PE[$variant-floor]}"))"
    fi
done
echo

echo "3. RSS with an idle guest (bench-idle.elf: cli; hlt), -m $RSS_MIB, /proc/PID after 1 s (kB)"
printf '   %-6s %8s %8s %8s %8s %10s %10s %14s %10s %9s\n' vmm VmRSS RssAnon RssFile RssShmem guest-Rss guest-Pss "RSS-w/o-guest" "PSS-w/o-guest" "cpu(us)"
for vmm in keel qemu; do
    if [ -f "$WORK/rss-$vmm.r" ]; then
        read -r vmrss anon file shmem grss gpss pss cpu <"$WORK/rss-$vmm.r"
        printf '   %-6s %8s %8s %8s %8s %10s %10s %14s %10s %9s\n' $vmm "$vmrss" "$anon" "$file" "$shmem" "$grss" "$gpss" $((vmrss - grss)) $((pss - gpss)) "$cpu"
    else
        printf '   %-6s no data\n' $vmm
    fi
done
if [ -f "$WORK/rss-keel.r" ] && [ -f "$WORK/rss-qemu.r" ]; then
    read -r kv _ _ _ kg _ _ _ <"$WORK/rss-keel.r"
    read -r qv _ _ _ qg _ _ _ <"$WORK/rss-qemu.r"
    k=$((kv - kg)) q=$((qv - qg))
    echo "   keel $(awk -v k=$k 'BEGIN {printf "%.1f MiB", k / 1024}') vs qemu $(awk -v q=$q 'BEGIN {printf "%.1f MiB", q / 1024}') without guest pages: keel / qemu = $(ratio $k $q)   goal keel <= 8 MiB: $(verdict $k 8192)"
fi
echo
echo "total bench time: $((SECONDS - START)) s (including the build)"

if [ ${#FAILED[@]} -gt 0 ]; then
    echo "bench: ${#FAILED[@]} measurement(s) could not be taken:" >&2
    printf '  %s\n' "${FAILED[@]}" >&2
    exit 1
fi
exit 0
