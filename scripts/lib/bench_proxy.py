#!/usr/bin/env python3
"""A counting HTTP/1.1 reverse proxy for scripts/bench (127.0.0.1 only).

    bench_proxy.py UPSTREAM_PORT LOG_FILE      prints the port it listens on, then serves

Every request a client sends is forwarded unchanged to 127.0.0.1:UPSTREAM_PORT (moto) and
the response relayed back. For each request one line is appended to LOG_FILE:

    START END KIND BYTES STATUS

START/END are time.monotonic() seconds (request's first byte read, response's last byte
written), KIND the EBS operation from the path (StartSnapshot, PutSnapshotBlock, ...) or the
Query API Action (RegisterImage, DescribeSnapshots, ...), BYTES what the client sent for that
request (head and body, as read from the socket) and STATUS the upstream's status code.

One correction of moto (5.x) on the way back: its StartSnapshot answer says "BlockSize": 512,
where the EBS direct APIs always use 524288-byte blocks. Clients that size their blocks from
that field (coldsnap does) would otherwise send 1024 times as many requests as against AWS.
The proxy puts the real value there (and fixes Content-Length); nothing else is changed.
"""
import re
import socket
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()


def read_head(sock, buf):
    """Reads up to the end of an HTTP head; returns (head bytes, leftover) or (None, buf)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(1 << 16)
        if not data:
            return None, buf
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def headers(head):
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.strip()
    return lines[0], fields


def read_exact(sock, buf, n):
    """Returns (n bytes, leftover), reading from sock as needed."""
    parts = [buf[:n]]
    have = len(parts[0])
    rest = buf[n:]
    while have < n:
        data = sock.recv(min(1 << 20, n - have))
        if not data:
            raise ConnectionError("peer closed inside a body")
        parts.append(data)
        have += len(data)
    return b"".join(parts), rest


def read_line(sock, buf, inside):
    """One CRLF-terminated line: returns (line without CRLF, leftover)."""
    while b"\r\n" not in buf:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("peer closed inside " + inside)
        buf += data
    i = buf.index(b"\r\n")
    return buf[:i], buf[i + 2 :]


def read_chunked(sock, buf):
    """A chunked body including its framing (it is forwarded as is); returns (body, leftover)."""
    out = []
    while True:
        line, buf = read_line(sock, buf, "a chunked body")
        size = int(line.split(b";")[0], 16)
        out.append(line + b"\r\n")
        if size == 0:
            # Trailers, up to an empty line.
            while True:
                line, buf = read_line(sock, buf, "trailers")
                out.append(line + b"\r\n")
                if not line:
                    return b"".join(out), buf
        chunk, buf = read_exact(sock, buf, size + 2)
        out.append(chunk)


def read_body(sock, buf, fields, until_close):
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return read_chunked(sock, buf)
    if "content-length" in fields:
        return read_exact(sock, buf, int(fields["content-length"]))
    if not until_close:
        return b"", buf
    parts = [buf]
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(parts), b""
        parts.append(data)


def kind_of(request_line, body):
    method, target = request_line.split(" ")[:2]
    path, _, query = target.partition("?")
    if path.startswith("/snapshots"):
        parts = [p for p in path.split("/") if p]
        if method == "POST" and parts == ["snapshots"]:
            return "StartSnapshot"
        if "completion" in parts:
            return "CompleteSnapshot"
        if method == "PUT" and "blocks" in parts:
            return "PutSnapshotBlock"
        if "changedblocks" in parts:
            return "ListChangedBlocks"
        if "blocks" in parts:
            return "GetSnapshotBlock" if len(parts) > 3 else "ListSnapshotBlocks"
        return "EBS:" + method
    form = urllib.parse.parse_qs(query)
    if not form.get("Action") and body[:1] != b"{":
        try:
            form = urllib.parse.parse_qs(body.decode("latin-1"))
        except Exception:
            form = {}
    return form.get("Action", [method + ":" + path])[0]


class Upstream:
    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def connect(self):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def serve(client, upstream_port, log):
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = Upstream(upstream_port)
    buf = b""
    try:
        while True:
            head, buf = read_head(client, buf)
            if head is None:
                return
            start = time.monotonic()
            line, fields = headers(head)
            sent = len(head)
            if fields.get("expect", "").lower() == "100-continue":
                # Let the client send its body; forward the request without the expectation.
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                head = b"\r\n".join(
                    l for l in head.split(b"\r\n") if not l.lower().startswith(b"expect:")
                )
            body, buf = read_body(client, buf, fields, until_close=False)
            sent += len(body)
            method = line.split(" ")[0]
            for attempt in (1, 2):
                try:
                    up.connect()
                    up.sock.sendall(head + body)
                    while True:
                        rhead, up.buf = read_head(up.sock, up.buf)
                        if rhead is None:
                            raise ConnectionError("upstream closed before answering")
                        status_line, rfields = headers(rhead)
                        status = int(status_line.split(" ")[1])
                        if status != 100:
                            break
                    break
                except (ConnectionError, OSError):
                    up.close()
                    if attempt == 2:
                        raise
            no_body = method == "HEAD" or status in (204, 304)
            rclose = rfields.get("connection", "").lower() == "close" or status_line.startswith("HTTP/1.0")
            rbody, up.buf = (b"", up.buf) if no_body else read_body(up.sock, up.buf, rfields, until_close=True)
            if rclose or ("content-length" not in rfields and "chunked" not in rfields.get("transfer-encoding", "")):
                up.close()
                if not no_body and "content-length" not in rfields and "chunked" not in rfields.get("transfer-encoding", ""):
                    # A close-delimited body: give the client a length instead.
                    rhead = rhead[:-2] + b"Content-Length: %d\r\n\r\n" % len(rbody)
            if kind_of(line, body) == "StartSnapshot" and status < 300:
                fixed = re.sub(rb'("BlockSize"\s*:\s*)512\b', rb"\g<1>524288", rbody)
                if fixed != rbody:
                    rbody = fixed
                    rhead = re.sub(rb"(?im)^content-length:[^\r\n]*", b"Content-Length: %d" % len(rbody), rhead)
            client.sendall(rhead + rbody)
            end = time.monotonic()
            with LOCK:
                log.write("%.6f %.6f %s %d %d\n" % (start, end, kind_of(line, body), sent, status))
                log.flush()
            if fields.get("connection", "").lower() == "close":
                return
    except (ConnectionError, OSError):
        return
    finally:
        up.close()
        client.close()


def main():
    upstream_port = int(sys.argv[1])
    log = open(sys.argv[2], "a")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, upstream_port, log), daemon=True).start()


if __name__ == "__main__":
    main()
