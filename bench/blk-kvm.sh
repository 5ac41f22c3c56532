#!/usr/bin/env bash
# Issue 5/9's virtio-blk device-path benchmark under -accel kvm: bench/guests/blk-bench.gc drives
# the modern virtio-blk-pci device from ring 3 (native on PVM hosts, where guest kernel mode is
# emulated), polling the used ring with `depth` requests in flight, no interrupts. Keel and QEMU
# with the same -drive/-device options (default aio=io_uring,cache=none plus an iothread), raw
# and qcow2 (fully allocated) disks, plus a fresh sparse qcow2 for the write rows. Time is the
# guest's TSC delta around the request loop, converted with the host's TSC rate (measured by
# bench/blk/tsc-hz.c; both VMMs pass the TSC through). Interleaved, median of RUNS.
#
# Usage: bench/blk-kvm.sh [RUNS]   (default 3)
# Environment: BLK_DIR (/dev/shm), BLK_KVM_DEPTH (32), BLK_KVM_SEQ_N (1024 x 1 MiB), BLK_KVM_RAND_N (20000 x 4 KiB),
#   BLK_KVM_SEG (65536: data segment size of a 1 MiB request), BLK_KVM_OPTS
#   ("aio=io_uring,cache=none,iothread=io0"; "default" for none), BLK_KVM_LOG (append consoles here),
#   BLK_KVM_ROWS (comma-separated rows to run, e.g. "seqread,seqwrite"; all by default),
#   BLK_KVM_DISKS (comma-separated disks: raw,qcow2,qcow2-sparse; all by default)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
[ -e /dev/kvm ] || { echo "blk-kvm: /dev/kvm missing"; exit 2; }
for tool in qemu-system-x86_64 qemu-img gcc; do
    command -v $tool >/dev/null || { echo "$tool missing (scripts/install-dependencies.sh)"; exit 2; }
done
if [ -z "${KEEL:-}" ]; then
    swift build -c release --product keel 2>&1 | grep -E "error" && exit 1
    KEEL=$(swift build -c release --product keel --show-bin-path)/keel
fi
# The images live in memory (tmpfs, which takes O_DIRECT too): the rows compare the two VMMs'
# paths, not the host's disk, whose latency moved cache=none rows by +-30% between runs.
# BLK_DIR=/var/tmp puts them on the disk.
BLK_DIR=${BLK_DIR:-$( [ -d /dev/shm ] && echo /dev/shm || echo /var/tmp )}
WORK=$(mktemp -d "$BLK_DIR/keel-bench-blk-kvm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
bench/guests/build-guest.sh "$WORK/blk-bench.elf" bench/guests/blk-bench.gc >/dev/null
gcc -O2 -o "$WORK/tsc-hz" bench/blk/tsc-hz.c
python3 - "$RUNS" "$KEEL" "$WORK" <<'PY'
import os, re, statistics, subprocess, sys
runs, keel, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
depth = int(os.environ.get("BLK_KVM_DEPTH", "32"))
seq_n = int(os.environ.get("BLK_KVM_SEQ_N", "1024"))
rand_n = int(os.environ.get("BLK_KVM_RAND_N", "20000"))
seg = int(os.environ.get("BLK_KVM_SEG", "65536"))
opts = os.environ.get("BLK_KVM_OPTS", "aio=io_uring,cache=none,iothread=io0")
log = os.environ.get("BLK_KVM_LOG")
only_rows = [r for r in os.environ.get("BLK_KVM_ROWS", "").split(",") if r]
only_disks = [d for d in os.environ.get("BLK_KVM_DISKS", "").split(",") if d]
tsc_hz = float(subprocess.run([os.path.join(work, "tsc-hz")], capture_output=True, check=True).stdout)
guest = os.path.join(work, "blk-bench.elf")

span_mib = 256
raw = os.path.join(work, "disk.raw")
qcow2 = os.path.join(work, "disk.qcow2")
sparse = os.path.join(work, "sparse.qcow2")
with open(raw, "wb") as f:
    for _ in range(span_mib):
        f.write(os.urandom(1 << 20))
subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow2], check=True)

drive_opts, dev_opts, objects = "", "", []
if opts != "default":
    for opt in opts.split(","):
        key = opt.split("=", 1)[0]
        if key in ("iothread", "num-queues"):
            dev_opts += "," + opt
            if key == "iothread":
                objects += ["-object", "iothread,id=" + opt.split("=", 1)[1]]
        else:
            drive_opts += "," + opt

