//! Interface configuration through the classic socket ioctls (SIOCSIFFLAGS, SIOCSIFADDR,
//! SIOCSIFNETMASK, SIOCADDRT): enough for one IPv4 address and a default route per NIC, with
//! far less code than rtnetlink.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::check;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(iface: &str) -> io::Result<IfReq> {
        let b = iface.as_bytes();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
        }
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }

    fn set_sockaddr(&mut self, ip: Ipv4Addr) {
        self.data[..16].copy_from_slice(&sockaddr_in(ip));
    }
}

/// A `struct sockaddr_in` as 16 raw bytes (family, port 0, address, padding).
fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&ip.octets());
    s
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned on success.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: callers pass the structure the request expects.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) })?;
    Ok(())
}

/// Sets IFF_UP on an interface (for `lo` this also gives it 127.0.0.1).
pub fn set_up(iface: &str) -> io::Result<()> {
    let s = inet_socket()?;
    let mut r = IfReq::new(iface)?;
    ioctl(&s, libc::SIOCGIFFLAGS, &mut r as *mut _ as *mut libc::c_void)?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[0..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&s, libc::SIOCSIFFLAGS, &mut r as *mut _ as *mut libc::c_void)
}

/// The netmask for a prefix length.
pub fn prefix_to_mask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
}

pub fn mask_to_prefix(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// Assigns `ip/prefix` (replacing the previous address; the kernel adds the subnet route).
pub fn set_address(iface: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let s = inet_socket()?;
    let mut r = IfReq::new(iface)?;
    r.set_sockaddr(ip);
    ioctl(&s, libc::SIOCSIFADDR, &mut r as *mut _ as *mut libc::c_void)?;
    let mut r = IfReq::new(iface)?;
    r.set_sockaddr(prefix_to_mask(prefix));
    ioctl(&s, libc::SIOCSIFNETMASK, &mut r as *mut _ as *mut libc::c_void)
}

/// `struct rtentry` of x86_64 (linux/route.h).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: [u8; 16],
    rt_gateway: [u8; 16],
    rt_genmask: [u8; 16],
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// Adds a default route via `gateway` on `iface`; an existing identical route is fine.
pub fn add_default_route(iface: &str, gateway: Ipv4Addr, metric: i16) -> io::Result<()> {
    let s = inet_socket()?;
    let dev = crate::sys::cstr(iface)?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        // The kernel stores metric - 1 (route(8) convention).
        rt_metric: metric + 1,
        rt_dev: dev.as_ptr() as *mut libc::c_char,
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(&s, libc::SIOCADDRT, &mut rt as *mut _ as *mut libc::c_void) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_prefixes_round_trip() {
        assert_eq!(prefix_to_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_to_mask(32), Ipv4Addr::BROADCAST);
        for p in 0..=32 {
            assert_eq!(mask_to_prefix(prefix_to_mask(p)), p);
        }
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
