# shellcheck shell=bash
# Kubernetes from Debian's own source package, built with Debian's golang-go: sourced by
# scripts/make-planet-release. Needs common.sh (log, die, ensure_apt) first.
#
# Nothing is downloaded but from the Debian mirror the machine's apt already uses: a private
# apt configuration (its own lists, deb-src entries for the same mirror) fetches the source
# package; apt checks it against the signed Sources index, dpkg-source against the .dsc.

# The source package and the binaries a Planet release carries.
K8S_SOURCE=kubernetes
K8S_SOURCE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
K8S_VERSION=v1.20.2
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

# k8s_apt_opts CACHE: the apt options of the private configuration under CACHE/apt.
k8s_apt_opts() {
    local a=$1/apt
    printf '%s\n' -o "Dir::Etc::SourceList=$a/sources.sources" -o "Dir::Etc::SourceParts=$a/none" \
        -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o "APT::Sandbox::User=root"
}

# k8s_mirrors: the Debian mirror and security mirror the host's apt uses (deb822 or one-line).
k8s_mirrors() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' || true
    } | { grep -E '^https?://[^ ]*/debian(-security)?/?$' || true; } | sed 's,/$,,' | sort -u
}

# k8s_fetch_source CACHE: downloads (once) the source package into CACHE/src and prints the
# path of its .dsc.
k8s_fetch_source() {
    local cache=$1 a=$1/apt dsc mirror suites opts
    dsc="$cache/src/${K8S_SOURCE}_${K8S_SOURCE_VERSION}.dsc"
    if [ -s "$dsc" ]; then
        printf '%s\n' "$dsc"
        return 0
    fi
    mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/none" "$cache/src"
    : >"$a/sources.sources"
    while IFS= read -r mirror; do
        case $mirror in
            *-security) suites="bookworm-security" ;;
            *) suites="bookworm bookworm-updates" ;;
        esac
        printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' \
            "$mirror" "$suites" >>"$a/sources.sources"
    done < <(k8s_mirrors)
    [ -s "$a/sources.sources" ] || printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        >"$a/sources.sources"
    mapfile -t opts < <(k8s_apt_opts "$cache")
    log "fetching the source index (deb-src of $(k8s_mirrors | tr '\n' ' '))"
    apt-get -q "${opts[@]}" update >&2 || die "apt-get update of the deb-src lists failed"
    log "downloading the $K8S_SOURCE $K8S_SOURCE_VERSION source package"
    (cd "$cache/src" && apt-get -q "${opts[@]}" source --download-only "$K8S_SOURCE=$K8S_SOURCE_VERSION" >&2) \
        || die "apt-get source $K8S_SOURCE=$K8S_SOURCE_VERSION failed (is the deb-src index reachable?)"
    [ -s "$dsc" ] || die "apt-get source did not produce $dsc"
    printf '%s\n' "$dsc"
}

