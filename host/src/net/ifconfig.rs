//! Interface configuration through the classic socket ioctls (SIOCSIFFLAGS, SIOCSIFADDR,
//! SIOCSIFNETMASK, SIOCADDRT): enough for one IPv4 address and a default route per NIC, with
//! far less code than rtnetlink.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use crate::sys::ioctl;
use crate::sys::net::inet_dgram_socket;

/// Sets IFF_UP on an interface (for `lo` this also gives it 127.0.0.1).
pub fn set_up(iface: &str) -> io::Result<()> {
    let s = inet_dgram_socket()?;
    let flags = ioctl::interface_flags(s.as_fd(), iface)? | libc::IFF_UP as i16;
    ioctl::set_interface_flags(s.as_fd(), iface, flags)
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
    let s = inet_dgram_socket()?;
    ioctl::set_interface_address(s.as_fd(), iface, ip)?;
    ioctl::set_interface_netmask(s.as_fd(), iface, prefix_to_mask(prefix))
}

/// Adds a default route via `gateway` on `iface`; an existing identical route is fine.
pub fn add_default_route(iface: &str, gateway: Ipv4Addr, metric: i16) -> io::Result<()> {
    let s = inet_dgram_socket()?;
    let dev = crate::sys::cstr(iface)?;
    // The kernel stores metric - 1 (route(8) convention).
    match ioctl::add_default_route(s.as_fd(), &dev, gateway, metric + 1) {
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
    }
}
