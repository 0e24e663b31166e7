//! An Ethernet hub for QEMU guests on loopback. `planet-image run --link connect:PORT` gives
//! QEMU `-netdev socket,connect=127.0.0.1:PORT`, which speaks a stream of frames, each a 4-byte
//! big-endian length and then the frame. QEMU's own `listen=` side takes one peer only, so three
//! or more guests on one segment need this: every frame goes to every other connection. A dumb
//! hub (no MAC learning) is simple and correct for the few guests of a test.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// QEMU's largest packet (NET_BUFSIZE: 4096 + 65536); a longer length means a broken stream.
pub const MAX_FRAME: usize = 4096 + 65536;

/// How long a write to one guest may block before that guest is dropped (a stuck guest must
/// not stall the others for ever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Peers = Arc<Mutex<Vec<(usize, TcpStream)>>>;

/// A running hub; stops (closing every connection) when dropped.
pub struct Hub {
    pub port: u16,
    stop: Arc<AtomicBool>,
    peers: Peers,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
    /// Frames forwarded so far (each counted once however many peers got it).
    pub forwarded: Arc<AtomicUsize>,
}

impl Hub {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the hub on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        // Non-blocking accept, polled, so that dropping the hub can stop this thread.
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers: Peers = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (stop, peers, threads, forwarded) = (stop.clone(), peers.clone(), threads.clone(), forwarded.clone());
            std::thread::spawn(move || {
                let mut next_id = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let id = next_id;
                            next_id += 1;
                            if add_peer(id, conn, &peers, &threads, &forwarded).is_err() {
                                continue;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Hub { port, stop, peers, threads, accept: Some(accept), forwarded }
    }

    /// How many guests are connected now.
    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

fn add_peer(
    id: usize,
    conn: TcpStream,
    peers: &Peers,
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
    forwarded: &Arc<AtomicUsize>,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let reader = conn.try_clone()?;
    peers.lock().unwrap().push((id, conn));
    let (peers, forwarded) = (peers.clone(), forwarded.clone());
    let handle = std::thread::spawn(move || {
        let _ = forward_from(id, reader, &peers, &forwarded);
        remove_peer(&peers, id);
    });
    threads.lock().unwrap().push(handle);
    Ok(())
}

/// Reads frames from peer `id` and writes each to every other peer, until `id`'s stream ends.
fn forward_from(id: usize, mut reader: TcpStream, peers: &Peers, forwarded: &AtomicUsize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4 + MAX_FRAME];
    loop {
        reader.read_exact(&mut buf[..4])?;
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
        }
        reader.read_exact(&mut buf[4..4 + len])?;
        let mut list = peers.lock().unwrap();
        // A peer whose write fails or times out is dropped: a half-written frame would break
        // its stream's framing anyway.
        let mut dead = Vec::new();
        for (other, conn) in list.iter_mut() {
            if *other != id && conn.write_all(&buf[..4 + len]).is_err() {
                dead.push(*other);
            }
        }
        for d in dead {
            if let Some(pos) = list.iter().position(|(i, _)| *i == d) {
                let _ = list[pos].1.shutdown(Shutdown::Both);
                list.remove(pos);
            }
        }
        forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

fn remove_peer(peers: &Peers, id: usize) {
    let mut list = peers.lock().unwrap();
    if let Some(pos) = list.iter().position(|(i, _)| *i == id) {
        let _ = list[pos].1.shutdown(Shutdown::Both);
        list.remove(pos);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        // Shutting the sockets down ends every reader thread's blocking read.
        for (_, conn) in self.peers.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let handles: Vec<JoinHandle<()>> = self.threads.lock().unwrap().drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }
}
