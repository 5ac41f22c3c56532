#!/usr/bin/env bash
# Fetch Keel's default guest from Debian's package archive and build its initramfs.
#
# Outputs (in guest/ at the repo root, or $KEEL_GUEST_DIR):
#   vmlinuz     Debian's cloud kernel, bzImage (Linux boot protocol)
#   vmlinux     the same kernel as an ELF with the Xen PVH entry note
#   initrd.img  gzip'd newc cpio: busybox-static, /init, the kernel's virtio modules
#   config      the kernel's build configuration
#   VERSION     package=, version=, kernel_release=, busybox_version=
#
# Cached: when every output exists and the initramfs inputs are unchanged it only prints the
# paths. --refresh re-resolves the newest kernel package and rebuilds everything.
# Nothing here is committed to the repository; only Debian's archive is contacted.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
INIT_SRC="$SCRIPT_DIR/initramfs/init"
RESOLVE_MODULES="$SCRIPT_DIR/initramfs/resolve-modules.sh"
EXTRACT_VMLINUX="$SCRIPT_DIR/initramfs/extract-vmlinux.sh"
OUT=${KEEL_GUEST_DIR:-$REPO_ROOT/guest}
META_PACKAGE=linux-image-cloud-amd64
# Bumped when the layout of the outputs changes, so old caches are rebuilt.
FORMAT=1

die() { echo "fetch-default-guest: error: $*" >&2; exit 1; }
note() { echo "fetch-default-guest: $*" >&2; }

refresh=0
for arg in "$@"; do
    case "$arg" in
        --refresh) refresh=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (expected --refresh)" ;;
    esac
done

[ -r "$INIT_SRC" ] || die "missing $INIT_SRC"
[ -r "$RESOLVE_MODULES" ] || die "missing $RESOLVE_MODULES"
[ -r "$EXTRACT_VMLINUX" ] || die "missing $EXTRACT_VMLINUX"

print_paths() {
    echo "vmlinuz: $OUT/vmlinuz"
    echo "vmlinux: $OUT/vmlinux"
    echo "initrd:  $OUT/initrd.img"
}

# The stamp covers everything that shapes the initramfs, so editing /init rebuilds it.
inputs_stamp() {
    { echo "format=$FORMAT"; cat "${BASH_SOURCE[0]}" "$INIT_SRC" "$RESOLVE_MODULES" "$EXTRACT_VMLINUX"; } \
        | sha256sum | cut -d' ' -f1
}

# One build at a time per output directory (tests may run this concurrently).
mkdir -p "$OUT" || die "cannot create $OUT"
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$OUT/.lock" || die "cannot open $OUT/.lock"
    flock 9 || die "cannot lock $OUT/.lock"
fi

if [ "$refresh" = 0 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initrd.img" ] \
    && [ -s "$OUT/VERSION" ] && [ -s "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$(inputs_stamp)" ]; then
    print_paths
    exit 0
fi

is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=0
apt_update_once() {
    [ "$apt_updated" = 1 ] && return 0
    is_root || die "apt-get update needs root"
    note "apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
}

# need TOOL PACKAGE: install PACKAGE with apt-get unless TOOL is already on PATH.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    is_root || die "'$1' is missing and installing package '$2' needs root"
    note "installing $2 (for $1)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null \
            || die "apt-get install $2 failed"
    fi
    command -v "$1" >/dev/null 2>&1 || die "package $2 installed but '$1' is still missing"
}

# shellcheck source=initramfs/extract-vmlinux.sh
. "$EXTRACT_VMLINUX"
# shellcheck source=initramfs/resolve-modules.sh
. "$RESOLVE_MODULES"

need apt-get apt
need dpkg-deb dpkg
need readelf binutils
need cpio cpio
need gzip gzip
need sha256sum coreutils

# 1. Resolve the kernel package the cloud metapackage currently points at.
resolve_kernel_package() {
    { apt-cache depends "$META_PACKAGE" 2>/dev/null || true; } \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sed -n 1p
}
package_version() {
    { apt-cache show --no-all-versions "$1" 2>/dev/null || true; } | sed -n 's/^Version: //p' | sed -n 1p
}
[ "$refresh" = 1 ] && apt_update_once
kpkg=$(resolve_kernel_package)
if [ -z "$kpkg" ]; then
    apt_update_once
    kpkg=$(resolve_kernel_package)
fi
[ -n "$kpkg" ] || die "cannot resolve the kernel behind $META_PACKAGE (apt-cache depends found no linux-image-*-cloud-amd64)"
kversion=$(package_version "$kpkg")
[ -n "$kversion" ] || die "apt-cache show $kpkg gave no Version"
note "kernel package $kpkg $kversion"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-guest.XXXXXX")
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

