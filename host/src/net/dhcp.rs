//! A small DHCPv4 client (RFC 2131/2132): DISCOVER → OFFER → REQUEST → ACK over a UDP socket
//! bound to one interface. The broadcast flag is always set, so servers answer by broadcast,
//! which the kernel delivers before the interface has an address.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIXED_LEN: usize = 236;

pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
}

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MSG_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMS: u8 = 55;
    pub const RENEWAL_T1: u8 = 58;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// One BOOTP/DHCP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 1 = request (client to server), 2 = reply.
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// Options in order, without PAD/END.
    pub options: Vec<(u8, Vec<u8>)>,
}

const BROADCAST_FLAG: u16 = 0x8000;

impl Packet {
    fn request(xid: u32, mac: [u8; 6], kind: u8) -> Packet {
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&mac);
        Packet {
            op: 1,
            xid,
            secs: 0,
            flags: BROADCAST_FLAG,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options: vec![(opt::MSG_TYPE, vec![kind]), (opt::CLIENT_ID, client_id)],
        }
    }

    pub fn discover(xid: u32, mac: [u8; 6]) -> Packet {
        let mut p = Packet::request(xid, mac, msg::DISCOVER);
        p.options.push((opt::PARAMS, PARAMS.to_vec()));
        p
    }

    /// The REQUEST answering `offer` (SELECTING state).
    pub fn request_for(offer: &Packet, mac: [u8; 6]) -> Packet {
        let mut p = Packet::request(offer.xid, mac, msg::REQUEST);
        p.options.push((opt::REQUESTED_IP, offer.yiaddr.octets().to_vec()));
        if let Some(id) = offer.option(opt::SERVER_ID) {
            p.options.push((opt::SERVER_ID, id.to_vec()));
        }
        p.options.push((opt::PARAMS, PARAMS.to_vec()));
        p
    }

    /// A REQUEST extending a lease we hold (RENEWING/REBINDING: ciaddr set, no server id).
    pub fn renew(xid: u32, mac: [u8; 6], ip: Ipv4Addr) -> Packet {
        let mut p = Packet::request(xid, mac, msg::REQUEST);
        p.ciaddr = ip;
        p.options.push((opt::PARAMS, PARAMS.to_vec()));
        p
    }

    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.as_slice())
    }

    pub fn msg_type(&self) -> Option<u8> {
        self.option(opt::MSG_TYPE).and_then(|v| v.first().copied())
    }

    fn ip_option(&self, code: u8) -> Option<Ipv4Addr> {
        self.option(code).filter(|v| v.len() >= 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]))
    }

    fn u32_option(&self, code: u8) -> Option<u32> {
        self.option(code).filter(|v| v.len() == 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = self.op;
        b[1] = 1; // htype ethernet
        b[2] = 6; // hlen
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[20..24].copy_from_slice(&self.siaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            // Options longer than 255 bytes are split (RFC 3396); ours never are.
            for chunk in value.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        // Some relays drop BOOTP messages shorter than 300 bytes.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Packet> {
        if b.len() < FIXED_LEN + 4 {
            bail!("DHCP packet of {} bytes is too short", b.len());
        }
        if b[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
            bail!("no DHCP magic cookie");
        }
        let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut i = FIXED_LEN + 4;
        while i < b.len() {
            let code = b[i];
            if code == opt::END {
                break;
            }
            if code == opt::PAD {
                i += 1;
                continue;
            }
            let len = *b.get(i + 1).context("truncated DHCP option")? as usize;
            let value = b.get(i + 2..i + 2 + len).context("truncated DHCP option")?;
            // Repeated options are concatenated (RFC 3396).
            match options.iter_mut().find(|(c, _)| *c == code) {
                Some((_, v)) => v.extend_from_slice(value),
                None => options.push((code, value.to_vec())),
            }
            i += 2 + len;
        }
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&b[28..34]);
        Ok(Packet {
            op: b[0],
            xid: u32::from_be_bytes(b[4..8].try_into().unwrap()),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr,
            options,
        })
    }
}

const PARAMS: [u8; 7] =
    [opt::SUBNET_MASK, opt::ROUTER, opt::DNS, opt::HOSTNAME, opt::DOMAIN, opt::LEASE_TIME, opt::RENEWAL_T1];

/// What the server granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub server: Option<Ipv4Addr>,
    pub lease_secs: u32,
    /// When to renew (T1), default half the lease.
    pub renew_secs: u32,
}

impl Lease {
    pub fn from_ack(ack: &Packet) -> Lease {
        let mask = ack.ip_option(opt::SUBNET_MASK).unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let lease_secs = ack.u32_option(opt::LEASE_TIME).unwrap_or(86400);
        Lease {
            address: ack.yiaddr,
            prefix: super::ifconfig::mask_to_prefix(mask),
            router: ack.ip_option(opt::ROUTER),
            dns: ack
                .option(opt::DNS)
                .map(|v| v.chunks_exact(4).map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3])).collect())
                .unwrap_or_default(),
            domain: ack.option(opt::DOMAIN).and_then(domain_name),
            server: ack.ip_option(opt::SERVER_ID),
            lease_secs,
            renew_secs: ack.u32_option(opt::RENEWAL_T1).unwrap_or(lease_secs / 2),
        }
    }
}

