//! The ioctls planet-init makes, each with the argument type its request expects: block
//! devices (size, partition table), ext4 online resize, pseudo-terminals, and the classic
//! interface/route ioctls of `net::ifconfig`.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check;

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
/// `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// A block device's size in bytes (`BLKGETSIZE64`).
pub fn block_size_bytes(dev: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64, &mut size) })?;
    Ok(size)
}

/// A block device's logical sector size (`BLKSSZGET`).
pub fn block_sector_size(dev: BorrowedFd<'_>) -> io::Result<u64> {
    let mut ss: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), BLKSSZGET, &mut ss) })?;
    Ok(ss as u64)
}

/// Asks the kernel to re-read a disk's partition table (`BLKRRPART`).
pub fn reread_partitions(disk: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART, 0) })?;
    Ok(())
}

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Tells the kernel partition `partn` of `disk` now spans `length` bytes from `start`
/// (`BLKPG_RESIZE_PARTITION`; works while other partitions of the disk are in use).
pub fn resize_partition(disk: BorrowedFd<'_>, partn: u32, start: u64, length: u64) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: partn as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg points at a valid blkpg_ioctl_arg whose data lives through the call.
    check(unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg) })?;
    Ok(())
}

/// Grows the mounted ext4 filesystem whose directory `mounted` is open to `blocks` blocks.
pub fn resize_ext4(mounted: BorrowedFd<'_>, blocks: u64) -> io::Result<()> {
    let mut n: u64 = blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64.
    check(unsafe { libc::ioctl(mounted.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut n) })?;
    Ok(())
}

/// Sets a terminal's window size (`TIOCSWINSZ`); best effort.
pub fn set_window_size(tty: BorrowedFd<'_>, rows: u16, cols: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize.
    unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Unlocks a pty master's terminal (`TIOCSPTLCK` 0).
pub fn unlock_pty(master: BorrowedFd<'_>) -> io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    Ok(())
}

/// Opens a pty master's terminal (`TIOCGPTPEER`, Linux 4.13) read-write, not as controlling
/// terminal, close-on-exec.
pub fn open_pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new fd.
    let fd = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The number of a pty master's terminal, as in /dev/pts/N (`TIOCGPTN`).
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// `struct ifreq`: an interface name and a 24-byte union (flags or a sockaddr).
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

    fn with_address(iface: &str, ip: Ipv4Addr) -> io::Result<IfReq> {
        let mut r = IfReq::new(iface)?;
        r.data[..16].copy_from_slice(&sockaddr_in(ip));
        Ok(r)
    }

    /// Makes the interface request `req` on `sock`.
    fn ioctl(&mut self, sock: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<()> {
        // SAFETY: every SIOC[GS]IF* request reads or writes one struct ifreq.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), req, self as *mut IfReq) })?;
        Ok(())
    }
}

/// A `struct sockaddr_in` as 16 raw bytes (family, port 0, address, padding).
fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    s[4..8].copy_from_slice(&ip.octets());
    s
}

/// An interface's flags (`SIOCGIFFLAGS`).
pub fn interface_flags(sock: BorrowedFd<'_>, iface: &str) -> io::Result<i16> {
    let mut r = IfReq::new(iface)?;
    r.ioctl(sock, libc::SIOCGIFFLAGS)?;
    Ok(i16::from_ne_bytes([r.data[0], r.data[1]]))
}

/// Sets an interface's flags (`SIOCSIFFLAGS`).
pub fn set_interface_flags(sock: BorrowedFd<'_>, iface: &str, flags: i16) -> io::Result<()> {
    let mut r = IfReq::new(iface)?;
    r.data[0..2].copy_from_slice(&flags.to_ne_bytes());
    r.ioctl(sock, libc::SIOCSIFFLAGS)
}

/// Sets an interface's IPv4 address (`SIOCSIFADDR`).
pub fn set_interface_address(sock: BorrowedFd<'_>, iface: &str, ip: Ipv4Addr) -> io::Result<()> {
    IfReq::with_address(iface, ip)?.ioctl(sock, libc::SIOCSIFADDR)
}

/// Sets an interface's IPv4 netmask (`SIOCSIFNETMASK`).
pub fn set_interface_netmask(sock: BorrowedFd<'_>, iface: &str, mask: Ipv4Addr) -> io::Result<()> {
    IfReq::with_address(iface, mask)?.ioctl(sock, libc::SIOCSIFNETMASK)
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

/// Adds a default route via `gateway` on the interface `dev` (`SIOCADDRT`); `rt_metric` is
/// stored as given (the kernel keeps metric - 1, so callers pass metric + 1).
pub fn add_default_route(sock: BorrowedFd<'_>, dev: &CStr, gateway: Ipv4Addr, rt_metric: i16) -> io::Result<()> {
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric,
        // The kernel only reads the name.
        rt_dev: dev.as_ptr() as *mut libc::c_char,
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one rtentry; rt_dev points at a C string that outlives the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt as *mut RtEntry) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::size_of::<BlkpgPartition>(), 152);
    }
}
