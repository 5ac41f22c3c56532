#!/usr/bin/env bash
# Issue 8's picture in numbers: the same guest dd workload (64 MiB read and write with O_DIRECT,
# 1 MiB requests) on Debian's kernel under tcg through in-VMM virtio-blk, vhost-user-blk to Keel's
# back-end (keel vhost-user-blk) and vhost-user-blk to qemu-storage-daemon, with Keel and with
# QEMU as the VMM. Prints MB/s as the guest's dd reports it. Usage: bench/vhost-user-blk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-guest.sh >/dev/null
swift build -c release --product keel 2>&1 | grep -E "error" && exit 1
KEEL=$(swift build -c release --product keel --show-bin-path)/keel
exec python3 - "$KEEL" <<'PY'
import os, re, shutil, subprocess, sys, tempfile, time
keel = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="keel-vhu-bench-", dir="/tmp")
disk = os.path.join(tmp, "disk.img")
with open(disk, "wb") as f: f.truncate(64 << 20)
# Busybox's dd prints no rate: the guest's uptime around each dd times it.
def timed(cmd): return f"a=$(cut -d' ' -f1 /proc/uptime); {cmd} 2>/dev/null; echo T=$a:$(cut -d' ' -f1 /proc/uptime)\n"
script = (timed("dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct")
          + timed("dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct")
          + timed("dd if=/dev/vda of=/dev/null bs=4k count=4096 iflag=direct")
          + "poweroff -f\n")
base = ["-m", "512", "-kernel", "guest/vmlinuz", "-initrd", "guest/initrd.img",
        "-append", "console=ttyS0 keel.init=shell", "-nographic", "-no-reboot"]
shared = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "memory-backend=mem"]

def backend(kind, sock):
    if kind == "keel":
        cmd = [keel, "vhost-user-blk", "--socket-path=" + sock, "--blk-file=" + disk]
    else:
        cmd = ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={disk},cache.direct=off",
               "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock},writable=on"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock): break
        time.sleep(0.05)
    return p

def run(vmm, path):
    sock = os.path.join(tmp, f"{vmm}-{path}.sock")
    extra, be = [], None
    if path == "virtio-blk":
        extra = ["-drive", f"file={disk},if=none,id=d0,format=raw,cache=writeback", "-device", "virtio-blk-pci,drive=d0"]
    else:
        be = backend("keel" if path == "vhost-user keel" else "qsd", sock)
        extra = shared + ["-chardev", f"socket,id=c0,path={sock}", "-device", "vhost-user-blk-pci,chardev=c0"]
    cmd = ([keel, "-accel", "tcg"] if vmm == "keel" else ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-nic", "none"]) + base + extra
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    os.set_blocking(p.stdout.fileno(), True)
    sent = False
    start = time.monotonic()
    while time.monotonic() - start < 300:
        line = p.stdout.readline()
        if not line: break
        out += line
        if not sent and b"KEEL-GUEST-READY" in out:
            time.sleep(1); p.stdin.write(script.encode()); p.stdin.flush(); sent = True
    p.kill(); p.wait()
    if be: be.kill(); be.wait()
    spans = re.findall(rb"^T=([\d.]+):([\d.]+)", out, re.M)
    sizes = [64, 64, 16]
    return [f"{mb / max(float(b) - float(a), 0.01):.1f}" for mb, (a, b) in zip(sizes, spans)] if len(spans) == 3 else ["?", "?", "?"]

print("| VMM | path | read 1M MB/s | write 1M MB/s | read 4k MB/s |")
print("| --- | --- | --- | --- | --- |")
for vmm in ["keel", "qemu"]:
    for path in ["virtio-blk", "vhost-user keel", "vhost-user qsd"]:
        print(f"| {vmm} | {path} | " + " | ".join(run(vmm, path)) + " |", flush=True)
shutil.rmtree(tmp, ignore_errors=True)
PY
