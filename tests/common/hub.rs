//! An Ethernet hub for QEMU guests on loopback. `planet-image run --link connect:PORT` gives
//! QEMU `-netdev socket,connect=127.0.0.1:PORT`, which speaks a stream of frames, each a 4-byte
//! big-endian length and then the frame. QEMU's own `listen=` side takes one peer only, so three
//! or more guests on one segment need this: every frame goes to every other connection. A dumb
//! hub (no MAC learning) is simple and correct for the few guests of a test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
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

/// Fixed addresses the hub hands out by DHCP, as a cloud network's DHCP server does (an EC2
/// VPC gives each instance its private address so): the guest with MAC `mac` gets `ip`.
#[derive(Clone, Debug)]
pub struct DhcpLeases {
    /// The server's own address (DHCP option 54 and the replies' source).
    pub server: Ipv4Addr,
    pub prefix: u8,
    pub leases: Vec<([u8; 6], Ipv4Addr)>,
}

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
        Hub::start_with(None)
    }

    /// A hub that also answers DHCP for the guests `dhcp` names (and no others).
    pub fn with_dhcp(dhcp: DhcpLeases) -> Hub {
        Hub::start_with(Some(dhcp))
    }

    fn start_with(dhcp: Option<DhcpLeases>) -> Hub {
        let dhcp = Arc::new(dhcp);
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
            let dhcp = dhcp.clone();
            std::thread::spawn(move || {
                let mut next_id = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let id = next_id;
                            next_id += 1;
                            if add_peer(id, conn, &peers, &threads, &forwarded, &dhcp).is_err() {
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
    dhcp: &Arc<Option<DhcpLeases>>,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_nodelay(true)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let reader = conn.try_clone()?;
    peers.lock().unwrap().push((id, conn));
    let (peers, forwarded, dhcp) = (peers.clone(), forwarded.clone(), dhcp.clone());
    let handle = std::thread::spawn(move || {
        let _ = forward_from(id, reader, &peers, &forwarded, &dhcp);
        remove_peer(&peers, id);
    });
    threads.lock().unwrap().push(handle);
    Ok(())
}

/// Reads frames from peer `id` and writes each to every other peer, until `id`'s stream ends;
/// a DHCP request the hub answers gets its reply, on `id`'s stream only.
fn forward_from(
    id: usize,
    mut reader: TcpStream,
    peers: &Peers,
    forwarded: &AtomicUsize,
    dhcp: &Option<DhcpLeases>,
) -> std::io::Result<()> {
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
        let reply = dhcp.as_ref().and_then(|d| dhcp_reply(d, &buf[4..4 + len]));
        for (other, conn) in list.iter_mut() {
            let sent = if *other != id {
                conn.write_all(&buf[..4 + len])
            } else if let Some(frame) = &reply {
                let mut framed = (frame.len() as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(frame);
                conn.write_all(&framed)
            } else {
                Ok(())
            };
            if sent.is_err() {
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

/// The hub's own MAC, the source of its DHCP replies (locally administered).
const HUB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// The OFFER or ACK (RFC 2131) answering `frame`, when it is a DHCPDISCOVER or DHCPREQUEST
/// (Ethernet, IPv4, UDP to port 67) from a MAC with a lease; sent to the broadcast address, as
/// the client's broadcast flag asks. Anything else: `None`.
fn dhcp_reply(d: &DhcpLeases, frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < 14 + 20 + 8 + 240 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 + 240 {
        return None;
    }
    let udp = &ip[ihl..];
    if udp[2..4] != 67u16.to_be_bytes() {
        return None;
    }
    let bootp = &udp[8..];
    if bootp[0] != 1 || bootp[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let mac: [u8; 6] = bootp[28..34].try_into().ok()?;
    let &(_, yiaddr) = d.leases.iter().find(|(m, _)| *m == mac)?;
    // Option 53, the message type: DISCOVER (1) gets OFFER (2), REQUEST (3) gets ACK (5).
    let mut options = &bootp[240..];
    let mut kind = None;
    while let [code, rest @ ..] = options {
        match code {
            0 => options = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                if *code == 53 {
                    kind = value.first().copied();
                }
                options = &rest[usize::from(len)..];
            }
        }
    }
    let answer = match kind? {
        1 => 2u8,
        3 => 5,
        _ => return None,
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(d.prefix)).unwrap_or(0).to_be_bytes();
    let mut reply = vec![0u8; 240];
    reply[0] = 2; // BOOTREPLY
    reply[1] = 1; // Ethernet
    reply[2] = 6;
    reply[4..8].copy_from_slice(&bootp[4..8]); // xid
    reply[10..12].copy_from_slice(&bootp[10..12]); // flags
    reply[16..20].copy_from_slice(&yiaddr.octets());
    reply[20..24].copy_from_slice(&d.server.octets());
    reply[28..44].copy_from_slice(&bootp[28..44]); // chaddr
    reply[236..240].copy_from_slice(&[99, 130, 83, 99]);
    for (code, value) in [
        (53u8, vec![answer]),
        (54, d.server.octets().to_vec()),
        (1, mask.to_vec()),
        (51, 86400u32.to_be_bytes().to_vec()),
    ] {
        reply.push(code);
        reply.push(value.len() as u8);
        reply.extend_from_slice(&value);
    }
    reply.push(255);
    reply.resize(reply.len().max(300), 0);

    let udp_len = 8 + reply.len();
    let mut out = Vec::with_capacity(14 + 20 + udp_len);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&HUB_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    header[8] = 64; // TTL
    header[9] = 17; // UDP
    header[12..16].copy_from_slice(&d.server.octets());
    header[16..20].copy_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    header[10..12].copy_from_slice(&(!((folded & 0xffff) + (folded >> 16)) as u16).to_be_bytes());
    out.extend_from_slice(&header);
    // UDP checksum 0: none, which IPv4 allows.
    out.extend_from_slice(&67u16.to_be_bytes());
    out.extend_from_slice(&68u16.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&reply);
    Some(out)
}
