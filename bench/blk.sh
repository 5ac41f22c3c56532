#!/usr/bin/env bash
# Issue 5's block benchmark: the same guest workload on virtio-blk under Keel and QEMU, in one
# run, both with -accel tcg and Debian's kernel + the project's initramfs (plus /bench.sh and a
# static /blkrand appended as a second archive). Rows, on a raw and on a qcow2 disk (qcow2 fully
# allocated, so writes overwrite in place): sequential 1 MiB O_DIRECT writes and reads (busybox
# dd oflag/iflag=direct), random 4 KiB O_DIRECT writes and reads (bench/blk/blkrand.c). Times
# come from the guest's own clock. Prints MiB/s or IOPS per VMM and keel/qemu (> 1 = Keel faster).
#
# Variants: each word of BLK_VARIANTS (default "default iothread=io0 aio=io_uring cache=none
# aio=io_uring,cache=none,iothread=io0") is one set of rows, the comma-separated options added to
# both VMMs' -drive (aio=, cache=) and -device (iothread=, num-queues=); iothread=ID also adds
# -object iothread,id=ID. A variant a VMM refuses prints n/a with its error.
#
# With /dev/kvm (and BLK_KVM != 0) it also times the project's own virtio-blk test guest under
# -accel kvm in both VMMs: BLK_KVM_LOOPS one-sector reads (20000), TSC cycles per read; then
# bench/blk-kvm.sh (the ring-3 polling device-path benchmark, its own BLK_KVM_* settings) with RUNS.
#
# Usage: bench/blk.sh [RUNS]   (median of RUNS interleaved runs, default 1)
# Environment: BLK_DIR (/dev/shm), BLK_SEQ_MIB (256), BLK_RAND_OPS (4000), BLK_VARIANTS, BLK_QEMU_MACHINE (pc),
# BLK_LOG_DIR (append each run's console to DIR/<vmm>.log)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${BENCH_BLK_RUNS:-1}}
scripts/fetch-default-guest.sh >/dev/null
swift build -c release --product keel 2>&1 | grep -E "error" && exit 1
KEEL=$(swift build -c release --product keel --show-bin-path)/keel
for tool in qemu-system-x86_64 qemu-img gcc; do
    command -v $tool >/dev/null || { echo "$tool missing (scripts/install-dependencies.sh)"; exit 2; }
done
# The images live in memory (tmpfs, which takes O_DIRECT too): the rows compare the two VMMs'
# paths, not the host's disk, whose latency moved cache=none rows by +-30% between runs.
# BLK_DIR=/var/tmp puts them on the disk.
BLK_DIR=${BLK_DIR:-$( [ -d /dev/shm ] && echo /dev/shm || echo /var/tmp )}
WORK=$(mktemp -d "$BLK_DIR/keel-bench-blk.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
gcc -static -O2 -o "$WORK/blkrand" bench/blk/blkrand.c
[ -e /dev/kvm ] && [ "${BLK_KVM:-1}" != 0 ] && bench/guests/build-guest.sh "$WORK/virtio-blk.elf" Tests/KeelTests/Guests/virtio-blk.gc >/dev/null
python3 - "$RUNS" "$KEEL" "$WORK" <<'PY'
import os, re, select, statistics, subprocess, sys, time
runs, keel, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# Each row lasts ~0.1 s or more: at 64 MiB and 1000 operations (the earlier defaults) a row took
# 25-100 ms, in which dd's and blkrand's own start-up and one slow wake-up moved it by 10-30%.
seq_mib = int(os.environ.get("BLK_SEQ_MIB", "256"))
rand_ops = int(os.environ.get("BLK_RAND_OPS", "4000"))
span_mib = 256
variants = os.environ.get("BLK_VARIANTS", "default iothread=io0 aio=io_uring cache=none aio=io_uring,cache=none,iothread=io0").split()
qemu_machine = os.environ.get("BLK_QEMU_MACHINE", "pc")

def newc(files):
    """A newc cpio archive of (name, bytes) members at the root, executable."""
    out = b""
    for i, (name, data) in enumerate(files + [("TRAILER!!!", b"")]):
        nb = name.encode() + b"\0"
        mode = 0o100755 if data or name != "TRAILER!!!" else 0
        fields = [900000 + i, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out

initrd = os.path.join(work, "initrd.img")
with open(initrd, "wb") as f:
    f.write(open("guest/initrd.img", "rb").read())
    f.write(newc([("bench.sh", open("bench/blk/bench.sh", "rb").read()),
                  ("blkrand", open(os.path.join(work, "blkrand"), "rb").read())]))

# Disks with data everywhere: reads hit real data, and the qcow2 image has every cluster allocated.
raw = os.path.join(work, "disk.raw")
qcow2 = os.path.join(work, "disk.qcow2")
with open(raw, "wb") as f:
    for _ in range(span_mib):
        f.write(os.urandom(1 << 20))
subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow2], check=True)

