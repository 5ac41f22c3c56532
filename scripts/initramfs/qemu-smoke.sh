#!/usr/bin/env bash
# Boot the default guest (scripts/fetch-default-guest.sh) under QEMU as a reference for Keel:
#   bzimage  -kernel vmlinuz, keel.init=poweroff
#   pvh      -kernel vmlinux (PVH ELF entry), keel.init=poweroff
#   shell    -kernel vmlinuz, keel.init=shell; types `echo $((6*7)); poweroff -f` and expects 42
# Each must print KEEL-GUEST-READY, load every module, and power off (QEMU exits). Prints the
# wall time of each boot. Usage: qemu-smoke.sh [bzimage|pvh|shell]...   (default: all three)
# Environment: KEEL_GUEST_DIR (default <repo>/guest), QEMU_ACCEL (default tcg), BOOT_TIMEOUT (s).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST=${KEEL_GUEST_DIR:-$(cd "$SCRIPT_DIR/../.." && pwd)/guest}
ACCEL=${QEMU_ACCEL:-tcg}
TIMEOUT=${BOOT_TIMEOUT:-180}

die() { echo "qemu-smoke: error: $*" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
for f in vmlinuz vmlinux initrd.img; do
    [ -s "$GUEST/$f" ] || die "$GUEST/$f missing: run scripts/fetch-default-guest.sh"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# run_qemu KERNEL MODE: the reference QEMU command line, under a timeout.
run_qemu() {
    timeout "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -M pc -m 256 -nographic -no-reboot \
        -kernel "$GUEST/$1" -initrd "$GUEST/initrd.img" -append "console=ttyS0 keel.init=$2"
}

check_log() {
    local name=$1 log=$2
    grep -q '^KEEL-GUEST-READY' "$log" || { echo "$name: no KEEL-GUEST-READY (log: $log)"; return 1; }
    grep -q '^keel: modules loaded:.*; failed: none' "$log" || {
        echo "$name: module loading failed: $(grep '^keel: modules' "$log" || echo 'no summary line')"; return 1; }
    grep -q 'reboot: Power down' "$log" || { echo "$name: guest did not power off"; return 1; }
}

boot_poweroff() {
    local name=$1 kernel=$2 log="$tmp/$1.log" start end status=0
    start=$(now)
    run_qemu "$kernel" poweroff </dev/null >"$log" 2>&1 || status=$?
    end=$(now)
    [ "$status" = 0 ] || { echo "$name: qemu exited with status $status"; cp "$log" "$GUEST/smoke-$name.log"; return 1; }
    check_log "$name" "$log" || { cp "$log" "$GUEST/smoke-$name.log"; return 1; }
    echo "$name: ok, wall $(elapsed "$start" "$end") s"
}

boot_shell() {
    local name=shell log="$tmp/shell.log" fifo="$tmp/console-in" start end status=0 pid waited=0
    mkfifo "$fifo"
    start=$(now)
    run_qemu vmlinuz shell <"$fifo" >"$log" 2>&1 &
    pid=$!
    exec 3>"$fifo"
    # Type only once the shell prompt is up: early bytes would reach the UART before any reader.
    until grep -q 'keel# ' "$log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || break
        [ "$waited" -lt $(( TIMEOUT * 10 )) ] || break
        sleep 0.1
        waited=$(( waited + 1 ))
    done
    printf 'echo $((6*7)); poweroff -f\n' >&3
    wait "$pid" || status=$?
    exec 3>&-
    end=$(now)
    [ "$status" = 0 ] || { echo "$name: qemu exited with status $status"; cp "$log" "$GUEST/smoke-$name.log"; return 1; }
    check_log "$name" "$log" || { cp "$log" "$GUEST/smoke-$name.log"; return 1; }
    grep -qE '^42'$'\r''?$' "$log" || { echo "$name: the shell did not answer 42"; cp "$log" "$GUEST/smoke-$name.log"; return 1; }
    echo "$name: ok, wall $(elapsed "$start" "$end") s (includes typing after the prompt)"
}

modes=("$@")
[ "${#modes[@]}" -gt 0 ] || modes=(bzimage pvh shell)
passed=0 failed=0
for mode in "${modes[@]}"; do
    case "$mode" in
        bzimage) if boot_poweroff bzimage vmlinuz; then passed=$((passed + 1)); else failed=$((failed + 1)); fi ;;
        pvh) if boot_poweroff pvh vmlinux; then passed=$((passed + 1)); else failed=$((failed + 1)); fi ;;
        shell) if boot_shell; then passed=$((passed + 1)); else failed=$((failed + 1)); fi ;;
        *) die "unknown boot '$mode' (expected bzimage, pvh or shell)" ;;
    esac
done
echo "qemu-smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
