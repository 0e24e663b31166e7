# shellcheck shell=bash
# Container images for app packages, built offline from Debian packages: mmdebstrap (minbase,
# no Recommends, no docs, man pages or locales) into a directory, the image's own files copied
# over it, then one docker archive whose single layer is the whole tree
# (scripts/lib/docker-archive.py --rootfs). Sourced after scripts/lib/common.sh.
#
# An image's source directory holds:
#   entrypoint   installed as /usr/local/bin/entrypoint (mode 0755), the image's Entrypoint
#   rootfs/      optional; copied over the root (files 0644, directories 0755, owned by root)
#   customize    optional; a /bin/sh script run inside the finished root (chroot) as root
#   provides     optional; virtual packages (one a line, # comments) the image declares
#                provided without installing them: an empty package "planet-app-provides"
#                with those Provides is installed first, so apt leaves out dependencies the
#                image never uses

APP_SUITE=${APP_SUITE:-bookworm}

# app_mirrors: lines "URL SUITE..." for the Debian mirrors the host's apt uses (deb822 or
# one-line sources): the main mirror with SUITE and SUITE-updates, the security mirror with
# SUITE-security. deb.debian.org when apt names none.
app_mirrors() {
    local urls url main="" security=""
    urls=$({
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' || true
    } | { grep -E '^https?://[^ ]*/debian(-security)?/?$' || true; } | sed 's,/$,,' | sort -u)
    while IFS= read -r url; do
        case $url in
            '') ;;
            *-security) [ -n "$security" ] || security=$url ;;
            *) [ -n "$main" ] || main=$url ;;
        esac
    done <<<"$urls"
    printf '%s %s %s\n' "${main:-http://deb.debian.org/debian}" "$APP_SUITE" "$APP_SUITE-updates"
    [ -z "$security" ] || printf '%s %s\n' "$security" "$APP_SUITE-security"
}

# app_fetch_releases DIR: downloads the suites' InRelease files from the mirrors into DIR
# (small files; mmdebstrap fetches the same indexes moments later), so a cache key follows the
# mirror's state rather than the age of the host's apt lists. Without the network it falls back
# to the host's lists, with a warning. Sets APP_RELEASE_DIR.
app_fetch_releases() {
    local dir=$1 url suite ok=1 suites
    rm -rf "$dir"
    mkdir -p "$dir"
    while read -r url suites; do
        for suite in $suites; do
            /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file \
                "$url/dists/$suite/InRelease" "$dir/${url//[^A-Za-z0-9.-]/_}_$suite" >/dev/null 2>&1 || ok=""
        done
    done < <(app_mirrors)
    if [ -z "$ok" ]; then
        log "warning: cannot fetch the mirror's InRelease files; keying on the host's apt lists"
        rm -rf "$dir"
        APP_RELEASE_DIR=""
        return 0
    fi
    APP_RELEASE_DIR=$dir
}

# app_release_files: the Release files the images are keyed by: those app_fetch_releases
# fetched, else the InRelease (or Release) files of the suites in the host's apt lists.
app_release_files() {
    local f
    if [ -n "${APP_RELEASE_DIR:-}" ]; then
        for f in "$APP_RELEASE_DIR"/*; do [ -s "$f" ] && printf '%s\n' "$f"; done
        return 0
    fi
    for f in /var/lib/apt/lists/*_dists_"$APP_SUITE"*_InRelease /var/lib/apt/lists/*_dists_"$APP_SUITE"*_Release; do
        [ -s "$f" ] && printf '%s\n' "$f"
    done
    return 0
}

# app_source_date_epoch: the newest 'Date:' of the suites' Release files (seconds since the
# epoch), so a build from the same mirror state gets the same timestamps. 0 without lists.
app_source_date_epoch() {
    local f d s best=0
    while IFS= read -r f; do
        d=$(sed -n 's/^Date: //p' "$f" | head -n 1)
        [ -n "$d" ] || continue
        s=$(date -u -d "$d" +%s 2>/dev/null) || continue
        [ "$s" -gt "$best" ] && best=$s
    done < <(app_release_files)
    printf '%s\n' "$best"
}

# app_upstream_version VERSION: a Debian version reduced to its upstream digits and dots
# (1:10.11.14-0+deb12u2 -> 10.11.14, 6.1.9+dfsg1-0+deb12u1 -> 6.1.9), usable as an image tag.
app_upstream_version() {
    local v=${1#*:}
    v=${v%%-*}
    v=$(printf '%s\n' "$v" | sed -E 's/^([0-9]+(\.[0-9]+)*).*/\1/')
    [[ $v =~ ^[0-9]+(\.[0-9]+)*$ ]] || return 1
    printf '%s\n' "$v"
}

