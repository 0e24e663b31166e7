//! A small HTTP/1.1 client over `std::net::TcpStream`, for the datasources' metadata servers and
//! the update agent's bundle downloads and health checks: plain HTTP to an IP address (there is
//! no resolver in the initramfs), one request per connection, bounded body size, and an overall
//! deadline on every exchange: a peer that sends one byte just inside each read timeout must not
//! hold PID 1 for ever.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Largest body read (user-data is at most a few MiB).
const MAX_BODY: usize = 16 << 20;

/// Slowest average a streamed body may arrive at once its first `timeout` has passed.
const MIN_STREAM_RATE: u64 = 16 << 10;

/// Where a metadata server is: the address connected to and the `Host` header sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host_header: String,
    /// Path prefix from the URL, without a trailing slash (usually empty).
    pub prefix: String,
}

impl Endpoint {
    /// `http://IP[:PORT][/PREFIX]`; `host_header` defaults to the URL's host.
    pub fn parse(url: &str, host_header: Option<&str>) -> Result<Endpoint> {
        let rest = url.strip_prefix("http://").with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().with_context(|| format!("{url:?}: bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let ip: IpAddr = host
            .trim_matches(['[', ']'])
            .parse()
            .with_context(|| format!("{url:?}: the host must be an IP address (there is no DNS this early)"))?;
        Ok(Endpoint {
            addr: SocketAddr::new(ip, port),
            host_header: host_header.unwrap_or(authority).to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// One request; `timeout` bounds the whole exchange, from connect to the last byte.
pub fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response> {
    let timeout = timeout.max(Duration::from_millis(100));
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&ep.addr, timeout).with_context(|| format!("connecting to {}", ep.addr))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", ep.prefix, ep.host_header);
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).with_context(|| format!("sending {method} {path}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let late = || anyhow::anyhow!("no complete response to {method} {path} within {timeout:?}");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_BODY + 65536 {
                    bail!("the response to {method} {path} is larger than {MAX_BODY} bytes");
                }
                if let Some(done) =
                    complete(&raw).with_context(|| format!("reading the response to {method} {path}"))?
                {
                    raw.truncate(done);
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(late())
            }
            Err(e) => return Err(e).with_context(|| format!("reading the response to {method} {path}")),
        }
    }
    parse_response(&raw).with_context(|| format!("reading the response to {method} {path}"))
}

/// A response body read as it arrives (update bundles are far larger than memory allows).
pub struct BodyReader {
    pub status: u16,
    /// Content-Length, when the server sent one.
    pub length: Option<u64>,
    /// The whole resource's size from a 206's `Content-Range: bytes A-B/TOTAL`.
    pub range_total: Option<u64>,
    buffered: Vec<u8>,
    pos: usize,
    stream: TcpStream,
    remaining: Option<u64>,
    /// When the body started and how many bytes came since: after `grace`, the average must
    /// stay above [`MIN_STREAM_RATE`].
    started: Instant,
    grace: Duration,
    received: u64,
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let limit = match self.remaining {
            Some(0) => return Ok(0),
            Some(r) => out.len().min(usize::try_from(r).unwrap_or(usize::MAX)),
            None => out.len(),
        };
        let n = if self.pos < self.buffered.len() {
            let n = limit.min(self.buffered.len() - self.pos);
            out[..n].copy_from_slice(&self.buffered[self.pos..self.pos + n]);
            self.pos += n;
            n
        } else {
            if let Some(over) = self.started.elapsed().checked_sub(self.grace) {
                if self.received < over.as_secs().saturating_mul(MIN_STREAM_RATE) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the download is slower than {} KiB/s ({} bytes in {:?})",
                            MIN_STREAM_RATE >> 10,
                            self.received,
                            self.started.elapsed()
                        ),
                    ));
                }
            }
            let n = self.stream.read(&mut out[..limit])?;
            self.received = self.received.saturating_add(n as u64);
            n
        };
        if let Some(r) = &mut self.remaining {
            if n == 0 && *r > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the connection closed with {r} bytes of the body missing"),
                ));
            }
            *r -= n as u64;
        }
        Ok(n)
    }
}