def command(vmm, path, fmt, append):
    args = ["-accel", "kvm", "-m", "256", "-kernel", guest, "-append", append, "-nographic", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"] + objects + [
            "-drive", "file=%s,if=none,id=d0,format=%s%s" % (path, fmt, drive_opts)]
    if vmm == "keel":
        return [keel, "-M", "pc"] + args + ["-device", "virtio-blk-pci,drive=d0" + dev_opts]
    # QEMU's virtio-blk-pci is transitional by default; the guest drives the modern device.
    return ["qemu-system-x86_64", "-M", "pc", "-nic", "none"] + args + [
        "-device", "virtio-blk-pci,drive=d0,disable-legacy=on" + dev_opts]

def one(vmm, disk, bench, n):
    """Seconds of the guest's request loop, or a string saying why not."""
    path, fmt = {"raw": (raw, "raw"), "qcow2": (qcow2, "qcow2"), "qcow2-sparse": (sparse, "qcow2")}[disk]
    if disk == "qcow2-sparse":   # every run allocates its clusters anew
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", sparse, "%dM" % span_mib], check=True)
    append = "bench=%s n=%d depth=%d seg=%d" % (bench, n, depth, seg)
    cmd = command(vmm, path, fmt, append)
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "timed out"
    out = (p.stdout + p.stderr).decode(errors="replace")
    if log:
        with open(log, "a") as f:
            f.write(" ".join(cmd) + "\n" + out + "\n")
    m = re.search(r"blk-bench: BENCH n (\d+) bs (\d+) depth (\d+) cycles (\d+) errors (\d+)", out)
    if not m or p.returncode != 33:
        lines = [l for l in out.replace("\r", "").splitlines() if l.strip()]
        return "exit %d: %s" % (p.returncode, lines[-1][:160] if lines else "")
    return int(m.group(4)) / tsc_hz

rows = [("seqwrite", 1 << 20, seq_n), ("seqread", 1 << 20, seq_n),
        ("randwrite", 4096, rand_n), ("randread", 4096, rand_n)]
cases = [(disk, row) for disk in ("raw", "qcow2") for row in rows] + \
        [("qcow2-sparse", row) for row in rows if row[0].endswith("write")]
cases = [(d, r) for d, r in cases if (not only_rows or r[0] in only_rows) and (not only_disks or d in only_disks)]
results = {}
for i in range(runs):
    for k, (disk, (bench, bs, n)) in enumerate(cases):
        # Who goes first alternates: the one after a page-cache writer meets its dirty pages.
        for vmm in (("keel", "qemu") if (i + k) % 2 == 0 else ("qemu", "keel")):
            r = results.setdefault((disk, bench, vmm), [])
            if r and isinstance(r[-1], str):
                continue
            r.append(one(vmm, disk, bench, n))

print("virtio-blk under kvm: bench/guests/blk-bench.gc, ring-3 polling driver, depth %d, no interrupts; median of %d interleaved runs (first VMM alternating)"
      % (depth, runs))
print("keel -M pc vs qemu -M pc (disable-legacy=on), -m 256, options: %s; seq: %d x 1 MiB (%d KiB segments, indirect), rand: %d x 4 KiB over %d MiB; TSC %.0f MHz"
      % (opts, seq_n, seg // 1024, rand_n, span_mib, tsc_hz / 1e6))
print("   %-13s %-10s %14s %14s %10s" % ("disk", "row", "keel", "qemu", "keel/qemu"))
failures = []
for disk, (bench, bs, n) in cases:
    vals = {}
    for vmm in ("keel", "qemu"):
        r = results[(disk, bench, vmm)]
        bad = [x for x in r if isinstance(x, str)]
        if bad:
            vals[vmm] = None
            failures.append("%s %s %s: %s" % (vmm, disk, bench, bad[0]))
        else:
            vals[vmm] = n / statistics.median(r)   # requests per second
    def cell(v):
        if v is None:
            return "n/a"
        return "%.1f MiB/s" % (v * bs / (1 << 20)) if bs >= (1 << 20) else "%.0f IOPS" % v
    ratio = "%.2fx" % (vals["keel"] / vals["qemu"]) if vals["keel"] and vals["qemu"] else "n/a"
    print("   %-13s %-10s %14s %14s %10s" % (disk, bench, cell(vals["keel"]), cell(vals["qemu"]), ratio))
for f in failures:
    print("   n/a: " + f)
PY
