//! The head of an HTTP/1.x message — its start line and header fields — read with bounds.
//! The bundle server reads requests with it and `rollout start` reads the answer to its
//! download: one reader, so neither side can be fed an endless line or endless fields.

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
