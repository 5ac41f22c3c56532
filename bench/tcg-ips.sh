#!/usr/bin/env bash
# Issue 3's benchmark: Keel's tcg CPU against QEMU's TCG on the same guest in the same run.
# The guest (bench/guests/ips.gc) runs a tight `dec; jnz` loop or a mixed kernel-like workload
# (hash, sort, string copies, calls) and exits; each VMM also runs it with n=0, and that launch
# time is subtracted. Prints seconds per workload (median of RUNS), instructions/second for the
# loop, and Keel's slowdown against QEMU.   Usage: bench/tcg-ips.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${BENCH_IPS_RUNS:-3}}
LOOP_N=${BENCH_IPS_LOOP_N:-500000000}
MIXED_N=${BENCH_IPS_MIXED_N:-400}
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing (scripts/install-dependencies.sh)"; exit 2; }
swift build -c release --product keel 2>&1 | grep -E "error" && exit 1
KEEL=$(swift build -c release --product keel --show-bin-path)/keel
WORK=$(mktemp -d /tmp/keel-ips.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
bench/guests/build-guest.sh "$WORK/ips.elf" bench/guests/ips.gc >/dev/null
exec python3 - "$RUNS" "$KEEL" "$WORK/ips.elf" "$LOOP_N" "$MIXED_N" <<'PY'
import statistics, subprocess, sys, time
runs, keel, elf, loop_n, mixed_n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
base = ["-accel", "tcg", "-M", "microvm", "-m", "64", "-kernel", elf, "-nographic", "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
vmms = {"keel": [keel], "qemu": ["qemu-system-x86_64"]}
cases = {"launch": "work=loop n=0", "loop": "work=loop n=%d" % loop_n, "mixed-0": "work=mixed n=0",
         "mixed": "work=mixed n=%d" % mixed_n}
times = {v: {c: [] for c in cases} for v in vmms}
sums = {}
for _ in range(runs):
    for case, append in cases.items():
        for vmm, cmd in vmms.items():
            start = time.monotonic()
            p = subprocess.run(cmd + base + ["-append", append], capture_output=True, timeout=600)
            elapsed = time.monotonic() - start
            out = p.stdout.decode(errors="replace")
            if p.returncode != 33 or "checksum=" not in out:
                sys.exit("%s %s failed (status %d): %s" % (vmm, append, p.returncode, out[-500:]))
            line = out.split("checksum=")[1].split()[0]
            if sums.setdefault(case, line) != line:
                sys.exit("%s computed checksum %s for %s, the other VMM %s" % (vmm, line, append, sums[case]))
            times[vmm][case].append(elapsed)
med = {v: {c: statistics.median(t) for c, t in cs.items()} for v, cs in times.items()}
print("tcg instruction throughput: bench/guests/ips.gc under -accel tcg -M microvm, median of %d interleaved runs" % runs)
print("   %-6s %14s %20s %14s %22s" % ("vmm", "loop work (s)", "loop M instr/s", "mixed work (s)", ""))
work = {}
for v in vmms:
    lw = max(med[v]["loop"] - med[v]["launch"], 1e-3)
    mw = max(med[v]["mixed"] - med[v]["mixed-0"], 1e-3)
    work[v] = (lw, mw)
    print("   %-6s %14.2f %20.0f %14.2f" % (v, lw, 2 * loop_n / lw / 1e6, mw))
rl, rm = work["keel"][0] / work["qemu"][0], work["keel"][1] / work["qemu"][1]
print("   keel / qemu time: tight loop %.1fx (goal <= 10x: %s), mixed %.1fx (goal <= 3x: %s)"
      % (rl, "met" if rl <= 10 else "MISSED", rm, "met" if rm <= 3 else "MISSED"))
PY
