//! Sockets: the IPv4 datagram sockets of DHCP and interface configuration, Unix socket pairs,
//! and messages that carry a file descriptor (`SCM_RIGHTS`).

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

/// An IPv4 datagram socket (close-on-exec).
pub fn inet_dgram_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the new fd is ours.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected pair of Unix sockets of `kind` (`SOCK_STREAM`, `SOCK_SEQPACKET`), close-on-exec.
pub fn socketpair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array it is given.
    check(unsafe { libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets an integer `SOL_SOCKET` option (`SO_REUSEADDR`, `SO_BROADCAST`, …).
pub fn set_socket_option(sock: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the value pointer and length describe one c_int that outlives the call.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Binds the socket to one network interface (`SO_BINDTODEVICE`).
pub fn bind_to_device(sock: BorrowedFd<'_>, iface: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the interface name's bytes.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Binds an IPv4 socket to `addr`.
pub fn bind_v4(sock: BorrowedFd<'_>, addr: SocketAddrV4) -> io::Result<()> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of the given length.
    check(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Room in a control buffer for one fd (`CMSG_SPACE(sizeof(int))` is 24 on 64-bit Linux).
const CONTROL_WORDS: usize = 8;

/// Sends `msg` as one message (`MSG_NOSIGNAL`), with `pass` attached as `SCM_RIGHTS`. Best
/// effort, like a report nobody may be listening to any more.
pub fn send_with_fd(sock: RawFd, msg: &[u8], pass: Option<RawFd>) {
    let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
    let mut cbuf = [0u64; CONTROL_WORDS];
    // SAFETY: msghdr is plain data (valid when zeroed); every pointer set in it refers to iov,
    // msg or cbuf, which outlive the call; the CMSG_* macros stay within cbuf, which has room
    // for one header and one fd (CMSG_SPACE of an int is at most 24 bytes of its 64).
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if let Some(pfd) = pass {
            m.msg_control = cbuf.as_mut_ptr().cast();
            m.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, pfd);
        }
        libc::sendmsg(sock, &m, libc::MSG_NOSIGNAL);
    }
}

/// Receives one message into `buf` without blocking (`MSG_DONTWAIT`; fds close-on-exec): its
/// length and the first fd passed with it (any others are closed). `Ok(None)` when nothing is
/// waiting.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<OwnedFd>)>> {
    let mut cbuf = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data, valid when zeroed.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg describes buf and cbuf, which outlive the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    let mut passed: Option<OwnedFd> = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf (the CMSG_* macros
    // bound every header by msg_controllen); each SCM_RIGHTS fd is new and ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if passed.is_none() {
                        passed = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some((n as usize, passed)))
}
