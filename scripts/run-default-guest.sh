#!/usr/bin/env bash
# Builds Keel and boots the default guest (Debian's stock cloud kernel and the project's busybox
# initramfs) on the serial console. Ctrl-A x quits. Extra arguments go to keel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
scripts/fetch-default-guest.sh >/dev/null
swift build -c release --product keel 2>&1 | grep -E 'error|warning: unre|Compiling keel|Build' || true
accel=tcg
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then accel=kvm; fi
exec .build/release/keel -accel "$accel" -m 512 -smp 2 -kernel guest/vmlinuz -initrd guest/initrd.img \
  -append "console=ttyS0 keel.init=shell" -nographic "$@"
