#!/usr/bin/env bash
# scripts/lib/check-wordpress-images.sh [APPDIR] — check the WordPress app's images without a
# docker daemon. APPDIR is what scripts/make-wordpress-app wrote (default: target/apps/wordpress).
#
#  1. the archives: manifest.json and config well formed, one layer whose sha256 is the config's
#     diff_id, Entrypoint/Env/ExposedPorts set; the manifests name exactly the archives' tags,
#     with imagePullPolicy IfNotPresent;
#  2. each image's layer unpacked and its Entrypoint run (with the config's Env) in a chroot in
#     new mount and pid namespaces, sharing this machine's network: MariaDB on a free loopback
#     port must accept the app user with its password over TCP; WordPress (Apache on another
#     free port, WORDPRESS_DB_HOST=127.0.0.1:PORT) must serve its install page, install,
#     publish a post through XML-RPC wp.newPost and list it through the REST API
#     (/?rest_route=/wp/v2/posts), also after both containers are restarted.
#
# Every request goes to 127.0.0.1; WordPress runs with WORDPRESS_BLOCK_EXTERNAL_HTTP=true.
# Bounded in time (each wait has a limit); every process and mount it starts is gone when it
# ends. Needs root. Prints the HTTP exchanges on stderr; exits non-zero on the first failure.
set -euo pipefail

PROG=check-wordpress-images
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$SCRIPT_DIR/common.sh"

appdir=${1:-$REPO/target/apps/wordpress}
case ${1:-} in -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
appdir=$(abspath "$appdir")
[ "$(id -u)" -eq 0 ] || die "needs root (chroot, mount namespaces)"
for f in app.yaml images/mariadb.tar images/wordpress.tar; do
    [ -s "$appdir/$f" ] || die "$appdir/$f is missing (run scripts/make-wordpress-app first)"
done
ensure_apt curl python3 util-linux
need_cmd unshare chroot curl python3 tar

work=$(mktemp -d "${TMPDIR:-/tmp}/check-wordpress.XXXXXX")
pids=()
started=$(date +%s)

# stop_container PID: SIGTERM to the container's first process (the entrypoint's exec), up to
# 30 s for it to finish, then SIGKILL to its unshare (--kill-child takes the namespace down).
stop_container() {
    local upid=$1 child _
    child=$({ ps -o pid= --ppid "$upid" 2>/dev/null || true; } | tr -d ' ' | head -n 1)
    [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$upid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$upid" 2>/dev/null || true
    wait "$upid" 2>/dev/null || true
}

cleanup() {
    local p
    for p in "${pids[@]}"; do stop_container "$p"; done
    # The mounts lived in the containers' own mount namespaces; nothing may be left on the host.
    if grep -q " $work/" /proc/self/mounts; then
        log "warning: mounts left under $work; not removing it"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 1. The archives and the manifests.
log "checking the archives and manifests in $appdir"
python3 - "$appdir" <<'PY' || die "the archives or manifests are not right"
import hashlib, json, os, re, sys, tarfile
app = sys.argv[1]
tags = {}
for name in ("mariadb", "wordpress"):
    path = os.path.join(app, "images", name + ".tar")
    with tarfile.open(path) as t:
        names = t.getnames()
        manifest = json.load(t.extractfile("manifest.json"))
        assert isinstance(manifest, list) and len(manifest) == 1, "one image per archive"
        m = manifest[0]
        assert len(m["RepoTags"]) == 1, "one tag"
        tag = m["RepoTags"][0]
        assert re.fullmatch(r"planet/%s:[0-9]+(\.[0-9]+)*" % name, tag), "tag %s" % tag
        config = json.load(t.extractfile(m["Config"]))
        assert m["Config"] == hashlib.sha256(t.extractfile(m["Config"]).read()).hexdigest() + ".json"
        assert len(m["Layers"]) == 1 and m["Layers"][0] in names
        h = hashlib.sha256()
        f = t.extractfile(m["Layers"][0])
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
        assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]}, "diff_id"
        c = config["config"]
        assert c["Entrypoint"] == ["/usr/local/bin/entrypoint"], c.get("Entrypoint")
        assert any(e.startswith("PATH=") for e in c["Env"])
        assert c["ExposedPorts"], "ExposedPorts"
        assert config["os"] == "linux" and config["architecture"] == "amd64"
        tags[name] = tag
        print("  %-22s %s, %d MiB, entrypoint %s, ports %s" % (
            name + ".tar", tag, os.path.getsize(path) >> 20, c["Entrypoint"][0], " ".join(sorted(c["ExposedPorts"]))),
            file=sys.stderr)
images = []
for f in sorted(os.listdir(os.path.join(app, "manifests"))):
    text = open(os.path.join(app, "manifests", f)).read()
    images += re.findall(r"^\s*image:\s*(\S+)\s*$", text, re.M)
    assert "imagePullPolicy: Always" not in text and ":latest" not in text, f
    assert text.count("imagePullPolicy: IfNotPresent") == len(re.findall(r"^\s*image:", text, re.M)), f
