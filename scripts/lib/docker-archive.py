#!/usr/bin/env python3
"""Write a one-layer image as a docker archive (the `docker save` format `docker load` reads):
manifest.json, the image config named by its sha256, and the layer tar. Reproducible: sorted
entries, owner 0, mtimes from SOURCE_DATE_EPOCH, no wall-clock time anywhere.

  docker-archive.py --tag NAME:TAG (--entrypoint PATH | --cmd PATH) [--file SRC:DEST]... [--busybox DEST] -o OUT.tar

--busybox DEST puts Debian's static busybox (/bin/busybox on this machine, from busybox-static)
at DEST with a link per applet under /bin, so `sh`, `echo`, `sleep`… exist in the image.
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--entrypoint", help="the image's Entrypoint (arguments follow it)")
    what.add_argument("--cmd", help="the image's Cmd (replaced by a pod's command)")
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    ap.add_argument("--busybox", metavar="DEST")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

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
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    created = "%sZ" % __import__("datetime").datetime.utcfromtimestamp(epoch).isoformat()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": dict(
            [("Entrypoint", [a.entrypoint])] if a.entrypoint else [("Cmd", [a.cmd])],
            Env=["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
        ),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "planet-image scripts/lib/docker-archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_dir = hashlib.sha256(layer_bytes).hexdigest()
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [layer_dir + "/layer.tar"]}]
    members = [
        (config_name, config_bytes),
        (layer_dir + "/layer.tar", layer_bytes),
        ("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()),
    ]
    tmp = a.output + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as t:
        ti = tarfile.TarInfo(layer_dir)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, epoch
        t.addfile(ti)
        for name, data in sorted(members):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, epoch
            t.addfile(ti, io.BytesIO(data))
    os.replace(tmp, a.output)


if __name__ == "__main__":
    sys.exit(main())
