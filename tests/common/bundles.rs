//! A test HTTP server for update bundles, on 127.0.0.1, which guests reach through guestfwd
//! (tests/update.rs, tests/rollout.rs).

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{head_field, read_head};

/// Serves one bundle (or 404) at any path, with byte ranges, on 127.0.0.1. Requests on one
/// connection are answered in turn. It counts the body bytes it sends, and can break one
/// connection in the middle of a response.
pub struct BundleServer {
    pub port: u16,
    bundle: Arc<Mutex<Option<Arc<Vec<u8>>>>>,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    state: Arc<Counters>,
}

/// Bytes sent, and a connection to break.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    /// The first response to a range starting at or after this offset sends half its body,
    /// then the connection is closed (once; `u64::MAX`: never).
    break_from: AtomicU64,
    /// Answer every request with the whole file (200), as a server without range support does.
    ignore_ranges: AtomicBool,
}

impl BundleServer {
    /// Serves for at most `limit` (a test that hangs does not leave a server behind for ever).
    pub fn start(limit: Duration) -> BundleServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = BundleServer {
            port,
            bundle: Arc::new(Mutex::new(None)),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Counters {
                sent: AtomicU64::new(0),
                break_from: AtomicU64::new(u64::MAX),
                ignore_ranges: AtomicBool::new(false),
            }),
        };
        let (bundle, log, stop) = (server.bundle.clone(), server.log.clone(), server.stop.clone());
        let state = server.state.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (bundle, log, stop, state) = (bundle.clone(), log.clone(), stop.clone(), state.clone());
                        std::thread::spawn(move || serve_bundle(s, &bundle, &log, &stop, &state));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        server
    }

    pub fn serve(&self, bytes: Option<Vec<u8>>) {
        *self.bundle.lock().unwrap() = bytes.map(Arc::new);
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    /// Breaks the connection of the first response to a range starting at or after `offset`,
    /// half-way through its body.
    pub fn break_once_from(&self, offset: u64) {
        self.state.break_from.store(offset, Ordering::SeqCst);
    }

    /// From now on answers range requests with the whole file, as a server that does not do
    /// ranges (a plain static file server, a proxy that strips them).
    pub fn ignore_ranges(&self, ignore: bool) {
        self.state.ignore_ranges.store(ignore, Ordering::SeqCst);
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Writes an answer's head and body, the body counted in `sent` before it goes out (and taken
/// back if it does not): a client that has read it all must find it counted.
fn send_counted(w: &mut TcpStream, head: &str, body: &[u8], sent: &AtomicU64) -> std::io::Result<()> {
    sent.fetch_add(body.len() as u64, Ordering::SeqCst);
    let r = w.write_all(head.as_bytes()).and_then(|_| w.write_all(body));
    if r.is_err() {
        sent.fetch_sub(body.len() as u64, Ordering::SeqCst);
    }
    r
}

fn serve_bundle(
    s: TcpStream,
    bundle: &Mutex<Option<Arc<Vec<u8>>>>,
    log: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    state: &Counters,
) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while !stop.load(Ordering::Relaxed) {
        let head = match read_head(&mut r) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        };
        let line = head.lines().next().unwrap_or("").to_string();
        let range = head_field(&head, "range").filter(|_| !state.ignore_ranges.load(Ordering::SeqCst));
        log.lock().unwrap().push(format!("{line} range={}", range.as_deref().unwrap_or("-")));
        let current = bundle.lock().unwrap().clone();
        let res = match current {
            None => w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Some(b) => match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
                Some((a, z)) => {
                    let a: usize = a.parse().unwrap();
                    let z: usize = z.parse::<usize>().unwrap().min(b.len() - 1);
                    let head = format!(
                        "HTTP/1.1 206 Partial\r\nContent-Range: bytes {a}-{z}/{}\r\nContent-Length: {}\r\n\r\n",
                        b.len(),
                        z + 1 - a
                    );
                    let cut = state
                        .break_from
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| (a as u64 >= f).then_some(u64::MAX))
                        .is_ok();
                    if cut {
                        let half = &b[a..a + (z + 1 - a) / 2];
                        let _ = send_counted(&mut w, &head, half, &state.sent);
                        log.lock().unwrap().push(format!("broke the connection after {} bytes", half.len()));
                        return;
                    }
                    send_counted(&mut w, &head, &b[a..=z], &state.sent)
                }
                None => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len());
                    send_counted(&mut w, &head, &b, &state.sent)
                }
            },
        };
        if res.is_err() {
            return;
        }
    }
}
