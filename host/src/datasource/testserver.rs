//! A fake metadata server for the datasources' unit tests, so that EC2, GCE and NoCloud over
//! HTTP are tested without a VM. It listens on 127.0.0.1 only (tests must never reach
//! 169.254.169.254), answers from a closure, records every request, and is bounded in the
//! connections it serves and the time it lives.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Context;

/// Most connections one server accepts; a retry loop gone wrong stops here.
const MAX_CONNECTIONS: usize = 64;
/// Longest a server lives, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(20);
/// Longest a [`Reply::Silent`] connection is held open.
const SILENCE: Duration = Duration::from_secs(3);

/// A request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How the server answers one request.
pub enum Reply {
    /// A well-formed response with a Content-Length.
    Status(u16, Vec<u8>),
    /// These bytes as they are, then the connection is closed.
    Raw(Vec<u8>),
    /// Nothing: the connection stays open, unanswered, until the client gives up.
    Silent,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Status(200, body.as_bytes().to_vec())
    }
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new())
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    /// `http://127.0.0.1:PORT`, for [`Context::metadata_url`].
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let born = Instant::now();
            let mut conns = Vec::new();
            while conns.len() < MAX_CONNECTIONS && !halt.load(Ordering::SeqCst) && born.elapsed() < LIFETIME {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (h, r, st) = (handler.clone(), reqs.clone(), halt.clone());
                        conns.push(std::thread::spawn(move || serve(s, &*h, &r, &st)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Server { url, requests, stop, thread: Some(thread) }
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, handler: &Handler, requests: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if raw.len() > 65536 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let req = Request { method, path, headers };
    requests.lock().unwrap().push(req.clone());
    match handler(&req) {
        Reply::Status(code, body) => {
            let head = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body));
        }
        Reply::Raw(bytes) => {
            let _ = s.write_all(&bytes);
        }
        Reply::Silent => {
            let held = Instant::now();
            while held.elapsed() < SILENCE && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A context whose metadata URL is `url` (always a test server's, never the real endpoint)
/// and whose deadline is `within` from now.
pub fn ctx(root: &Path, url: &str, within: Duration) -> Context {
    assert!(url.starts_with("http://127."), "tests talk to 127.0.0.0/8 only, not {url}");
    Context {
        sysfs: root.join("sys"),
        dev: root.join("dev"),
        mount_dir: root.join("mnt"),
        metadata_url: Some(url.to_string()),
        nocloud_url: None,
        nics: Vec::new(),
        deadline: Instant::now() + within,
    }
}