assert sorted(images) == sorted(tags.values()), "manifests name %s, archives hold %s" % (images, sorted(tags.values()))
PY

# 2. The containers. unpack NAME: the image's layer as a root directory.
unpack() {
    local name=$1 layer root="$work/$1/root"
    mkdir -p "$root"
    layer=$(tar -xOf "$appdir/images/$name.tar" manifest.json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Layers"][0])')
    tar -xOf "$appdir/images/$name.tar" "$layer" | tar -x -p --numeric-owner --xattrs --xattrs-include='*' -C "$root" \
        || die "unpacking the $name image"
    printf '%s\n' "$root"
}

# run NAME ROOT VOLUME MOUNTPOINT LOG VAR=VALUE...: runs the image's entrypoint in ROOT, in new
# mount and pid namespaces, /proc, /dev, a tmpfs /tmp and /run, VOLUME at MOUNTPOINT, with only
# the given environment (values reach it through the environment, not a command line). Sets
# RUN_PID to the unshare's pid. Each container gets its own session: Apache, stopping, signals
# its whole process group, which must not be this script's.
run() {
    local name=$1 root=$2 vol=$3 mnt=$4 logf=$5
    shift 5
    mkdir -p "$vol" "$root$mnt"
    (
        set +x
        # Only the given variables reach the container.
        while IFS= read -r v; do unset "$v" 2>/dev/null || true; done < <(compgen -e)
        for kv in "$@"; do export "${kv%%=*}=${kv#*=}"; done
        export R=$root VOL=$vol MNT=$mnt
        exec /usr/bin/setsid /usr/bin/unshare --mount --pid --fork --kill-child /bin/sh -c '
            set -e
            mount -t proc proc "$R/proc"
            mount --rbind /dev "$R/dev"
            mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
            mount -t tmpfs -o mode=0755 tmpfs "$R/run"
            mount --bind "$VOL" "$R$MNT"
            unset R VOL MNT
            exec /usr/sbin/chroot "$0" /usr/local/bin/entrypoint' "$root"
    ) >"$logf" 2>&1 </dev/null &
    RUN_PID=$!
}

# wait_for WHAT SECONDS CMD...: retries CMD every second until it succeeds or time is up.
wait_for() {
    local what=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        [ $(($(date +%s) - t0)) -lt "$limit" ] || return 1
        sleep 1
    done
    log "$what after $(($(date +%s) - t0))s"
}

password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
admin_password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
mport=$(free_port)
wport=$(free_port)
[ "$mport" != "$wport" ] || wport=$(free_port)
mroot=$(unpack mariadb)
wroot=$(unpack wordpress)
img_path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

start_mariadb() {
    run mariadb "$mroot" "$work/mysql-data" /var/lib/mysql "$work/mariadb.log" \
        "$img_path" MYSQL_DATABASE=wordpress MYSQL_USER=wordpress "MYSQL_PASSWORD=$password" "PORT=$mport"
    mpid=$RUN_PID
    pids+=("$mpid")
    # The app user, with its password, over TCP, through the image's own client.
    wait_for "MariaDB accepts wordpress@127.0.0.1:$mport" 180 \
        env MYSQL_PWD="$password" chroot "$mroot" mariadb --protocol=tcp -h 127.0.0.1 -P "$mport" -u wordpress \
        -e 'SELECT 1' wordpress || { tail -n 30 "$work/mariadb.log" >&2; die "MariaDB did not accept the app user"; }
    if env MYSQL_PWD="wrong-$password" chroot "$mroot" mariadb --protocol=tcp -h 127.0.0.1 -P "$mport" -u wordpress \
        -e 'SELECT 1' >/dev/null 2>&1; then
        die "MariaDB accepted a wrong password"
    fi
}
start_wordpress() {
    run wordpress "$wroot" "$work/wp-content" /var/lib/wordpress/wp-content "$work/wordpress.log" \
        "$img_path" "WORDPRESS_DB_HOST=127.0.0.1:$mport" WORDPRESS_DB_NAME=wordpress WORDPRESS_DB_USER=wordpress \
        "WORDPRESS_DB_PASSWORD=$password" WORDPRESS_BLOCK_EXTERNAL_HTTP=true "PORT=$wport"
    wpid=$RUN_PID
    pids+=("$wpid")
    wait_for "Apache answers on 127.0.0.1:$wport" 120 \
        curl -sf -o /dev/null --max-time 10 "http://127.0.0.1:$wport/wp-admin/install.php" \
        || { tail -n 30 "$work/wordpress.log" >&2; die "WordPress did not answer"; }
}
stop_both() {
    stop_container "$wpid"
    stop_container "$mpid"
    pids=()
}

base="http://127.0.0.1:$wport"
# http NAME CURL-ARGS...: one request; the body goes to $work/NAME, the status is printed.
http() {
    local name=$1
    shift
    curl -sS --max-time 60 -o "$work/$name" -w '%{http_code}' "$@"
}

start_mariadb
start_wordpress

# The install page.
code=$(http install-page "$base/wp-admin/install.php")
log "GET /wp-admin/install.php -> $code"
[ "$code" = 200 ] && grep -q 'WordPress' "$work/install-page" && grep -q 'name="weblog_title"' "$work/install-page" \
    || die "the install page is not there (HTTP $code)"
grep -q 'Error establishing a database connection' "$work/install-page" && die "WordPress cannot reach MariaDB"

# The installation.
code=$(http install-done --data-urlencode 'weblog_title=Planet WordPress' --data-urlencode 'user_name=admin' \
    --data-urlencode "admin_password=$admin_password" --data-urlencode "admin_password2=$admin_password" \
    --data-urlencode 'pw_weak=1' --data-urlencode 'admin_email=admin@example.com' --data-urlencode 'blog_public=0' \
    --data-urlencode 'language=' "$base/wp-admin/install.php?step=2")
log "POST /wp-admin/install.php?step=2 -> $code"
[ "$code" = 200 ] && grep -q 'WordPress has been installed' "$work/install-done" \
    || { sed -n '1,40p' "$work/install-done" >&2; die "the installation failed (HTTP $code)"; }

# Installed: the health check's page.
code=$(http installed "$base/wp-admin/install.php")
log "GET /wp-admin/install.php (installed) -> $code: $(grep -o 'Already Installed' "$work/installed" || echo '?')"
[ "$code" = 200 ] || die "after the installation /wp-admin/install.php answers $code"

# A post, through XML-RPC (user name and password in the call).
title="Hello from planet $(date +%s)"
cat >"$work/newpost.xml" <<EOF
<?xml version="1.0"?>
<methodCall>
  <methodName>wp.newPost</methodName>
  <params>
    <param><value><int>1</int></value></param>
    <param><value><string>admin</string></value></param>
    <param><value><string>$admin_password</string></value></param>
    <param><value><struct>
      <member><name>post_type</name><value><string>post</string></value></member>
      <member><name>post_status</name><value><string>publish</string></value></member>
      <member><name>post_title</name><value><string>$title</string></value></member>
      <member><name>post_content</name><value><string>Published through XML-RPC by check-wordpress-images.</string></value></member>
    </struct></value></param>
  </params>
</methodCall>
EOF
code=$(http newpost -H 'Content-Type: text/xml' --data-binary "@$work/newpost.xml" "$base/xmlrpc.php")
log "POST /xmlrpc.php wp.newPost -> $code: $(tr -d '\n' <"$work/newpost" | head -c 300)"
post_id=$(sed -n 's:.*<string>\([0-9][0-9]*\)</string>.*:\1:p' "$work/newpost" | head -n 1)
[ "$code" = 200 ] && [ -n "$post_id" ] && ! grep -q '<fault>' "$work/newpost" || die "wp.newPost failed (HTTP $code)"

# read_back WHEN: the post, through the REST API, without authentication.
read_back() {
    code=$(http posts "$base/?rest_route=/wp/v2/posts")
    log "GET /?rest_route=/wp/v2/posts ($1) -> $code"
    [ "$code" = 200 ] || die "the REST API answers $code"
    python3 - "$work/posts" "$post_id" "$title" <<'PY' || die "the post is not in the REST API's list"
import json, sys
posts = json.load(open(sys.argv[1]))
match = [p for p in posts if p["id"] == int(sys.argv[2]) and p["title"]["rendered"] == sys.argv[3]]
assert match and match[0]["status"] == "publish", [(p["id"], p["title"]) for p in posts]
print("  post %s %r at %s" % (match[0]["id"], match[0]["title"]["rendered"], match[0]["link"]), file=sys.stderr)
PY
}
read_back "published"

# Any Host header: the pages name the address they were reached by, no redirect elsewhere.
code=$(http other-host -H 'Host: blog.example.test:8080' "$base/")
log "GET / with Host: blog.example.test:8080 -> $code"
[ "$code" = 200 ] && grep -q 'http://blog.example.test:8080/' "$work/other-host" || die "another Host header got $code"

# The password must not be in the configuration's readable places or the logs.
if grep -rqF "$password" "$work/mariadb.log" "$work/wordpress.log"; then die "the password is in a log"; fi
perm=$(stat -c '%U:%G %a' "$wroot/etc/wordpress/config-default.php")
[ "$perm" = "root:www-data 640" ] || die "config-default.php is $perm"
perm=$(stat -c '%U:%G %a' "$work/wp-content/.planet-salts.php")
[ "$perm" = "root:www-data 640" ] || die ".planet-salts.php is $perm"
code=$(http salts "$base/wp-content/.planet-salts.php")
[ "$code" = 403 ] || die "the salts answer HTTP $code"

# Restarted with the same volumes: the same site, the same post.
log "restarting both containers"
salts=$(sha256sum <"$work/wp-content/.planet-salts.php")
stop_both
start_mariadb
start_wordpress
[ "$salts" = "$(sha256sum <"$work/wp-content/.planet-salts.php")" ] || die "the salts changed on restart"
read_back "after a restart"

stop_both
log "ok: both images work ($(($(date +%s) - started))s)"