def command(vmm, variant):
    drive_opts, dev_opts, objects = "", "", []
    if variant != "default":
        for opt in variant.split(","):
            key = opt.split("=", 1)[0]
            if key in ("iothread", "num-queues"):
                dev_opts += "," + opt
                if key == "iothread":
                    objects += ["-object", "iothread,id=" + opt.split("=", 1)[1]]
            else:
                drive_opts += "," + opt
    args = ["-accel", "tcg", "-m", "512", "-kernel", "guest/vmlinuz", "-initrd", initrd,
            "-append", "console=ttyS0 keel.init=shell", "-nographic", "-no-reboot"] + objects
    for i, (path, fmt) in enumerate([(raw, "raw"), (qcow2, "qcow2")]):
        args += ["-drive", "file=%s,if=none,id=d%d,format=%s%s" % (path, i, fmt, drive_opts),
                 "-device", "virtio-blk-pci,drive=d%d%s" % (i, dev_opts)]
    if vmm == "keel":
        return [keel, "-M", "pc"] + args
    return ["qemu-system-x86_64", "-M", qemu_machine, "-nic", "none"] + args

def one(cmd):
    """Boots, types the benchmark, returns ({(disk, row): seconds}, None) or (None, why)."""
    # The host writes back the images' dirty pages 30 s after the run that dirtied them (and
    # right after they were made): without a sync first, that writeback (and writes waiting on
    # pages under it) lands in whichever VMM's run comes next.
    os.sync()
    # And both images in the page cache: a cache=none run drops their cached pages, and the
    # next writeback run would fill the cache (2-3x slower writes) for the VMM that goes first.
    for path in (raw, qcow2):
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, sent, deadline = b"", 0, time.monotonic() + 600
    script = ["sh /bench.sh %d %d %d raw:/dev/vda qcow2:/dev/vdb" % (seq_mib, rand_ops, span_mib), "poweroff -f"]
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 1)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
        if sent == 0 and b"keel# " in out:
            p.stdin.write((script[0] + "\n").encode()); p.stdin.flush(); sent = 1
        elif sent == 1 and b"BENCH-END" in out:
            p.stdin.write((script[1] + "\n").encode()); p.stdin.flush(); sent = 2
    else:
        p.kill()
    rc = p.wait()
    text = out.decode(errors="replace").replace("\r", "")
    if os.environ.get("BLK_LOG_DIR"):
        with open(os.path.join(os.environ["BLK_LOG_DIR"], "%s.log" % os.path.basename(cmd[0])), "a") as f:
            f.write(" ".join(cmd) + "\n" + text + "\n")
    if sent == 0:
        why = [l for l in text.splitlines() if l.strip()]
        return None, (why[-1] if why else "exit %d" % rc)
    if sent < 2 or "BENCH-ERROR" in text:
        sys.exit("run failed (exit %s): %s\n%s" % (rc, " ".join(cmd), text[-3000:]))
    res = {}
    for m in re.finditer(r"^BENCH (\S+) (\S+) (\d+) ([\d.]+) ([\d.]+)$", text, re.M):
        res[(m.group(1), m.group(2))] = float(m.group(5)) - float(m.group(4))
    return res, None

rows = [("seq-write", "MiB/s", seq_mib), ("seq-read", "MiB/s", seq_mib),
        ("rand-write", "IOPS", rand_ops), ("rand-read", "IOPS", rand_ops)]
results = {}   # (variant, vmm) -> list of result dicts, or a string (n/a reason)
for i in range(runs):
    for variant in variants:
        # The first VMM alternates between runs, as in bench/blk-kvm.sh.
        for vmm in (("keel", "qemu") if i % 2 == 0 else ("qemu", "keel")):
            if isinstance(results.get((variant, vmm)), str):
                continue
            res, why = one(command(vmm, variant))
            if res is None:
                results[(variant, vmm)] = why
            else:
                results.setdefault((variant, vmm), []).append(res)

