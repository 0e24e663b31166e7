#!/usr/bin/env python3
"""One timed QEMU boot for scripts/bench.

    bench_boot.py PLANET_IMAGE IMAGE WORKDIR MARKER [--etcd] [--exit] [--timeout S]

Starts `planet-image run IMAGE --snapshot` (serial console to a file, a monitor socket, and
with --etcd a forward of a free 127.0.0.1 port to the guest's 2379) and prints one line:

    MARKER_SECONDS ETCD_SECONDS EXIT_SECONDS ACCEL

seconds from starting the command to MARKER appearing on the serial console, to etcd's
/health answering (with --etcd, else "-") and to QEMU exiting by itself (with --exit: the
guest powers off, else "-"; without it the VM is stopped through the monitor), and the
accelerator planet-image run chose (kvm or tcg).
"""
import os
import re
import socket
import subprocess
import sys
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def etcd_healthy(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return b" 200 " in data.split(b"\r\n", 1)[0] and b'"health":"true"' in data
    except OSError:
        return False


def main():
    pi, image, workdir, marker = sys.argv[1:5]
    rest = sys.argv[5:]
    want_etcd = "--etcd" in rest
    want_exit = "--exit" in rest
    timeout = float(rest[rest.index("--timeout") + 1]) if "--timeout" in rest else 600.0
    log = os.path.join(workdir, "serial-%d.log" % os.getpid())
    mon = os.path.join(workdir, "monitor-%d.sock" % os.getpid())
    cmd = [pi, "run", image, "--snapshot", "--serial-log", log, "--monitor", mon,
           "--timeout", str(int(timeout))]
    port = None
    if want_etcd:
        port = free_port()
        cmd += ["--forward", "%d:2379" % port]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log + ".err", "w"))
    t_marker = t_etcd = t_exit = None
    try:
        while time.monotonic() - start < timeout:
            now = time.monotonic()
            if t_marker is None and os.path.exists(log):
                with open(log, "rb") as f:
                    if marker.encode() in f.read():
                        t_marker = now - start
            if want_etcd and t_etcd is None and t_marker is not None and etcd_healthy(port):
                t_etcd = time.monotonic() - start
            if proc.poll() is not None:
                t_exit = time.monotonic() - start
                if t_marker is None and os.path.exists(log):
                    with open(log, "rb") as f:
                        if marker.encode() in f.read():
                            t_marker = t_exit
                break
            done = t_marker is not None and (t_etcd is not None or not want_etcd)
            if done and not want_exit:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            # `quit` on the monitor (kept open a moment: closing at once can lose the command),
            # then, as a last resort, the process group planet-image run gives itself and QEMU.
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(mon)
                    s.sendall(b"quit\n")
                    time.sleep(0.5)
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    proc.kill()
                proc.wait()
    if t_marker is None or (want_etcd and t_etcd is None) or (want_exit and t_exit is None):
        sys.stderr.write("boot did not reach %r (etcd=%s exit=%s); console in %s\n" % (marker, t_etcd, t_exit, log))
        with open(log, "rb") as f:
            sys.stderr.write(f.read()[-3000:].decode("utf-8", "replace"))
        sys.exit(1)
    fmt = lambda t: "-" if t is None else "%.3f" % t
    accel = "?"
    with open(log + ".err", "rb") as f:
        m = re.search(rb"booting .* \((\w+)\)", f.read())
        if m:
            accel = m.group(1).decode()
    print(fmt(t_marker), fmt(t_etcd), fmt(t_exit), accel)


if __name__ == "__main__":
    main()