/// A GET whose body is streamed; `timeout` bounds the connect, every read and the whole of the
/// headers; after that the body must average [`MIN_STREAM_RATE`]. Chunked bodies are refused
/// (every static file server sends a Content-Length).
pub fn get_stream(ep: &Endpoint, path: &str, range: Option<(u64, u64)>, timeout: Duration) -> Result<BodyReader> {
    let timeout = timeout.max(Duration::from_millis(100));
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&ep.addr, timeout).with_context(|| format!("connecting to {}", ep.addr))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", ep.prefix, ep.host_header);
    if let Some((first, last)) = range {
        req.push_str(&format!("Range: bytes={first}-{last}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).with_context(|| format!("sending GET {path}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(end) = header_end(&raw) {
            break end;
        }
        if raw.len() > 65536 {
            bail!("the response headers for GET {path} are larger than 64 KiB");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let late = || anyhow::anyhow!("no response headers to GET {path} within {timeout:?}");
        if left.is_zero() {
            return Err(late());
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(late())
            }
            r => r.with_context(|| format!("reading the response to GET {path}"))?,
        };
        if n == 0 {
            bail!("the server closed the connection before the end of the headers");
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = std::str::from_utf8(&raw[..end]).context("the response headers are not text")?.to_string();
    let status = status_code(&head)?;
    if header_value(&head, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        bail!("the server sent a chunked body; serve the bundle as a plain file (with Content-Length)");
    }
    let length = match header_value(&head, "content-length") {
        Some(v) => Some(v.parse::<u64>().with_context(|| format!("bad Content-Length {v:?}"))?),
        None => None,
    };
    let range_total = header_value(&head, "content-range")
        .and_then(|v| v.rsplit_once('/'))
        .and_then(|(_, total)| total.trim().parse().ok());
    s.set_read_timeout(Some(timeout))?;
    Ok(BodyReader {
        status,
        length,
        range_total,
        buffered: raw[end..].to_vec(),
        pos: 0,
        stream: s,
        remaining: length,
        started: Instant::now(),
        grace: timeout,
        received: 0,
    })
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Where a Content-Length response ends once it is all here (chunked and close-delimited
/// bodies are read to the end of the connection); an error for a length past [`MAX_BODY`].
fn complete(raw: &[u8]) -> Result<Option<usize>> {
    let Some(end) = header_end(raw) else { return Ok(None) };
    let Ok(head) = std::str::from_utf8(&raw[..end]) else { return Ok(None) };
    let Some(len) = content_length(head)? else { return Ok(None) };
    // Both terms are bounded (headers by the read loop, `len` by MAX_BODY).
    Ok((raw.len() - end >= len).then_some(end + len))
}

/// The Content-Length of a response we keep in memory, refused past [`MAX_BODY`].
fn content_length(head: &str) -> Result<Option<usize>> {
    let Some(v) = header_value(head, "content-length") else { return Ok(None) };
    let n: u64 = v.parse().with_context(|| format!("bad Content-Length {v:?}"))?;
    if n > MAX_BODY as u64 {
        bail!("the server announces a body of {n} bytes, larger than the {MAX_BODY}-byte limit");
    }
    Ok(Some(n as usize))
}

/// The code of a response head's status line.
fn status_code(head: &str) -> Result<u16> {
    let status_line = head.lines().next().unwrap_or("");
    let mut words = status_line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => {
            code.parse::<u16>().with_context(|| format!("bad status line {status_line:?}"))
        }
        _ => bail!("bad status line {status_line:?}"),
    }
}

pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = header_end(raw).context("the server closed the connection before the end of the headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("the response headers are not text")?;
    let status = status_code(head)?;
    let body = &raw[end..];
    let body = if header_value(head, "transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else if let Some(len) = content_length(head)? {
        if body.len() < len {
            bail!("the body ended after {} of {len} bytes", body.len());
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").context("a chunk size line is cut off")?;
        let size_text = std::str::from_utf8(&b[..eol]).context("a chunk size is not text")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("a chunk is cut off");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://10.0.2.100", None).unwrap();
        assert_eq!(e.addr, "10.0.2.100:80".parse().unwrap());
        assert_eq!(e.host_header, "10.0.2.100");
        let e = Endpoint::parse("http://169.254.169.254:8080/x/", Some("metadata.google.internal")).unwrap();
        assert_eq!(e.addr.port(), 8080);
        assert_eq!(e.prefix, "/x");
        assert_eq!(e.host_header, "metadata.google.internal");
        assert!(Endpoint::parse("https://1.2.3.4", None).is_err());
        assert!(Endpoint::parse("http://metadata.google.internal", None).is_err());
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn streamed_bodies_stop_at_the_length_and_notice_a_short_one() {
        for (body_sent, declared, ok) in [(&b"0123456789"[..], 10, true), (&b"01234"[..], 10, false)] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let body = body_sent.to_vec();
            let t = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n").as_bytes()).unwrap();
                s.write_all(&body).unwrap();
                if ok {
                    // Bytes past the length are not part of the body.
                    s.write_all(b"trailing junk").unwrap();
                }
            });
            let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}"), None).unwrap();
            let mut r = get_stream(&ep, "/b", None, Duration::from_secs(5)).unwrap();
            assert_eq!((r.status, r.length), (200, Some(declared)));
            let mut got = Vec::new();
            let res = r.read_to_end(&mut got);
            t.join().unwrap();
            if ok {
                res.unwrap();
                assert_eq!(got, b"0123456789");
            } else {
                let e = res.unwrap_err();
                assert!(e.to_string().contains("5 bytes of the body missing"), "{e}");
            }
        }
    }

    /// A server that answers the first request with `head`, then sends `drip` one byte every
    /// `every` until the client goes away.
    fn dripping_server(head: &'static [u8], drip: &'static [u8], every: Duration) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            if s.write_all(head).is_err() {
                return;
            }
            for b in drip.iter().cycle() {
                std::thread::sleep(every);
                if s.write_all(&[*b]).is_err() {
                    return;
                }
            }
        });
        port
    }

    #[test]
    fn a_dripping_server_meets_the_overall_deadline() {
        let ep = |port| Endpoint::parse(&format!("http://127.0.0.1:{port}"), None).unwrap();
        // Headers that never end, and a body that never ends, each byte well inside the
        // per-read timeout.
        for (head, drip) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], &b"X-A: b\r\n"[..]),
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..], &b"x"[..]),
        ] {
            let port = dripping_server(head, drip, Duration::from_millis(50));
            let started = std::time::Instant::now();
            let e = request(&ep(port), "GET", "/user-data", &[], Duration::from_millis(500)).unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
            assert!(format!("{e:#}").contains("no complete response to GET /user-data within"), "{e:#}");
        }
        // Streams: headers under the deadline, the body at a minimum rate.
        let port = dripping_server(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", Duration::from_millis(50));
        let started = std::time::Instant::now();
        let e = get_stream(&ep(port), "/b", None, Duration::from_millis(500)).err().expect("an error");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(format!("{e:#}").contains("no response headers to GET /b within"), "{e:#}");
        let port =
            dripping_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x", Duration::from_millis(50));
        let started = std::time::Instant::now();
        let mut r = get_stream(&ep(port), "/b", None, Duration::from_millis(500)).unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        assert!(e.to_string().contains("slower than"), "{e}");
    }

    #[test]
    fn a_huge_content_length_is_a_clear_error() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert!(complete(head).is_err());
        let e = parse_response(head).unwrap_err();
        assert!(format!("{e:#}").contains("larger than"), "{e:#}");
        let port = dripping_server(head, b"x", Duration::from_millis(10));
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let e = request(&ep, "GET", "/user-data", &[], Duration::from_secs(5)).unwrap_err();
        assert!(format!("{e:#}").contains("announces a body of 18446744073709551615 bytes"), "{e:#}");
    }

    #[test]
    fn requests_go_over_tcp() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let r = request(&ep, "GET", "/a", &[("X-T", "1")], Duration::from_secs(5)).unwrap();
        assert_eq!(r.text(), "ok");
        let req = t.join().unwrap();
        assert!(req.starts_with("GET /a HTTP/1.1\r\n") && req.contains("X-T: 1\r\n"), "{req}");
    }
}
