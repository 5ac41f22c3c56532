#!/usr/bin/env bash
# Issue 4's benchmark: Debian's stock cloud kernel + the project's initramfs under tcg, Keel vs
# QEMU (`-accel tcg -M microvm`), the same arguments, interleaved runs. Prints, per VMM, the
# median wall time from launch to the init's marker (KEEL-GUEST-READY) and the guest's own uptime
# when the kernel starts /init, and Keel's ratio to QEMU. Usage: bench/linux-tcg.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${BENCH_LINUX_RUNS:-3}}
scripts/fetch-default-guest.sh >/dev/null
swift build -c release --product keel 2>&1 | grep -E "error" && exit 1
KEEL=$(swift build -c release --product keel --show-bin-path)/keel
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing (scripts/install-dependencies.sh)"; exit 2; }
exec python3 - "$RUNS" "$KEEL" <<'PY'
import os, re, statistics, subprocess, sys, threading, time
runs, keel = int(sys.argv[1]), sys.argv[2]
args = ["-accel", "tcg", "-M", "microvm", "-m", "512", "-kernel", "guest/vmlinuz", "-initrd", "guest/initrd.img",
        "-append", "console=ttyS0 keel.init=poweroff", "-nographic", "-no-reboot"]
vmms = {"keel": [keel] + args, "qemu": ["qemu-system-x86_64"] + args}
results = {k: {"marker": [], "init": []} for k in vmms}

def one(cmd, tries=8):
    # On a loaded host the guest kernel sometimes fails to calibrate its TSC against the PIT
    # under QEMU's TCG and then hangs early in boot; such a run is killed at once and repeated.
    for attempt in range(tries):
        r = attempt_one(cmd)
        if r is not None:
            return r
        print("note: %s: guest could not calibrate its TSC; run repeated" % cmd[0], file=sys.stderr)
    sys.exit("run failed %d times (TSC calibration): %s" % (tries, " ".join(cmd)))

def attempt_one(cmd):
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = init = None
    out = b""
    os.set_blocking(p.stdout.fileno(), True)
    deadline = start + 180
    # A guest that stops printing would block readline forever: a timer kills it.
    watchdog = threading.Timer(180, p.kill)
    watchdog.start()
    for line in iter(p.stdout.readline, b""):
        out += line
        if marker is None and b"KEEL-GUEST-READY" in line:
            marker = time.monotonic() - start
        m = re.search(rb"\[\s*([\d.]+)\] Run /init as init process", line)
        if m and init is None:
            init = float(m.group(1))
        if b"could not calculate TSC khz" in line:
            p.kill(); p.wait(timeout=60); watchdog.cancel()
            return None
        if time.monotonic() > deadline:
            p.kill(); break
    rc = p.wait(timeout=60)
    watchdog.cancel()
    if marker is None or init is None or rc != 0:
        sys.exit("run failed (exit %s): %s\n%s" % (rc, " ".join(cmd), out[-2000:].decode(errors="replace")))
    return marker, init

for i in range(runs):
    for name, cmd in vmms.items():
        m, u = one(cmd)
        results[name]["marker"].append(m)
        results[name]["init"].append(u)

print("Linux under tcg: Debian %s, -M microvm -m 512, bzImage + initramfs, keel.init=poweroff; median of %d interleaved runs"
      % (open("guest/VERSION").read().split("kernel_release=")[1].split()[0], runs))
print("   %-6s %22s %26s" % ("vmm", "launch -> marker (s)", "guest uptime at /init (s)"))
med = {}
for name in vmms:
    m = statistics.median(results[name]["marker"]); u = statistics.median(results[name]["init"])
    med[name] = (m, u)
    print("   %-6s %22.2f %26.2f" % (name, m, u))
rm, ru = med["keel"][0] / med["qemu"][0], med["keel"][1] / med["qemu"][1]
print("   keel / qemu: launch -> marker %.1fx, uptime at /init %.1fx   goal <= 3.0x: %s"
      % (rm, ru, "met" if max(rm, ru) <= 3.0 else "MISSED"))
PY
