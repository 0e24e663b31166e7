#!/usr/bin/env python3
"""scripts/bench's update server: one file at any path on 127.0.0.1, with single byte ranges
(206), at a limited rate, counting what it sends.

    bench_ranges.py FILE LOG MBIT

Prints its port on stdout, then serves until killed. Each answered request appends a line to
LOG: "STATUS RANGE_OR_- BODY_BYTES_SENT". MBIT is the link's rate in megabits a second (0: as
fast as loopback goes), shared by all connections, so the wall time of a download is what it
would be on such a link.
"""
import http.server
import os
import re
import sys
import threading
import time

path, log_path, mbit = sys.argv[1], sys.argv[2], float(sys.argv[3])
size = os.stat(path).st_size
rate = mbit * 1e6 / 8
lock = threading.Lock()
budget = {"next": time.monotonic()}


def pace(n):
    """Waits until n more bytes fit the link's rate (a token bucket of one shared clock)."""
    if rate <= 0:
        return
    with lock:
        now = time.monotonic()
        start = max(now, budget["next"])
        budget["next"] = start + n / rate
    delay = start + n / rate - now
    if delay > 0:
        time.sleep(delay)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            status = 206
            if start > end:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(status)
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        sent = 0
        try:
            with open(path, "rb") as f:
                f.seek(start)
                left = end + 1 - start
                while left > 0:
                    b = f.read(min(left, 64 << 10))
                    if not b:
                        break
                    pace(len(b))
                    self.wfile.write(b)
                    sent += len(b)
                    left -= len(b)
        finally:
            with lock, open(log_path, "a") as log:
                log.write("%d %s %d\n" % (status, m.group(0) if m else "-", sent))


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