# app_dir_digest DIR: a digest of every file under DIR (names, modes, contents).
app_dir_digest() {
    local dir=$1
    (cd "$dir" && find . \( -type f -o -type l \) -print0 | LC_ALL=C sort -z \
        | xargs -0 -r sh -c 'for f; do printf "%s %s\n" "$(stat -c %a "$f")" "$f"; if [ -L "$f" ]; then readlink "$f"; else cat "$f"; fi; done' sh) \
        | sha256sum | cut -d' ' -f1
}

# app_rm_work DIR: removes a work directory, unless something is still mounted under it (a
# failed mmdebstrap could leave /dev or /proc bound there; rm must never reach the host's).
app_rm_work() {
    local dir
    dir=$(realpath -e "$1" 2>/dev/null) || return 0
    if awk -v d="$dir/" '{ if (index($2 "/", d) == 1) found = 1 } END { exit !found }' /proc/self/mounts; then
        log "warning: leaving $dir in place: something is still mounted under it"
        return 0
    fi
    rm -rf --one-file-system "$dir"
}

# app_image_key SRCDIR NAME REPO VERSION_PKG EXPOSE KEYFILES PACKAGES...: the cache key of an
# image (16 hex digits). KEYFILES is a colon-separated list of scripts that shape every image.
app_image_key() {
    local src=$1 name=$2 repo=$3 vpkg=$4 expose=$5 keyfiles=$6 f files=()
    shift 6
    {
        IFS=: read -r -a files <<<"$keyfiles"
        for f in "${files[@]}"; do cat "$f"; done
        app_dir_digest "$src"
        printf '%s\n' "$name" "$repo" "$vpkg" "$expose"
        printf '%s\n' "$@"
        app_mirrors
        app_release_files | while IFS= read -r f; do sha256sum <"$f"; done
    } | sha256sum | cut -c1-16
}

# app_provides_deb SRCDIR OUTDIR: when SRCDIR has a provides file, builds the empty package
# that provides its virtual packages in OUTDIR and prints the .deb's path.
app_provides_deb() {
    local src=$1 dir=$2 list
    [ -f "$src/provides" ] || return 0
    list=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$src/provides" | { grep -v '^$' || true; } | paste -sd, - | sed 's/,/, /g')
    [ -n "$list" ] || return 0
    mkdir -p "$dir/provides/DEBIAN"
    cat >"$dir/provides/DEBIAN/control" <<EOF
Package: planet-app-provides
Version: 1
Architecture: all
Maintainer: planet-image <root@localhost>
Section: misc
Priority: optional
Provides: $list
Description: virtual packages this container image declares provided
 Made by planet-image's scripts/lib/app-image.sh from the image's provides list: the image
 leaves out what its packages depend on but never run in it.
EOF
    dpkg-deb --root-owner-group -Zxz --build "$dir/provides" "$dir/planet-app-provides_1_all.deb" >/dev/null \
        || die "building the provides package of $src"
    printf '%s\n' "$dir/planet-app-provides_1_all.deb"
}

