#!/usr/bin/env python3
"""Write a one-layer image as a docker archive (the `docker save` format `docker load` reads):
manifest.json, the image config named by its sha256, and the layer tar. Reproducible: sorted
entries, owner 0, mtimes from SOURCE_DATE_EPOCH, no wall-clock time anywhere.

  docker-archive.py --tag NAME:TAG (--entrypoint PATH | --cmd PATH) [--file SRC:DEST]... [--busybox DEST] -o OUT.tar
  docker-archive.py --tag NAME:TAG (--entrypoint PATH | --cmd PATH) --rootfs DIR [--env K=V]...
                    [--expose PORT[/PROTO]]... [--user USER] [--workdir DIR] [--stop-signal SIG] -o OUT.tar

--busybox DEST puts Debian's static busybox (/bin/busybox on this machine, from busybox-static)
at DEST with a link per applet under /bin, so `sh`, `echo`, `sleep`… exist in the image.

--rootfs DIR makes the whole directory tree the image's one layer, written by GNU tar: sorted,
numeric owners as they are in DIR, mtimes clamped to SOURCE_DATE_EPOCH, file capabilities kept,
the contents of dev/, proc/, sys/, run/ and tmp/ left out (the directories themselves stay).
--env adds to the default PATH (a PATH=… given replaces it).
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

DEFAULT_PATH = "PATH=/bin:/usr/bin:/sbin:/usr/sbin"
# In --rootfs mode: directories whose contents never go into a layer (the runtime mounts them).
RUNTIME_DIRS = ("dev", "proc", "sys", "run", "tmp")


def rootfs_layer(root, epoch, out):
    """Writes the tree under ROOT as a layer tar into the open binary file OUT."""
    if not os.path.isdir(root):
        sys.exit("docker-archive.py: --rootfs %s is not a directory" % root)
    members = sorted(os.listdir(root))
    if not members:
        sys.exit("docker-archive.py: --rootfs %s is empty" % root)
    args = ["tar", "--format=posix", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "--sort=name", "--numeric-owner", "--mtime=@%d" % epoch, "--clamp-mtime",
            "--xattrs", "--xattrs-include=security.capability", "--anchored"]
    args += ["--exclude=%s/*" % d for d in RUNTIME_DIRS]
    args += ["-C", root, "-cf", "-", "--"] + members
    subprocess.run(args, check=True, stdout=out, env=dict(os.environ, LC_ALL="C"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--entrypoint", help="the image's Entrypoint (arguments follow it)")
    what.add_argument("--cmd", help="the image's Cmd (replaced by a pod's command)")
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    ap.add_argument("--busybox", metavar="DEST")
    ap.add_argument("--rootfs", metavar="DIR", help="the whole tree under DIR is the image's layer")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="an environment variable")
    ap.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]", help="an exposed port")
    ap.add_argument("--user", help="the user the entrypoint runs as")
    ap.add_argument("--workdir", help="the working directory")
    ap.add_argument("--stop-signal", help="the signal that stops the container (e.g. SIGTERM)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    if a.rootfs and (a.file or a.busybox):
        ap.error("--rootfs takes the whole tree; it does not mix with --file or --busybox")
    for kv in a.env:
        if "=" not in kv or kv.startswith("="):
            ap.error("--env %s: use NAME=VALUE" % kv)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    if a.rootfs:
        return write_archive(a, epoch, None)

    files = {}  # dest -> (data, mode) or ("link", target)
    for spec in a.file:
        src, _, dest = spec.partition(":")
        with open(src, "rb") as f:
            files[dest.lstrip("/")] = (f.read(), 0o755)
    if a.busybox:
        bb = "/bin/busybox"
        with open(bb, "rb") as f:
            files[a.busybox.lstrip("/")] = (f.read(), 0o755)
        applets = subprocess.run([bb, "--list"], check=True, capture_output=True, text=True).stdout.split()
        for name in applets:
            dest = "bin/" + name
            if dest not in files and name != "busybox":
                files[dest] = ("link", "/" + a.busybox.lstrip("/"))
        files.setdefault("tmp/", ("dir", 0o1777))

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.GNU_FORMAT) as t:
        dirs = set()
        for dest in files:
            parts = dest.rstrip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        entries = sorted([(d, ("dir", 0o755)) for d in dirs if d + "/" not in files] + list(files.items()))
        for dest, val in entries:
            ti = tarfile.TarInfo(dest.rstrip("/"))
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = epoch, 0, 0, "", ""
            if val[0] == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, val[1]
                t.addfile(ti)
            elif val[0] == "link":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, val[1], 0o777
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(val[0]), val[1]
                t.addfile(ti, io.BytesIO(val[0]))
    return write_archive(a, epoch, layer.getvalue())


def write_archive(a, epoch, layer_bytes):
    """The archive around LAYER_BYTES (or, when None, around the --rootfs layer)."""
    layer_file = None
    if layer_bytes is None:
        # The layer can be hundreds of MiB: it goes through a temporary file next to the output.
        layer_file = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(a.output)))
        rootfs_layer(a.rootfs, epoch, layer_file)
        h = hashlib.sha256()
        layer_file.seek(0)
        for b in iter(lambda: layer_file.read(1 << 20), b""):
            h.update(b)
        layer_digest, layer_size = h.hexdigest(), layer_file.tell()
    else:
        layer_digest, layer_size = hashlib.sha256(layer_bytes).hexdigest(), len(layer_bytes)
    diff_id = "sha256:" + layer_digest
    env = [DEFAULT_PATH]
    for kv in a.env:
        if kv.startswith("PATH="):
            env[0] = kv
        else:
            env.append(kv)
    created = "%sZ" % __import__("datetime").datetime.utcfromtimestamp(epoch).isoformat()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": dict(
            [("Entrypoint", [a.entrypoint])] if a.entrypoint else [("Cmd", [a.cmd])],
            Env=env,
        ),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "planet-image scripts/lib/docker-archive.py"}],
    }
    if a.expose:
        config["config"]["ExposedPorts"] = {p if "/" in p else p + "/tcp": {} for p in a.expose}
    if a.user:
        config["config"]["User"] = a.user
    if a.workdir:
        config["config"]["WorkingDir"] = a.workdir
    if a.stop_signal:
        config["config"]["StopSignal"] = a.stop_signal
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_dir = layer_digest
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [layer_dir + "/layer.tar"]}]
    members = [
        (config_name, config_bytes),
        (layer_dir + "/layer.tar", layer_bytes),
        ("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()),
    ]
    tmp = a.output + ".tmp"
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as t:
            ti = tarfile.TarInfo(layer_dir)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, epoch
            t.addfile(ti)
            for name, data in sorted(members):
                ti = tarfile.TarInfo(name)
                ti.mode, ti.mtime = 0o644, epoch
                if data is None:
                    ti.size = layer_size
                    layer_file.seek(0)
                    t.addfile(ti, layer_file)
                else:
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
        os.replace(tmp, a.output)
    finally:
        if layer_file is not None:
            layer_file.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main())