# k8s_version [PATCH]: the version the binaries carry: K8S_VERSION, or for a build without one
# of Debian's patches a pre-release of it that says so (v1.20.2-0.without-cve-2021-25743), so
# the two builds differ as a patch release does, in the code and in the version.
k8s_version() {
    local drop=${1:-} id
    if [ -z "$drop" ]; then
        printf '%s\n' "$K8S_VERSION"
        return 0
    fi
    id=$(printf '%s' "${drop%.patch}" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9-' '-')
    printf '%s-0.without-%s\n' "$K8S_VERSION" "$id"
}

# k8s_build CACHE DSC [PATCH]: builds the commands (once per source digest and Go version) and
# prints the directory holding them; with PATCH, a build of the tree without that one of
# Debian's patches (debian/patches/PATCH reversed) and with k8s_version's version, cached
# apart. The unpacked tree (3 GiB with its _output) is removed once they are; what the release
# still reads of the source (the pause container's pause.c, the changelog for
# SOURCE_DATE_EPOCH) is kept beside bin/, in source/.
k8s_build() {
    local cache=$1 dsc=$2 drop=${3:-} key dir tree go_version sde start cmd stamp what=()
    go_version=$(go version) || die "go is not installed"
    # Keyed by the source package's digest (the .dsc lists the digests of the rest); the stamp
    # records the Go version and commands, and a change of either rebuilds in place.
    key=$(sha256sum "$dsc" | cut -c1-16)
    dir="$cache/$key${drop:+-without-$drop}"
    stamp=$(printf '%s\n' "$go_version" "${K8S_COMMANDS[@]}" "$drop")
    tree="$dir/tree"
    if [ -f "$dir/bin/.complete" ] && [ "$(cat "$dir/bin/.complete")" = "$stamp" ]; then
        log "kubernetes $(k8s_version "$drop"): cached build $dir/bin"
        if [ ! -f "$dir/source/pause.c" ]; then
            # A cache from before source/ was kept.
            k8s_unpack "$dsc" "$tree"
            k8s_keep_source "$tree" "$dir"
        fi
        printf '%s\n' "$dir/bin"
        return 0
    fi
    mkdir -p "$dir" "$cache/gocache"
    k8s_unpack "$dsc" "$tree"
    if [ -n "$drop" ] && [ ! -f "$tree/.planet-reversed" ]; then
        [ -f "$tree/debian/patches/$drop" ] || die "the source package has no patch $drop (see --list-kubernetes-patches)"
        log "reversing Debian's patch $drop"
        (cd "$tree" && patch -R -p1 --no-backup-if-mismatch -s <"debian/patches/$drop") >&2 \
            || die "reversing debian/patches/$drop failed"
        touch "$tree/.planet-reversed"
    fi
    sde=$(cd "$tree" && dpkg-parsechangelog -STimestamp) || die "reading $tree/debian/changelog"
    for cmd in "${K8S_COMMANDS[@]}"; do what+=("cmd/$cmd"); done
    start=$(date +%s)
    log "building kubernetes $(k8s_version "$drop") (${K8S_COMMANDS[*]}) with $go_version; a cold build takes 15-30 minutes on 2 cores, log in $dir/build.log"
    # GOPATH mode with the tree's own vendor/, as Debian's rules and upstream's hack/ scripts do.
    (
        cd "$tree" && env HOME="$dir/home" GOCACHE="$cache/gocache" GOFLAGS= GO111MODULE=off CGO_ENABLED=0 \
            SOURCE_DATE_EPOCH="$sde" KUBE_GIT_VERSION="$(k8s_version "$drop")" GOLDFLAGS="-s -w -buildid=" \
            make WHAT="${what[*]}"
    ) >"$dir/build.log" 2>&1 || { tail -n 30 "$dir/build.log" >&2; die "building kubernetes failed; see $dir/build.log"; }
    rm -rf "$dir/bin.tmp"
    mkdir -p "$dir/bin.tmp"
    for cmd in "${K8S_COMMANDS[@]}"; do
        cp "$tree/_output/bin/$cmd" "$dir/bin.tmp/$cmd" || die "the build did not produce $cmd"
    done
    printf '%s\n' "$stamp" >"$dir/bin.tmp/.complete"
    rm -rf "$dir/bin"
    mv "$dir/bin.tmp" "$dir/bin"
    k8s_keep_source "$tree" "$dir"
    log "kubernetes built in $(($(date +%s) - start))s"
    printf '%s\n' "$dir/bin"
}

# k8s_unpack DSC TREE: unpacks the source package into TREE (once; dpkg-source checks it).
k8s_unpack() {
    local dsc=$1 tree=$2
    [ -f "$tree/.planet-extracted" ] && return 0
    rm -rf "$tree"
    log "unpacking $(basename "$dsc") (dpkg-source checks it against the .dsc)"
    dpkg-source -x "$dsc" "$tree" >&2 || die "dpkg-source -x $dsc failed"
    touch "$tree/.planet-extracted"
}

# k8s_keep_source TREE DIR: keeps DIR/source/{pause.c,changelog} and removes TREE.
k8s_keep_source() {
    local tree=$1 dir=$2
    rm -rf "$dir/source.tmp"
    mkdir -p "$dir/source.tmp"
    cp "$tree/build/pause/linux/pause.c" "$tree/debian/changelog" "$dir/source.tmp/" \
        || die "keeping pause.c and the changelog of $tree"
    rm -rf "$dir/source"
    mv "$dir/source.tmp" "$dir/source"
    rm -rf "$tree"
}

# k8s_patches DSC: Debian's patches to the tree, in the order they apply (debian/patches/series).
k8s_patches() {
    local debian
    debian=$(ls "$(dirname "$1")/${K8S_SOURCE}_${K8S_SOURCE_VERSION%%-*}"*.debian.tar.* 2>/dev/null | head -n 1)
    [ -n "$debian" ] || die "the debian tarball of $(basename "$1") is missing"
    tar -xOf "$debian" debian/patches/series | sed -e 's/#.*//' -e '/^[[:space:]]*$/d'
}
