# shellcheck shell=bash
# Shared helpers for planet-image's fixture scripts (scripts/make-*).
# Source it; it does not change shell options. Progress goes to stderr.

# The name of the sourcing script, for messages.
PROG=${PROG:-$(basename "${0:-planet-image}")}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# as_root CMD...: run CMD as root (directly when root, else via sudo -n when available).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -- "$@"
    else
        die "need root to run '$*' (not root and no sudo)"
    fi
}

# apt_update_once: run 'apt-get update' at most once per process tree.
# A failing update (e.g. an unreachable third-party source) is only a warning: the
# Debian lists it did fetch are still usable, and the caller fails later if not.
apt_update_once() {
    if [ -n "${PLANET_APT_UPDATED:-}" ]; then
        return 0
    fi
    log "running apt-get update"
    if ! as_root apt-get update -q >&2; then
        log "warning: apt-get update reported errors; continuing with the lists it has"
    fi
    export PLANET_APT_UPDATED=1
}

# apt_has_candidate PKG: whether apt knows an installable version of PKG.
apt_has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# ensure_apt PKG...: install the Debian packages among PKG... that are not installed.
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed; then
            missing+=("$pkg")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    for pkg in "${missing[@]}"; do
        if ! apt_has_candidate "$pkg"; then
            apt_update_once
            break
        fi
    done
    log "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# ensure_pip SPEC MODULE: pip-install SPEC (e.g. 'moto[server]') unless python3 can already import
# MODULE (e.g. moto.server). Installs pip from Debian if missing; outside a virtualenv on Debian 12
# (PEP 668) it falls back to a --user install. Idempotent.
ensure_pip() {
    local spec=$1 module=$2
    if python3 -c "import $module" >/dev/null 2>&1; then
        return 0
    fi
    python3 -m pip --version >/dev/null 2>&1 || ensure_apt python3-pip
    log "installing $spec with pip"
    python3 -m pip install --quiet --disable-pip-version-check "$spec" >&2 \
        || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check --user "$spec" >&2 \
        || die "pip install '$spec' failed"
    python3 -c "import $module" >/dev/null 2>&1 || die "pip installed $spec but python3 cannot import $module"
}

# need_cmd CMD...: fail clearly unless every CMD is on PATH.
need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found"
    done
}

# fetch_debs DIR PKG...: make sure DIR holds the candidate .deb of every PKG (apt-get
# download, no root needed), reusing files already there when their SHA256 matches apt's.
# Prints the .deb paths, one a line, in the order of PKG...
fetch_debs() {
    local dir=$1 empty uris line pkg file sum url paths=()
    shift
    mkdir -p "$dir" || die "creating deb cache $dir"
    empty=$(mktemp -d) || die "creating a temporary directory"
    # One apt call for all packages: lines "'URL' FILE SIZE SHA256:HEX" (the file name is
    # the one apt-get download writes, epoch ':' encoded as %3a). Run in an empty directory,
    # else apt leaves out the files already present.
    if ! uris=$(cd "$empty" && apt-get download --print-uris "$@" 2>/dev/null); then
        apt_update_once
        uris=$(cd "$empty" && apt-get download --print-uris "$@") \
            || { rmdir "$empty"; die "apt cannot download $*"; }
    fi
    rmdir "$empty"
    for pkg in "$@"; do
        line=$(grep -F " ${pkg}_" <<<"$uris" | head -n 1)
        [ -n "$line" ] || die "apt gave no download for $pkg"
        read -r url file _ sum <<<"$line"
        sum=${sum#SHA256:}
        if [ ! -s "$dir/$file" ] || ! sha256sum --status -c - <<<"$sum  $dir/$file"; then
            log "downloading $file"
            local opts=()
            # As root, apt's _apt sandbox user cannot write into root-owned cache dirs.
            [ "$(id -u)" -eq 0 ] && opts+=(-o APT::Sandbox::User=root)
            rm -f "$dir/$file"
            (cd "$dir" && apt-get download -q "${opts[@]}" "$pkg" >&2) \
                || die "apt-get download $pkg (${url//\'/}) failed"
            [ -s "$dir/$file" ] || die "apt-get download $pkg did not produce $dir/$file"
        fi
        paths+=("$dir/$file")
    done
    printf '%s\n' "${paths[@]}"
}

# reproducible_tar SRCDIR OUT [COMPRESSOR] [MEMBERS...]: write the tree under SRCDIR into OUT
# (atomically), entries owned by 0:0, sorted, mtimes set to SOURCE_DATE_EPOCH (or the epoch
# given in TAR_EPOCH). COMPRESSOR is 'none' or 'gzip'. MEMBERS default to '.'.
reproducible_tar() {
    local src=$1 out=$2 comp=${3:-none} epoch=${TAR_EPOCH:-${SOURCE_DATE_EPOCH:-}}
    shift 3 || shift $#
    local members=("$@")
    [ "${#members[@]}" -gt 0 ] || members=(.)
    local tmp="$out.tmp.$$"
    local args=(--format=gnu --sort=name --owner=0 --group=0 --numeric-owner)
    [ -n "$epoch" ] && args+=("--mtime=@$epoch")
    mkdir -p "$(dirname "$out")" || die "creating $(dirname "$out")"
    case $comp in
        none) tar "${args[@]}" -C "$src" -cf "$tmp" "${members[@]}" || { rm -f "$tmp"; die "writing $out"; } ;;
        gzip) { tar "${args[@]}" -C "$src" -cf - "${members[@]}" | gzip -n -9 >"$tmp"; } \
                  || { rm -f "$tmp"; die "writing $out"; } ;;
        *) die "unknown compressor $comp" ;;
    esac
    mv -f "$tmp" "$out" || die "moving $tmp to $out"
}