version = open("guest/VERSION").read().split("kernel_release=")[1].split()[0]
print("virtio-blk under tcg: Debian %s, keel -M pc vs qemu -M %s, -m 512; guest clock; median of %d run(s)"
      % (version, qemu_machine, runs))
print("seq: dd bs=1M count=%d O_DIRECT; rand: %d x 4 KiB O_DIRECT over %d MiB; cache=writeback unless the variant says"
      % (seq_mib, rand_ops, span_mib))
print("   %-38s %-6s %-11s %12s %12s %10s" % ("variant", "disk", "row", "keel", "qemu", "keel/qemu"))
for variant in variants:
    for disk in ("raw", "qcow2"):
        for row, unit, amount in rows:
            vals = {}
            for vmm in ("keel", "qemu"):
                r = results.get((variant, vmm))
                if isinstance(r, str) or not r:
                    vals[vmm] = None
                else:
                    vals[vmm] = amount / statistics.median(x[(disk, row)] for x in r)
            cell = lambda v: "n/a" if v is None else "%.1f %s" % (v, unit) if unit == "MiB/s" else "%.0f %s" % (v, unit)
            ratio = "%.2fx" % (vals["keel"] / vals["qemu"]) if vals["keel"] and vals["qemu"] else "n/a"
            print("   %-38s %-6s %-11s %12s %12s %10s" % (variant, disk, row, cell(vals["keel"]), cell(vals["qemu"]), ratio))
for variant in variants:
    t = {}
    for vmm in ("keel", "qemu"):
        r = results.get((variant, vmm))
        t[vmm] = None if isinstance(r, str) or not r else statistics.median(x[("none", "cpu-ref")] for x in r)
    if t["keel"] and t["qemu"]:
        print("   %-38s guest CPU alone (dd 20000 x 4 KiB /dev/zero -> /dev/null): keel %.2f s, qemu %.2f s, keel/qemu speed %.2fx"
              % (variant, t["keel"], t["qemu"], t["qemu"] / t["keel"]))

# Under kvm: the project's own virtio-blk driver (Tests/KeelTests/Guests/virtio-blk.gc) timing
# one-sector reads with the TSC, which both VMMs pass through. Its driver runs in ring 0.
kvm_guest = os.path.join(work, "virtio-blk.elf")
if os.path.exists(kvm_guest):
    loops = int(os.environ.get("BLK_KVM_LOOPS", "20000"))
    disk = os.path.join(work, "kvm.raw")
    with open(disk, "wb") as f:   # the pattern the guest checks: byte at o is (o >> 9) + 7 o
        f.write(bytes(((o >> 9) + 7 * o) & 255 for o in range(2 << 20)))
    base = ["-accel", "kvm", "-m", "64", "-kernel", kvm_guest, "-append", "loops=%d" % loops, "-nographic",
            "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", "file=%s,if=none,id=d0,format=raw" % disk]
    cmds = {"keel": [keel] + base + ["-device", "virtio-blk-pci,drive=d0"],
            # QEMU's virtio-blk-pci is transitional by default; the guest drives the modern device.
            "qemu": ["qemu-system-x86_64", "-M", "pc", "-nic", "none"] + base + ["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]}
    cycles = {"keel": [], "qemu": []}
    for i in range(max(runs, 3)):
        for vmm, cmd in cmds.items():
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
            m = re.search(rb"virtio-blk: (\d+) loop reads in (\d+) TSC cycles", p.stdout)
            if m:
                cycles[vmm].append(int(m.group(2)) / int(m.group(1)))
            else:
                print("   kvm %s: no result (exit %d): %s" % (vmm, p.returncode, p.stdout[-300:].decode(errors="replace")))
    if cycles["keel"] and cycles["qemu"]:
        k, q = statistics.median(cycles["keel"]), statistics.median(cycles["qemu"])
        print("virtio-blk under kvm: the project's test guest, %d one-sector reads (ring-0 driver), median of %d runs"
              % (loops, len(cycles["keel"])))
        print("   keel %.0f TSC cycles/read, qemu %.0f, keel/qemu speed %.2fx" % (k, q, q / k))

for (variant, vmm), r in results.items():
    if isinstance(r, str):
        print("   n/a: %s %s: %s" % (vmm, variant, r[:160]))
PY
if [ -e /dev/kvm ] && [ "${BLK_KVM:-1}" != 0 ]; then
    KEEL=$KEEL bench/blk-kvm.sh "$RUNS"
fi
