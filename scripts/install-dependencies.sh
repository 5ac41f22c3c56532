#!/usr/bin/env bash
# Installs the Debian packages Keel's build, tests and benchmarks use (Swift itself comes with the
# machine). Idempotent: installs only what is missing.
set -euo pipefail
packages=(
  gcc binutils make          # test guests are built at test time
  acpica-tools               # iasl: decompiles Keel's ACPI tables in the tests
  cpio gzip xz-utils zstd    # the default guest's initramfs and kernel payload
  qemu-system-x86            # the reference for benchmarks and guest cross-checks
  qemu-utils                 # qemu-img, qemu-io: the Block tests' image cross-checks, bench/img.sh
  libslirp-dev               # -netdev user: the Net target links Debian's libslirp
  zlib1g-dev bc              # qcow2 compressed clusters (CZlib links libz); bench/img.sh arithmetic
  liburing-dev               # -drive aio=io_uring (CURing links liburing)
  iproute2 procps
  iperf3                     # bench/net.sh: the host server, and the guest's copy with its libraries
  python3 python3-pip        # the QMP tests drive Keel with QEMU's own client, qemu.qmp (PyPI)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-dependencies: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
fi

# qemu.qmp, QEMU's Python QMP client, for the python3 the tests find first on PATH. Debian marks its
# system Python externally managed; installing into it as root is what CI wants here.
if ! python3 -c 'import qemu.qmp' >/dev/null 2>&1; then
  echo "install-dependencies: installing qemu.qmp (pip)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore qemu.qmp 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages qemu.qmp
fi