# abspath PATH: PATH made absolute (the file need not exist).
abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

# install_busybox ROOT BUSYBOX: put BUSYBOX at ROOT/bin/busybox plus a symlink for every
# applet it has (from 'busybox --list-full'), never overwriting an existing file.
install_busybox() {
    local root=$1 bb=$2 applet applets
    install -D -m 0755 "$bb" "$root/bin/busybox" || die "installing busybox into $root"
    applets=$("$root/bin/busybox" --list-full) || die "listing busybox applets"
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
    while IFS= read -r applet; do
        case $applet in
            '' | bin/busybox | linuxrc) continue ;;
        esac
        mkdir -p "$root/${applet%/*}"
        [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done <<<"$applets"
}

# install_base_files ROOT HOSTNAME: the minimal /etc and directory skeleton of a root.
install_base_files() {
    local root=$1 host=$2 d
    for d in bin sbin etc root dev proc sys run tmp var var/lib var/log var/tmp usr usr/bin usr/sbin mnt; do
        mkdir -p "$root/$d"
        chmod 0755 "$root/$d"
    done
    chmod 0700 "$root/root"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
        >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
    printf '%s\n' 'root:*:19000:0:99999:7:::' 'nobody:*:19000:0:99999:7:::' >"$root/etc/shadow"
    chmod 0644 "$root/etc/passwd" "$root/etc/group"
    chmod 0640 "$root/etc/shadow"
    printf '%s\n' "$host" >"$root/etc/hostname"
    printf '%s\n' '127.0.0.1 localhost' "127.0.1.1 $host" '::1 localhost ip6-localhost ip6-loopback' \
        >"$root/etc/hosts"
    printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
    : >"$root/etc/resolv.conf"
    chmod 0644 "$root/etc/hostname" "$root/etc/hosts" "$root/etc/nsswitch.conf" "$root/etc/resolv.conf"
}

# install_build_deps: everything building and testing planet-image needs on Debian 12.
# qemu-system-x86 from Debian may replace a newer qemu-utils, so qemu-utils is checked again.
install_build_deps() {
    ensure_apt squashfs-tools-ng squashfs-tools e2fsprogs dosfstools mtools fdisk gdisk \
        qemu-system-x86 ovmf zstd xz-utils cpio python3 busybox-static mmdebstrap \
        ca-certificates curl libc6-dev gcc pkg-config minisign
    ensure_apt qemu-utils
    # cloud-init's own schema validator checks the cloud-init/ examples (tests/datasources.rs).
    ensure_apt cloud-init
    # grub-mkimage makes GRUB's core.img for `build --bios` (the modules come from the fetched grub-pc-bin).
    ensure_apt grub-common
    need_cmd cargo
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest >&2
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        rustup component add rustfmt clippy >&2 || die "rustfmt and clippy are needed (rustup component add rustfmt clippy)"
    fi
}

# build_all: the CLI (debug) and planet-init as a static executable (it is PID 1 of an
# initramfs with no libc). There is no musl target here, so glibc is linked statically.
# planet-init is built with the profile it ships in: release, whose overflow behaviour the
# workspace Cargo.toml sets on purpose (see [profile.release] there).
build_all() {
    cargo build --workspace --quiet
    RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
        cargo build --quiet --release -p planet-host --target x86_64-unknown-linux-gnu
}