/// The DOMAIN option as a DNS name, or None when it is not one: it goes into resolv.conf's
/// `search` line, where a newline or a space would add lines or names the server chose.
fn domain_name(v: &[u8]) -> Option<String> {
    let v = v.strip_suffix(b"\0").unwrap_or(v);
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// How DHCP messages travel; a UDP socket in production, a script in tests.
pub trait Transport {
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// One datagram, or None when `timeout` passes.
    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>>;
}

/// Waits for a reply of one of `kinds` to transaction `xid`, ignoring everything else.
fn await_reply(
    t: &mut dyn Transport,
    xid: u32,
    mac: [u8; 6],
    kinds: &[u8],
    timeout: Duration,
) -> Result<Option<Packet>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let Some(raw) = t.recv(left).context("receiving a DHCP reply")? else {
            return Ok(None);
        };
        let Ok(p) = Packet::decode(&raw) else {
            continue;
        };
        if p.op == 2 && p.xid == xid && p.chaddr == mac && p.msg_type().is_some_and(|k| kinds.contains(&k)) {
            return Ok(Some(p));
        }
    }
}

/// Runs DISCOVER/OFFER/REQUEST/ACK with retransmission (timeouts 1, 2, 4, 4… s) for up to
/// `attempts` tries.
pub fn acquire(t: &mut dyn Transport, mac: [u8; 6], mut xid: u32, attempts: u32) -> Result<Lease> {
    let mut wait = Duration::from_secs(1);
    for _ in 0..attempts {
        xid = xid.wrapping_add(1);
        t.send(&Packet::discover(xid, mac).encode()).context("sending DHCPDISCOVER")?;
        if let Some(offer) = await_reply(t, xid, mac, &[msg::OFFER], wait)? {
            t.send(&Packet::request_for(&offer, mac).encode()).context("sending DHCPREQUEST")?;
            match await_reply(t, xid, mac, &[msg::ACK, msg::NAK], wait * 2)? {
                Some(ack) if ack.msg_type() == Some(msg::ACK) => return Ok(Lease::from_ack(&ack)),
                _ => {}
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
    bail!("no DHCP lease after {attempts} attempts")
}

/// Extends a lease we hold; broadcast, so it works whether or not the server is reachable by
/// unicast.
pub fn renew(t: &mut dyn Transport, mac: [u8; 6], xid: u32, ip: Ipv4Addr) -> Result<Option<Lease>> {
    t.send(&Packet::renew(xid, mac, ip).encode()).context("sending DHCPREQUEST (renew)")?;
    Ok(match await_reply(t, xid, mac, &[msg::ACK, msg::NAK], Duration::from_secs(4))? {
        Some(ack) if ack.msg_type() == Some(msg::ACK) => Some(Lease::from_ack(&ack)),
        _ => None,
    })
}

/// A UDP socket on port 68 bound to one interface, sending to the broadcast address.
pub struct UdpTransport {
    sock: UdpSocket,
}

impl UdpTransport {
    pub fn open(iface: &str) -> Result<UdpTransport> {
        use crate::sys::net;
        let fd = net::inet_dgram_socket().context("opening a UDP socket")?;
        for opt in [libc::SO_REUSEADDR, libc::SO_BROADCAST] {
            net::set_socket_option(fd.as_fd(), opt, 1).context("setting socket options")?;
        }
        net::bind_to_device(fd.as_fd(), iface).with_context(|| format!("binding the DHCP socket to {iface}"))?;
        net::bind_v4(fd.as_fd(), SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT))
            .context("binding UDP port 68")?;
        let sock = UdpSocket::from(fd);
        Ok(UdpTransport { sock })
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        self.sock.send_to(packet, SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT)).map(|_| ())
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        self.sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; 1500];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn reply(to: &Packet, kind: u8) -> Packet {
        Packet {
            op: 2,
            xid: to.xid,
            secs: 0,
            flags: to.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 0, 2, 15),
            siaddr: Ipv4Addr::new(10, 0, 2, 2),
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: to.chaddr,
            options: vec![
                (opt::MSG_TYPE, vec![kind]),
                (opt::SERVER_ID, vec![10, 0, 2, 2]),
                (opt::SUBNET_MASK, vec![255, 255, 255, 0]),
                (opt::ROUTER, vec![10, 0, 2, 2]),
                (opt::DNS, vec![10, 0, 2, 3, 1, 1, 1, 1]),
                (opt::LEASE_TIME, 86400u32.to_be_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn discover_encodes_to_the_wire_format() {
        let b = Packet::discover(0x01020304, MAC).encode();
        assert_eq!(b.len(), 300);
        assert_eq!(&b[0..4], &[1, 1, 6, 0]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[10..12], &[0x80, 0x00], "broadcast flag");
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(&b[236..240], &MAGIC);
        assert_eq!(&b[240..243], &[53, 1, 1]);
        assert_eq!(&b[243..252], &[61, 7, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&b[252..254], &[55, 7]);
        assert_eq!(b[261], 255);
        assert_eq!(Packet::decode(&b).unwrap(), Packet::discover(0x01020304, MAC));
    }

    #[test]
    fn decode_handles_pad_and_split_options_and_rejects_garbage() {
        let mut p = reply(&Packet::discover(7, MAC), msg::OFFER).encode();
        // Insert PAD before the first option.
        p.insert(240, 0);
        let d = Packet::decode(&p).unwrap();
        assert_eq!(d.msg_type(), Some(msg::OFFER));
        assert!(Packet::decode(&p[..100]).is_err());
        let mut bad = p.clone();
        bad[236] = 0;
        assert!(Packet::decode(&bad).is_err());
        let mut trunc = p[..244].to_vec();
        trunc[242] = 200; // option length past the end
        assert!(Packet::decode(&trunc).is_err());
    }

    #[test]
    fn lease_fields_come_from_the_ack() {
        let l = Lease::from_ack(&reply(&Packet::discover(7, MAC), msg::ACK));
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns, vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(l.renew_secs, 43200);
    }

    #[test]
    fn a_domain_that_is_not_a_dns_name_is_dropped() {
        let mut ack = reply(&Packet::discover(7, MAC), msg::ACK);
        ack.options.push((opt::DOMAIN, b"a\nnameserver 6.6.6.6".to_vec()));
        let l = Lease::from_ack(&ack);
        assert_eq!(l.domain, None);
        let net = crate::net::Network {
            interfaces: vec![crate::net::Configured {
                iface: "eth0".into(),
                address: l.address,
                prefix: l.prefix,
                gateway: l.router,
                dns: vec![],
                domain: l.domain,
                source: "dhcp",
            }],
            dns: vec![],
        };
        assert!(!net.resolv_conf().contains("6.6.6.6"), "{}", net.resolv_conf());
        for (raw, want) in [(&b"example.internal\0"[..], Some("example.internal")), (b"a b", None), (b"", None)] {
            let mut ack = reply(&Packet::discover(7, MAC), msg::ACK);
            ack.options.push((opt::DOMAIN, raw.to_vec()));
            assert_eq!(Lease::from_ack(&ack).domain.as_deref(), want);
        }
    }

    /// A server that answers every DISCOVER with an OFFER and every REQUEST with an ACK, after
    /// dropping the first `drop` messages and mixing in noise.
    struct FakeServer {
        drop: usize,
        inbox: VecDeque<Vec<u8>>,
        sent: Vec<Packet>,
    }

    impl Transport for FakeServer {
        fn send(&mut self, packet: &[u8]) -> io::Result<()> {
            let p = Packet::decode(packet).unwrap();
            self.sent.push(p.clone());
            if self.drop > 0 {
                self.drop -= 1;
                return Ok(());
            }
            let mut other = reply(&p, msg::OFFER);
            other.xid ^= 1;
            self.inbox.push_back(other.encode());
            self.inbox.push_back(b"garbage".to_vec());
            let kind = if p.msg_type() == Some(msg::DISCOVER) { msg::OFFER } else { msg::ACK };
            self.inbox.push_back(reply(&p, kind).encode());
            Ok(())
        }
        fn recv(&mut self, _timeout: Duration) -> io::Result<Option<Vec<u8>>> {
            Ok(self.inbox.pop_front())
        }
    }

    #[test]
    fn acquire_retries_and_requests_the_offer() {
        let mut s = FakeServer { drop: 1, inbox: VecDeque::new(), sent: Vec::new() };
        let lease = acquire(&mut s, MAC, 100, 4).unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        let kinds: Vec<_> = s.sent.iter().map(|p| p.msg_type().unwrap()).collect();
        assert_eq!(kinds, [msg::DISCOVER, msg::DISCOVER, msg::REQUEST]);
        let req = &s.sent[2];
        assert_eq!(req.option(opt::REQUESTED_IP), Some(&[10u8, 0, 2, 15][..]));
        assert_eq!(req.option(opt::SERVER_ID), Some(&[10u8, 0, 2, 2][..]));
        assert_eq!(req.xid, s.sent[1].xid);
    }

    #[test]
    fn acquire_gives_up() {
        let mut s = FakeServer { drop: 100, inbox: VecDeque::new(), sent: Vec::new() };
        let err = acquire(&mut s, MAC, 1, 3).unwrap_err();
        assert_eq!(err.to_string(), "no DHCP lease after 3 attempts");
    }
}
