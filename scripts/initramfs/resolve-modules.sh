# Sourced by scripts/fetch-default-guest.sh (uses its die/note/need).
# install_guest_modules MODDIR DEST: copy the virtio modules Keel's devices need, with every
# module they depend on, from the kernel package's module tree MODDIR into DEST (the initramfs's
# /lib/modules/<release>), uncompressed so busybox insmod can load them, and write
# DEST/modules.keel-load: their paths relative to DEST, dependencies first, for /init.
#
# Debian's package ships no modules.dep (depmod runs at install time), so dependencies come from
# each module's own .modinfo "depends=" entry.

# Must be present, as a module or built in.
KEEL_REQUIRED_MODULES="virtio virtio_ring virtio_pci virtio_blk virtio_net virtio_console"
# Loaded when the kernel has them as modules.
KEEL_OPTIONAL_MODULES="virtio_pci_modern_dev virtio_pci_legacy_dev failover net_failover rng_core
virtio_rng scsi_common scsi_mod sd_mod virtio_scsi vsock vmw_vsock_virtio_transport_common
vmw_vsock_virtio_transport"

declare -A _mod_path=() _mod_builtin=() _mod_state=()
_mod_order=()
_mod_builtin_used=()
_mod_absent=()

# Module names use '_' where file names may use '-' (virtio-rng.ko is module virtio_rng).
_module_name() {
    local base=${1##*/}
    base=${base%%.ko*}
    echo "${base//-/_}"
}

_copy_module() {
    local src=$1 dst=$2
    mkdir -p "$(dirname "$dst")"
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) need xz xz-utils; xz -dc "$src" >"$dst" ;;
        *.ko.zst) need zstd zstd; zstd -dcq "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *) die "unknown module compression: $src" ;;
    esac || die "could not decompress $src"
}

_module_depends() {
    readelf -p .modinfo "$1" 2>/dev/null | sed -n 's/^ *\[ *[0-9a-f]*\] *depends=//p' | sed -n 1p
}

# Depth-first: a module is appended to the load order after all of its dependencies.
_visit_module() {
    local name=$1 why=$2 moddir=$3 dest=$4
    case "${_mod_state[$name]:-}" in
        done) return 0 ;;
        visiting) die "module dependency cycle through $name" ;;
    esac
    if [ -n "${_mod_builtin[$name]:-}" ]; then
        _mod_state[$name]=done
        _mod_builtin_used+=("$name")
        return 0
    fi
    local rel=${_mod_path[$name]:-}
    if [ -z "$rel" ]; then
        case "$why" in
            optional) _mod_state[$name]=done; _mod_absent+=("$name"); return 0 ;;
            required) die "module $name is neither built into the kernel nor shipped as a module" ;;
            *) die "module $why depends on $name, which the kernel package does not ship" ;;
        esac
    fi
    _mod_state[$name]=visiting
    local target="$dest/${rel%%.ko*}.ko"
    _copy_module "$moddir/$rel" "$target"
    local deps dep
    deps=$(_module_depends "$target")
    for dep in ${deps//,/ }; do
        _visit_module "$(_module_name "$dep")" "$name" "$moddir" "$dest"
    done
    _mod_state[$name]=done
    _mod_order+=("${target#"$dest"/}")
}

install_guest_modules() {
    local moddir=$1 dest=$2 f name
    [ -d "$moddir/kernel" ] || die "$moddir has no kernel/ module tree"
    while IFS= read -r f; do
        _mod_path[$(_module_name "$f")]=${f#"$moddir"/}
    done < <(find "$moddir/kernel" -type f \( -name '*.ko' -o -name '*.ko.*' \))
    if [ -r "$moddir/modules.builtin" ]; then
        while IFS= read -r f; do
            [ -n "$f" ] && _mod_builtin[$(_module_name "$f")]=1
        done <"$moddir/modules.builtin"
    else
        note "warning: $moddir has no modules.builtin; assuming nothing is built in"
    fi
    mkdir -p "$dest"
    for name in $KEEL_REQUIRED_MODULES; do _visit_module "$name" required "$moddir" "$dest"; done
    for name in $KEEL_OPTIONAL_MODULES; do _visit_module "$name" optional "$moddir" "$dest"; done
    printf '%s\n' "${_mod_order[@]}" >"$dest/modules.keel-load"
    local names=() rel
    for rel in "${_mod_order[@]}"; do names+=("$(_module_name "$rel")"); done
    note "modules to load (${#_mod_order[@]}): ${names[*]}"
    note "built in: ${_mod_builtin_used[*]:-none}; not in this kernel: ${_mod_absent[*]:-none}"
}
