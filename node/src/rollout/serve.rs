//! The cluster's one copy of a rollout's bundle, served by the master that took it in
//! (`rollout start`) to every machine's planet-init, on [`BUNDLE_PORT`]: a cluster of a hundred
//! machines downloads the bundle once from outside, not a hundred times.
//!
//! Plain HTTP/1.0, GET only, the files `planet-*.planet` of [`BUNDLE_DIR`] and nothing else,
//! with the single byte range planet-init asks for first (the 4 KiB prelude). No TLS: the
//! bundle is signed, and planet-init checks every byte against the signature.

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BUNDLE_DIR, BUNDLE_PORT};

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;

/// Serves [`BUNDLE_DIR`] on `ip`:[`BUNDLE_PORT`] for ever (retrying the bind: the address may
/// not be up yet).
pub fn run(ip: Ipv4Addr) {
    loop {
        match TcpListener::bind((ip, BUNDLE_PORT)) {
            Ok(l) => serve(l, Path::new(BUNDLE_DIR).to_path_buf()),
            Err(e) => println!("planet-node: rollout: serving bundles on {ip}:{BUNDLE_PORT}: {e}"),
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

pub fn serve(listener: TcpListener, dir: PathBuf) {
    crate::join::serve_bounded(listener, MAX_CONNECTIONS, "bundle-request", move |conn| {
        let _ = answer(conn, &dir);
    });
}

/// The file a request path names, if it is one this server hands out.
pub fn file_for(dir: &Path, path: &str) -> Option<PathBuf> {
    let name = path.strip_prefix('/')?;
    let ok = name.starts_with("planet-")
        && name.ends_with(".planet")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+~".contains(&b))
        && !name.contains("..");
    ok.then(|| dir.join(name))
}

/// `Range: bytes=A-B` (one range, both ends given, or `A-`).
pub fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let first: u64 = a.trim().parse().ok()?;
    let last: u64 = if b.trim().is_empty() { len.checked_sub(1)? } else { b.trim().parse().ok()? };
    (first <= last && first < len).then(|| (first, last.min(len - 1)))
}

fn answer(conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn.take(16 * 1024));
    let head = crate::http_head::read_head(&mut r, "a bundle request")?;
    let range = head.field("range");
    let words: Vec<&str> = head.start.split_whitespace().collect();
    let file = match words.as_slice() {
        ["GET", path, ..] => file_for(dir, path),
        _ => return w.write_all(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"),
    };
    let Some(mut f) = file.and_then(|p| std::fs::File::open(p).ok()) else {
        return w.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let len = f.metadata()?.len();
    match range.map(|v| parse_range(v, len)) {
        Some(Some((first, last))) => {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(first))?;
            let n = last - first + 1;
            write!(w, "HTTP/1.0 206 Partial Content\r\nContent-Length: {n}\r\nContent-Range: bytes {first}-{last}/{len}\r\n\r\n")?;
            std::io::copy(&mut f.take(n), &mut w)?;
        }
        Some(None) => {
            write!(
                w,
                "HTTP/1.0 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
            )?;
        }
        None => {
            write!(w, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n")?;
            std::io::copy(&mut f, &mut w)?;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bundles_of_the_directory_are_served() {
        let d = Path::new("/x");
        assert_eq!(file_for(d, "/planet-2.planet"), Some(d.join("planet-2.planet")));
        assert_eq!(file_for(d, "/planet-1.2.0+1.planet"), Some(d.join("planet-1.2.0+1.planet")));
        for bad in
            ["/etc/passwd", "/planet-../x.planet", "/planet-2.planet/../../a", "planet-2.planet", "/planet-2.tar"]
        {
            assert_eq!(file_for(d, bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_are_parsed_within_the_file() {
        assert_eq!(parse_range("bytes=0-4095", 10_000), Some((0, 4095)));
        assert_eq!(parse_range("bytes=0-4095", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 99)));
        assert_eq!(parse_range("bytes=100-200", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn a_range_and_a_whole_file_are_served() {
        let t = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(t.path().join("planet-2.planet"), &body).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let dir = t.path().to_path_buf();
        std::thread::spawn(move || serve(l, dir));
        let get = |req: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            (String::from_utf8_lossy(&out[..at]).into_owned(), out[at + 4..].to_vec())
        };
        let (head, part) = get("GET /planet-2.planet HTTP/1.0\r\nRange: bytes=0-4095\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 206") && head.contains("Content-Range: bytes 0-4095/10000"), "{head}");
        assert_eq!(part, body[..4096]);
        let (head, all) = get("GET /planet-2.planet HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert_eq!(all, body);
        let (head, _) = get("GET /planet-3.planet HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 404"), "{head}");
    }
}
