//! The parts of `planet-image run` that make a VM look like a cloud machine or join it to
//! another VM: SMBIOS strings (how EC2 and GCE show themselves to the guest), guest-to-host
//! forwards for a metadata server on 127.0.0.1, and socket links between guests on 127.0.0.1.
//! Everything stays on loopback: the user network keeps `restrict=on`.

use std::net::Ipv4Addr;
use std::process::Command;

/// `run`'s settings for cloud look-alikes and multi-VM tests (from `cli::VmNetArgs`).
#[derive(Debug, Default, Clone)]
pub struct VmNet {
    /// `-smbios` strings, in order.
    pub smbios: Vec<String>,
    pub guestfwd: Vec<GuestFwd>,
    pub link: Vec<Link>,
    /// MACs of the link NICs, in order; the rest get [`Link::default_mac`].
    pub link_mac: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFwd {
    pub guest_ip: Ipv4Addr,
    pub guest_port: u16,
    pub host_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Listen(u16),
    Connect(u16),
}

impl Link {
    pub fn default_mac(&self) -> String {
        let (port, end) = match self {
            Link::Listen(p) => (*p, 1),
            Link::Connect(p) => (*p, 2),
        };
        format!("52:54:01:{:02x}:{:02x}:{end:02x}", port >> 8, port & 0xff)
    }
}

/// The `guestfwd-relay PORT` subcommand: copies between one guest connection (QEMU gives it
/// as stdin and stdout, both the same socket) and a new connection to 127.0.0.1:PORT, both
/// ways, until both sides have closed.
pub fn relay(port: u16) -> std::io::Result<()> {
    use std::io::copy;
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsFd;
    let host = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let guest = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let (mut guest_in, mut guest_out) = (guest.try_clone()?, guest);
    let (mut host_in, mut host_out) = (host.try_clone()?, host);
    let upstream = std::thread::spawn(move || {
        let r = copy(&mut guest_in, &mut host_out);
        let _ = host_out.shutdown(Shutdown::Write);
        r
    });
    copy(&mut host_in, &mut guest_out)?;
    // The host has answered and closed: the guest's side is done too.
    // Fd 0's socket shut down for writing; an error (not a socket) is ignored.
    let _ = crate::util::sys::shutdown_write(0);
    upstream.join().map_err(|_| std::io::Error::other("relay thread panicked"))??;
    Ok(())
}

/// `GUESTIP:PORT=HOSTPORT`.
pub fn parse_guestfwd(s: &str) -> Result<GuestFwd, String> {
    let bad = || format!("{s:?}: expected GUESTIP:PORT=HOSTPORT, e.g. 10.0.2.100:80=8080");
    let (guest, host) = s.split_once('=').ok_or_else(bad)?;
    let (ip, port) = guest.split_once(':').ok_or_else(bad)?;
    Ok(GuestFwd {
        guest_ip: ip.parse().map_err(|_| bad())?,
        guest_port: port.parse().map_err(|_| bad())?,
        host_port: host.parse().map_err(|_| bad())?,
    })
}

/// `listen:PORT` or `connect:PORT`.
pub fn parse_link(s: &str) -> Result<Link, String> {
    let bad = || format!("{s:?}: expected listen:PORT or connect:PORT");
    let (kind, port) = s.split_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    match kind {
        "listen" => Ok(Link::Listen(port)),
        "connect" => Ok(Link::Connect(port)),
        _ => Err(bad()),
    }
}

pub fn parse_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
    }
}

impl VmNet {
    /// Options appended to the restricted user netdev. QEMU's `guestfwd=…-tcp:HOST:PORT` opens
    /// one connection to the host when it starts and pours every guest connection into it, which
    /// mixes up clients that talk at once (a kubelet and a controller manager asking their
    /// metadata server); `guestfwd=…-cmd:` starts the command for each guest connection, with
    /// the connection as its stdin and stdout: `relay_exe guestfwd-relay PORT` (hidden).
    pub fn user_netdev_options(&self, relay_exe: &std::path::Path) -> String {
        // libslirp splits the command as a shell would (single quotes keep a path with spaces
        // whole; a quote in it is written '\''), and QEMU's option syntax doubles a comma.
        let exe = relay_exe.display().to_string().replace('\'', r"'\''").replace(',', ",,");
        self.guestfwd
            .iter()
            .map(|g| {
                format!(",guestfwd=tcp:{}:{}-cmd:'{exe}' guestfwd-relay {}", g.guest_ip, g.guest_port, g.host_port)
            })
            .collect()
    }

    /// `-smbios` and the link NICs.
    pub fn apply(&self, cmd: &mut Command) {
        for s in &self.smbios {
            cmd.arg("-smbios").arg(s);
        }
        for (i, link) in self.link.iter().enumerate() {
            let socket = match link {
                Link::Listen(p) => format!("listen=127.0.0.1:{p}"),
                Link::Connect(p) => format!("connect=127.0.0.1:{p}"),
            };
            let mac = self.link_mac.get(i).cloned().unwrap_or_else(|| link.default_mac());
            cmd.arg("-netdev").arg(format!("socket,id=link{i},{socket}"));
            cmd.arg("-device").arg(format!("virtio-net-pci,netdev=link{i},mac={mac}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_render() {
        let a = VmNet {
            smbios: vec!["type=1,manufacturer=Google".into()],
            guestfwd: vec![parse_guestfwd("10.0.2.100:80=8080").unwrap()],
            link: vec![parse_link("listen:4000").unwrap()],
            link_mac: vec![],
        };
        assert_eq!(
            a.user_netdev_options(std::path::Path::new("/opt/a,b/planet-image")),
            ",guestfwd=tcp:10.0.2.100:80-cmd:'/opt/a,,b/planet-image' guestfwd-relay 8080"
        );
        let mut c = Command::new("qemu");
        a.apply(&mut c);
        let args: Vec<String> = c.get_args().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "-smbios",
                "type=1,manufacturer=Google",
                "-netdev",
                "socket,id=link0,listen=127.0.0.1:4000",
                "-device",
                "virtio-net-pci,netdev=link0,mac=52:54:01:0f:a0:01"
            ]
        );
        assert!(parse_link("bind:1").is_err());
        assert!(parse_guestfwd("10.0.2.100=80").is_err());
        assert!(parse_mac("52:54:00:00:00").is_err());
    }
}
