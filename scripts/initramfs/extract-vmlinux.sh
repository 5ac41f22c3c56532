# Sourced by scripts/fetch-default-guest.sh (uses its die/note/need).
# extract_vmlinux BZIMAGE OUT: write the ELF vmlinux carried inside a bzImage and check that it
# has the Xen PVH entry note, so it boots through the PVH ABI as well as the Linux boot protocol.

# Little-endian unsigned reads at a byte offset of a file.
_le_u8()  { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' \n'; }
_le_u16() { od -An -tu2 -j "$2" -N2 "$1" | tr -d ' \n'; }
_le_u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' \n'; }

# The compression of the payload, from its magic bytes.
_payload_format() {
    local hex
    hex=$(od -An -tx1 -N6 "$1" | tr -d ' \n')
    case "$hex" in
        1f8b*) echo gzip ;;
        fd377a585a00) echo xz ;;
        28b52ffd*) echo zstd ;;
        02214c18*) echo lz4 ;;     # lz4 legacy frame, what the kernel's lz4 -l writes
        5d0000*) echo lzma ;;
        425a68*) echo bzip2 ;;
        894c5a4f*) echo lzo ;;
        *) echo "unknown:$hex" ;;
    esac
}

# _decompress FORMAT: stdin to stdout with Debian's tool, installed on first use.
_decompress() {
    case "$1" in
        gzip) need gzip gzip; gzip -dc ;;
        xz) need xz xz-utils; xz -dc --single-stream ;;
        lzma) need xz xz-utils; xz -dc --format=lzma ;;
        zstd) need zstd zstd; zstd -dcq ;;
        lz4) need lz4 lz4; lz4 -dcq ;;
        bzip2) need bzip2 bzip2; bzip2 -dc ;;
        lzo) need lzop lzop; lzop -dc ;;
        *) return 1 ;;
    esac
}

_is_elf64() {
    [ "$(od -An -tx1 -N5 "$1" | tr -d ' \n')" = 7f454c4602 ]
}

extract_vmlinux() {
    local in=$1 out=$2
    local size setup_sects version pm_start payload_offset payload_length start format trailer
    size=$(stat -c %s "$in")
    [ "$size" -gt 1024 ] || die "$in is too small to be a bzImage"
    # Linux boot protocol, setup header (Documentation/arch/x86/boot.rst).
    [ "$(dd if="$in" bs=1 skip=$((0x202)) count=4 2>/dev/null)" = HdrS ] || die "$in has no HdrS setup header"
    version=$(_le_u16 "$in" $((0x206)))
    [ "$version" -ge $((0x0208)) ] || die "$in boot protocol $(printf '%#x' "$version") predates payload_offset (2.08)"
    setup_sects=$(_le_u8 "$in" $((0x1f1)))
    [ "$setup_sects" -ne 0 ] || setup_sects=4
    pm_start=$(( (setup_sects + 1) * 512 ))
    payload_offset=$(_le_u32 "$in" $((0x248)))
    payload_length=$(_le_u32 "$in" $((0x24c)))
    start=$(( pm_start + payload_offset ))
    [ "$payload_length" -gt 4 ] && [ $(( start + payload_length )) -le "$size" ] \
        || die "$in payload ($start+$payload_length) lies outside the file ($size bytes)"

    local work="$out.payload"
    dd if="$in" of="$work" bs=1M iflag=skip_bytes,count_bytes skip="$start" count="$payload_length" status=none \
        || die "cannot read the payload of $in"
    format=$(_payload_format "$work")
    case "$format" in unknown:*) rm -f "$work"; die "unrecognised compressed payload in $in (magic ${format#unknown:})" ;; esac
    note "vmlinux payload: $format, $payload_length bytes at offset $start"

    # Except for gzip, the kernel's build appends the uncompressed size (le32) after the stream.
    trailer=$(_le_u32 "$work" $(( payload_length - 4 )))
    rm -f "$out"
    if [ "$format" != gzip ]; then
        head -c $(( payload_length - 4 )) "$work" | _decompress "$format" >"$out" 2>/dev/null || rm -f "$out"
    fi
    if ! { [ -s "$out" ] && _is_elf64 "$out"; }; then
        # gzip exits 2 for trailing bytes it ignored; the ELF check below is the real test.
        _decompress "$format" <"$work" >"$out" 2>/dev/null || true
    fi
    rm -f "$work"
    [ -s "$out" ] || die "decompressing the $format payload of $in failed"
    _is_elf64 "$out" || die "the payload of $in did not decompress to an ELF64 vmlinux"
    if [ "$format" != gzip ] && [ "$(stat -c %s "$out")" != "$trailer" ]; then
        note "warning: vmlinux is $(stat -c %s "$out") bytes, the bzImage's size trailer says $trailer"
    fi

    # Xen PVH ABI: a PT_NOTE with owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18) holding the
    # 32-bit physical entry point.
    local note_line entry_hex
    readelf -lW "$out" 2>/dev/null | grep -E '^ +NOTE ' >/dev/null || die "vmlinux has no PT_NOTE program header"
    note_line=$(readelf -n "$out" 2>/dev/null | grep -A1 -E '^ +Xen +0x[0-9a-f]+[[:space:]].*(\(0x00000012\)|PHYS32_ENTRY)' \
        | sed -n 's/^ *description data: //p' | sed -n 1p)
    [ -n "$note_line" ] || die "vmlinux has no Xen PHYS32_ENTRY note (kernel built without CONFIG_PVH?)"
    # The note holds a little-endian address; print the low 32 bits.
    entry_hex=$(echo "$note_line" | awk '{ printf "%s%s%s%s", $4, $3, $2, $1 }')
    note "vmlinux: ELF64 with PVH entry 0x$entry_hex ($(stat -c %s "$out") bytes)"
}