# apt's download sandbox user cannot write into a private temp dir; as root download directly.
apt_download_opts=()
is_root && apt_download_opts=(-o APT::Sandbox::User=root)
download() { (cd "$tmp" && apt-get -qq "${apt_download_opts[@]}" download "$kpkg" busybox-static); }
if ! download; then
    # Stale package lists name files the archive has since replaced: refresh and resolve again.
    [ "$apt_updated" = 1 ] && die "apt-get download $kpkg busybox-static failed"
    apt_update_once
    kpkg=$(resolve_kernel_package)
    [ -n "$kpkg" ] || die "cannot resolve the kernel behind $META_PACKAGE after apt-get update"
    kversion=$(package_version "$kpkg")
    note "retrying with kernel package $kpkg $kversion"
    rm -f "$tmp"/*.deb
    download || die "apt-get download $kpkg busybox-static failed"
fi
kdeb=$(ls "$tmp"/linux-image-*.deb 2>/dev/null | sed -n 1p)
bdeb=$(ls "$tmp"/busybox-static_*.deb 2>/dev/null | sed -n 1p)
[ -n "$kdeb" ] || die "apt-get download produced no $kpkg .deb"
[ -n "$bdeb" ] || die "apt-get download produced no busybox-static .deb"
bbversion=$(dpkg-deb -f "$bdeb" Version)

# 2. Unpack the kernel and busybox.
dpkg-deb -x "$kdeb" "$tmp/kernel" || die "dpkg-deb -x $kdeb failed"
dpkg-deb -x "$bdeb" "$tmp/busybox" || die "dpkg-deb -x $bdeb failed"

moddir_base=
for d in "$tmp/kernel/lib/modules" "$tmp/kernel/usr/lib/modules"; do
    [ -d "$d" ] && moddir_base=$d && break
done
[ -n "$moddir_base" ] || die "$kpkg has no lib/modules tree"
krelease=$(ls "$moddir_base" | sed -n 1p)
[ -n "$krelease" ] || die "$kpkg has an empty lib/modules"
moddir="$moddir_base/$krelease"
vmlinuz_src="$tmp/kernel/boot/vmlinuz-$krelease"
config_src="$tmp/kernel/boot/config-$krelease"
[ -s "$vmlinuz_src" ] || die "$kpkg has no boot/vmlinuz-$krelease"
[ -s "$config_src" ] || die "$kpkg has no boot/config-$krelease"
busybox_bin="$tmp/busybox/bin/busybox"
[ -x "$busybox_bin" ] || die "busybox-static has no executable bin/busybox"

stage="$tmp/out"
mkdir -p "$stage"
cp "$vmlinuz_src" "$stage/vmlinuz"
cp "$config_src" "$stage/config"

# 3. The PVH form: the ELF vmlinux inside the bzImage.
extract_vmlinux "$stage/vmlinuz" "$stage/vmlinux"

# 4. The initramfs.
root="$tmp/initramfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules}
chmod 1777 "$root/tmp"
cp "$busybox_bin" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
"$root/bin/busybox" --list-full >"$tmp/applets" || die "cannot list busybox applets"
while read -r applet; do
    case "$applet" in ""|bin/busybox|*/../*|/*) continue ;; esac
    mkdir -p "$root/$(dirname "$applet")"
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done <"$tmp/applets"
[ -L "$root/bin/sh" ] || die "busybox provides no bin/sh applet"
cp "$INIT_SRC" "$root/init"
chmod 755 "$root/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
# The kernel opens /dev/console for init before /init can mount devtmpfs.
if is_root; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
else
    note "not root: no /dev/console node in the initramfs (init reopens it after mounting devtmpfs)"
fi

install_guest_modules "$moddir" "$root/lib/modules/$krelease"

cpio_opts=(-o -H newc -R 0:0 --quiet)
cpio --help 2>&1 | grep -- --reproducible >/dev/null && cpio_opts+=(--reproducible)
(cd "$root" && find . -mindepth 1 -exec touch -h -d @0 {} + \
    && find . -mindepth 1 | LC_ALL=C sort | cpio "${cpio_opts[@]}") | gzip -9n >"$stage/initrd.img" \
    || die "building initrd.img with cpio and gzip failed"

cat >"$stage/VERSION" <<EOF
package=$kpkg
version=$kversion
kernel_release=$krelease
busybox_version=$bbversion
EOF

# Install the outputs; the stamp goes last so an interrupted run is never taken as cached.
rm -f "$OUT/.stamp"
for f in vmlinuz vmlinux initrd.img config VERSION; do
    mv -f "$stage/$f" "$OUT/$f"
done
inputs_stamp >"$OUT/.stamp"
note "built guest for $krelease ($kpkg $kversion)"
print_paths
