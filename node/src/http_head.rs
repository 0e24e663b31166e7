//! The head of an HTTP/1.x message — its start line and header fields — read with bounds, and
//! a whole short answer read with them. The bundle server reads requests with it, `rollout
//! start` the answer to its download, the health checks the kubelet's and the API server's
//! answers: one reader, so no peer can feed an endless line or endless fields.

use std::io::{self, BufRead, Read};

/// The most header lines read after the start line.
const MAX_FIELDS: usize = 100;
/// The longest line accepted, its line ending included.
const MAX_LINE: u64 = 8 * 1024;

/// A start line (`GET /x HTTP/1.0`, `HTTP/1.1 200 OK`) and the fields that follow it.
#[derive(Debug, Default)]
pub struct Head {
    pub start: String,
    fields: Vec<(String, String)>,
}

impl Head {
    /// The value of the first field called `name` (case-insensitive), trimmed.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads up to and including the blank line that ends the head, and nothing more, so the body
/// is left in `r`. An end of stream after the start line ends the head too (an HTTP/1.0 peer
/// may close early); one before it, a line over 8 KiB or over 100 fields is an error naming
/// `peer`.
pub fn read_head(r: &mut impl BufRead, peer: &str) -> io::Result<Head> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{peer}: {what}"));
    let mut head = Head::default();
    if read_line(r, &mut head.start, peer)? == 0 {
        return Err(bad("closed the connection before a start line".into()));
    }
    head.start = head.start.trim_end().to_string();
    loop {
        let mut line = String::new();
        if read_line(r, &mut line, peer)? == 0 || line.trim().is_empty() {
            return Ok(head);
        }
        if head.fields.len() == MAX_FIELDS {
            return Err(bad(format!("more than {MAX_FIELDS} header fields")));
        }
        if let Some((k, v)) = line.split_once(':') {
            head.fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// A whole answer to a short request (a health endpoint, one API object): its status code and
/// body, the body at most `max_body` bytes — as long as Content-Length says, or up to the end
/// of the stream. A TLS peer that closes without its close_notify after the last byte still
/// gives its answer.
pub fn read_answer(r: &mut impl BufRead, peer: &str, max_body: u64) -> io::Result<(u16, String)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{peer}: {what}"));
    let head = read_head(r, peer)?;
    let status = head
        .start
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("not an HTTP answer: {:?}", crate::kubectl::first_words(&head.start))))?;
    let length = match head.field("content-length") {
        Some(v) => Some(v.parse::<u64>().map_err(|_| bad(format!("Content-Length {v:?}")))?),
        None => None,
    };
    if length.is_some_and(|n| n > max_body) {
        return Err(bad(format!("an answer of over {max_body} bytes")));
    }
    let mut body = Vec::new();
    match r.take(length.unwrap_or(max_body + 1)).read_to_end(&mut body) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    if body.len() as u64 > max_body {
        return Err(bad(format!("an answer of over {max_body} bytes")));
    }
    if length.is_some_and(|n| n != body.len() as u64) {
        return Err(bad(format!("closed after {} of {} bytes", body.len(), length.unwrap_or(0))));
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One line of at most [`MAX_LINE`] bytes into `out`; 0 at the end of the stream.
fn read_line(r: &mut impl BufRead, out: &mut String, peer: &str) -> io::Result<usize> {
    let n = r.by_ref().take(MAX_LINE).read_line(out)?;
    if n as u64 == MAX_LINE && !out.ends_with('\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{peer}: a header line over {MAX_LINE} bytes")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_to_its_blank_line_and_no_further() {
        let mut r = io::Cursor::new(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:b\r\n\r\nhello"[..]);
        let head = read_head(&mut r, "peer").unwrap();
        assert_eq!(head.start, "HTTP/1.1 200 OK");
        assert_eq!(head.field("content-length"), Some("5"));
        assert_eq!(head.field("x-a"), Some("b"));
        assert_eq!(head.field("range"), None);
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
    }

    #[test]
    fn an_answer_is_read_by_its_length_or_to_the_end() {
        let mut r = io::Cursor::new(&b"HTTP/1.1 500 Internal\r\nContent-Length: 3\r\n\r\nbadxyz"[..]);
        assert_eq!(read_answer(&mut r, "p", 100).unwrap(), (500, "bad".to_string()));
        let mut r = io::Cursor::new(&b"HTTP/1.0 200 OK\r\n\r\nok\n"[..]);
        assert_eq!(read_answer(&mut r, "p", 100).unwrap(), (200, "ok\n".to_string()));
        let e = read_answer(&mut io::Cursor::new(&b"HTTP/1.0 200 OK\r\n\r\n0123456789"[..]), "api", 4);
        assert!(e.unwrap_err().to_string().contains("api: an answer of over 4 bytes"));
        let e = read_answer(&mut io::Cursor::new(&b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nok"[..]), "p", 100);
        assert!(e.unwrap_err().to_string().contains("closed after 2 of 9 bytes"));
        let e = read_answer(&mut io::Cursor::new(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]), "p", 100);
        assert!(e.unwrap_err().to_string().contains("not an HTTP answer"));
        let e = read_answer(&mut io::Cursor::new(&b"HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n"[..]), "p", 100);
        assert!(e.unwrap_err().to_string().contains("Content-Length \"-1\""));
    }

    #[test]
    fn endless_lines_fields_and_silence_are_errors() {
        let e = read_head(&mut io::Cursor::new(&b""[..]), "10.0.0.1").unwrap_err().to_string();
        assert!(e.contains("10.0.0.1") && e.contains("before a start line"), "{e}");
        let long = format!("GET /{} HTTP/1.0\r\n\r\n", "a".repeat(9000));
        let e = read_head(&mut io::Cursor::new(long.as_bytes()), "p").unwrap_err().to_string();
        assert!(e.contains("over 8192 bytes"), "{e}");
        let many = format!("GET / HTTP/1.0\r\n{}\r\n", "X: y\r\n".repeat(101));
        let e = read_head(&mut io::Cursor::new(many.as_bytes()), "p").unwrap_err().to_string();
        assert!(e.contains("more than 100"), "{e}");
        // A peer that closes after its fields without the blank line still gives its head.
        let head = read_head(&mut io::Cursor::new(&b"GET / HTTP/1.0\r\nRange: bytes=0-1\r\n"[..]), "p").unwrap();
        assert_eq!(head.field("Range"), Some("bytes=0-1"));
    }
}