# app_customize_hook SRCDIR: prints the mmdebstrap customize hook (run with the finished root
# as $1) that installs SRCDIR's entrypoint and rootfs/, runs its customize script in the root
# and removes what an image does not need.
app_customize_hook() {
    local src=$1
    echo '#!/bin/sh'
    echo 'set -eu'
    echo 'umask 022'
    echo 'root=$1'
    printf 'src=%q\n' "$src"
    cat <<'HOOK'
install -D -m 0755 -o root -g root "$src/entrypoint" "$root/usr/local/bin/entrypoint"
if [ -d "$src/rootfs" ]; then
    (cd "$src/rootfs" && find . -type f) | while IFS= read -r f; do
        install -D -m 0644 -o root -g root "$src/rootfs/$f" "$root/$f"
    done
fi
if [ -f "$src/customize" ]; then
    chroot "$root" /bin/sh -eu -s <"$src/customize"
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/apt/* "$root"/var/log/*.log "$root"/usr/share/info/* "$root"/usr/share/lintian
: >"$root/etc/resolv.conf"
echo localhost >"$root/etc/hostname"
# The runtime mounts its own /etc/hosts; this one serves a plain chroot.
[ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
HOOK
}

# app_image_build CACHE SRCDIR NAME REPO VERSION_PKG EXPOSE KEYFILES PACKAGES...: builds (or
# finds in CACHE) the image REPO:<upstream version of VERSION_PKG> with Debian's PACKAGES and
# SRCDIR's files, and prints the cached archive's path. EXPOSE is a space-separated list of
# ports ("3306/tcp"). Next to the archive: NAME-KEY.tag (the image's name:tag) and
# NAME-KEY.packages (every Debian package with its version).
app_image_build() {
    local cache=$1 src=$2 name=$3 repo=$4 vpkg=$5 expose=$6 keyfiles=$7
    shift 7
    local packages=("$@") key out work rootdir hook version tag p t t0 line deb debdir
    local mirrors=() expose_args=() hook_args=()
    key=$(app_image_key "$src" "$name" "$repo" "$vpkg" "$expose" "$keyfiles" "${packages[@]}")
    out="$cache/$name-$key.tar"
    if [ -s "$out" ] && [ -s "$cache/$name-$key.tag" ] && [ -z "${APP_FORCE:-}" ]; then
        log "cached image $(cat "$cache/$name-$key.tag"): $out"
        printf '%s\n' "$out"
        return 0
    fi
    [ -f "$src/entrypoint" ] || die "$src/entrypoint is missing"
    t0=$(date +%s)
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/work.$name.XXXXXX") || die "creating a work directory in $cache"
    rootdir="$work/rootfs"
    hook="$work/customize.sh"
    app_customize_hook "$src" >"$hook"
    chmod 0755 "$hook"
    while read -r p line; do
        for t in $line; do mirrors+=("deb $p $t main"); done
    done < <(app_mirrors)
    # The .deb lives under /tmp: mmdebstrap's automount hook leaves the path's directories in the
    # root, and /tmp is emptied by mmdebstrap and left out of the layer.
    debdir=$(mktemp -d /tmp/planet-app-provides.XXXXXX) || die "creating a temporary directory"
    deb=$(app_provides_deb "$src" "$debdir") || { rm -rf "$debdir"; app_rm_work "$work"; exit 1; }
    [ -z "$deb" ] || packages=("$deb" "${packages[@]}")
    # Package names go in one --include; a .deb path needs its own (mmdebstrap splits no path).
    local names=() include_args=()
    for p in "${packages[@]}"; do
        case $p in /*) include_args+=("--include=$p") ;; *) names+=("$p") ;; esac
    done
    # dpkg, inside the root, must find such a .deb at the same path: mmdebstrap's hook copies it there.
    [ "${#include_args[@]}" -eq 0 ] || include_args+=(--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount)
    include_args+=("--include=$(IFS=,; echo "${names[*]}")")
    [ -d /usr/share/mmdebstrap/hooks/merged-usr ] && hook_args+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(app_source_date_epoch)}
    log "mmdebstrap $APP_SUITE minbase + ${packages[*]} for $name"
    if ! nice -n 19 mmdebstrap --quiet --mode=root --variant=minbase \
        "${include_args[@]}" \
        --architectures="$(dpkg --print-architecture)" "${hook_args[@]}" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --customize-hook="$hook \"\$1\"" \
        --format=directory \
        "$APP_SUITE" "$rootdir" "${mirrors[@]}" >&2; then
        rm -rf "$debdir"
        app_rm_work "$work"
        die "mmdebstrap of the $name image failed"
    fi
    rm -rf "$debdir"
    version=$(dpkg-query --admindir "$rootdir/var/lib/dpkg" -W -f '${Version}' "$vpkg" 2>/dev/null) \
        || { app_rm_work "$work"; die "$vpkg is not installed in the $name image"; }
    version=$(app_upstream_version "$version") || { app_rm_work "$work"; die "cannot make a tag of $vpkg's version"; }
    tag="$repo:$version"
    dpkg-query --admindir "$rootdir/var/lib/dpkg" -W -f '${Package}\t${Version}\t${Architecture}\n' \
        | LC_ALL=C sort >"$work/packages"
    for p in $expose; do expose_args+=(--expose "$p"); done
    log "writing $tag as a docker archive"
    if ! nice -n 19 python3 "$(dirname "${BASH_SOURCE[0]}")/docker-archive.py" --tag "$tag" \
        --entrypoint /usr/local/bin/entrypoint --rootfs "$rootdir" \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --stop-signal SIGTERM "${expose_args[@]}" -o "$work/image.tar"; then
        app_rm_work "$work"
        die "writing the $name docker archive failed"
    fi
    mv -f "$work/packages" "$cache/$name-$key.packages"
    mv -f "$work/image.tar" "$out"
    printf '%s\n' "$tag" >"$cache/$name-$key.tag.tmp" && mv -f "$cache/$name-$key.tag.tmp" "$cache/$name-$key.tag"
    app_rm_work "$work"
    # Keep the newest two builds of each image.
    find "$cache" -maxdepth 1 -name "$name-*.tar" -printf '%T@ %p\n' | sort -rn | tail -n +3 | cut -d' ' -f2- \
        | while IFS= read -r old; do rm -f "$old" "${old%.tar}.tag" "${old%.tar}.packages"; done
    log "image $tag: $(( $(stat -c %s "$out") / 1048576 )) MiB in $(($(date +%s) - t0))s"
    printf '%s\n' "$out"
}

# app_image_tag ARCHIVE: the name:tag a docker archive's manifest.json gives its image.
app_image_tag() {
    python3 - "$1" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    m = json.load(t.extractfile("manifest.json"))
if len(m) != 1 or len(m[0].get("RepoTags") or []) != 1:
    sys.exit("%s: expected one image with one tag" % sys.argv[1])
print(m[0]["RepoTags"][0])
PY
}
