//! A metadata server of the tests' own on 127.0.0.1 (EC2, GCE and the like), logging every
//! request with its headers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server answers: (method, path) → (status, body). `None` answers nothing at all
/// (accepts and holds the connection), for the deadline test.
pub type Handler = dyn Fn(&str, &str, &[(String, String)]) -> Option<(u16, Vec<u8>)> + Send + Sync;

/// Any answer, for servers that misbehave on purpose.
pub enum Reply {
    /// A well-formed response with this status and body.
    Answer(u16, Vec<u8>),
    /// The same with these extra response headers (name, value).
    AnswerWith(u16, Vec<(String, String)>, Vec<u8>),
    /// These bytes as they are (a hostile head, say); the connection stays open.
    Raw(Vec<u8>),
    /// These bytes, then one more byte every `every` until the test ends.
    Drip(Vec<u8>, Duration),
    /// Nothing: the connection is held until the test ends.
    Silent,
}

pub type RawHandler = dyn Fn(&str, &str, &[(String, String)]) -> Reply + Send + Sync;

/// A metadata server on 127.0.0.1 that logs every request with its headers. Stops when
/// dropped.
pub struct MetadataServer {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl MetadataServer {
    pub fn start(handler: Box<Handler>) -> MetadataServer {
        MetadataServer::start_raw(Box::new(move |m, p, h| match handler(m, p, h) {
            Some((status, body)) => Reply::Answer(status, body),
            None => Reply::Silent,
        }))
    }

    /// A server whose handler may answer anything at all ([`Reply`]).
    pub fn start_raw(handler: Box<RawHandler>) -> MetadataServer {
        MetadataServer::start_raw_for(handler, Duration::from_secs(900))
    }

    /// [`MetadataServer::start_raw`] answering for `lifetime` at most.
    pub fn start_raw_for(handler: Box<RawHandler>, lifetime: Duration) -> MetadataServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let handler: Arc<RawHandler> = Arc::from(handler);
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < lifetime {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (log, handler, stop) = (log2.clone(), handler.clone(), stop2.clone());
                        std::thread::spawn(move || serve(s, &log, &*handler, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        MetadataServer { port, log, stop }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves requests on one connection until it closes: a client may send several in turn
/// (HTTP keep-alive), so requests are read one after another and the connection is never
/// closed here.
fn serve(mut s: TcpStream, log: &Mutex<Vec<String>>, handler: &RawHandler, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut raw: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        };
        let text = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw.drain(..end);
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
            .collect();
        let mut words = first.split_whitespace();
        let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
        let header_text: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        log.lock().unwrap().push(format!("{method} {path} {}", header_text.join(" ")));
        match handler(&method, &path, &headers) {
            Reply::Answer(status, body) => answer(&mut s, status, &[], &body),
            Reply::AnswerWith(status, headers, body) => answer(&mut s, status, &headers, &body),
            Reply::Raw(bytes) => {
                let _ = s.write_all(&bytes);
            }
            Reply::Drip(head, every) => {
                let _ = s.write_all(&head);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                }
                return;
            }
            Reply::Silent => {
                // Never answer: hold the connection until the test ends.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
        }
    }
}

/// Writes one response; a failed write shows as the client's error.
fn answer(s: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
