//! File descriptors: pipes, duplicates, flags, `poll`, reads and writes on raw fds, and the
//! `*at` calls that work relative to a directory fd (so PID 1 never follows a path it does
//! not mean to).
//!
//! Functions taking a `RawFd` only read, write or query that descriptor: a stale number gives
//! an error (EBADF) or acts on whatever now has it, never unsafety in memory.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{check, check_len};

/// Wraps a descriptor the kernel just returned (or turns -1 into the error).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just created by the kernel for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec copy of `fd` numbered `min` or above (`F_DUPFD_CLOEXEC`).
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl duplicates an fd we borrow; the copy is new and ours.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and change the fd's status flags.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Marks `fd` close-on-exec.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD only changes the fd's flags.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Whether `fd` is an open descriptor.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Closes every descriptor from `first` up (`close_range(2)`, Linux 5.9; best effort). For a
/// freshly started process that owns none of them yet.
pub fn close_all_from(first: RawFd) {
    let Ok(first) = u32::try_from(first) else { return };
    // SAFETY: closes fds only; called at the start of a process before anything owns them.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
}

/// Opens `path` (the terminal device of the console) as fds 0, 1 and 2 when they are closed
/// (PID 1 started without /dev/console). Best effort.
pub fn console_onto_stdio(path: &CStr) {
    // SAFETY: opening a C string path; the fd is placed on 0-2 (which nothing owns: they were
    // closed) and closed again when it got another number.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            for target in 0..3 {
                if fd != target {
                    libc::dup2(fd, target);
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    check_len(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes from buf.
    check_len(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// `poll(2)` on `fds` for at most `timeout_ms`; the number with events (0 on timeout).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a valid slice of pollfd.
    let n = check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })?;
    Ok(n as usize)
}

/// Waits up to `timeout` for `events` on `fd`; the revents (0 on timeout or error).
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let mut p = [libc::pollfd { fd, events, revents: 0 }];
    match poll(&mut p, timeout.as_millis().min(i32::MAX as u128) as libc::c_int) {
        Ok(n) if n > 0 => p[0].revents,
        _ => 0,
    }
}

/// `open(2)` with O_CLOEXEC added.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string; the new fd is ours.
    owned(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `openat(2)` relative to `dir`, with O_CLOEXEC added; `mode` applies when creating.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: a valid directory fd and C string; the mode is the variadic argument; the new fd
    // is ours.
    owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid directory fd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid directory fd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    Ok(())
}

/// Renames `from` to `to`, both in `dir`.
pub fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: a valid directory fd and C strings.
    check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })?;
    Ok(())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: an fd we borrow.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}

/// Creates the character device node `path` with `mode` for `major:minor`.
pub fn mknod_char(path: &CStr, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    // SAFETY: a valid C string.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, libc::makedev(major, minor)) })?;
    Ok(())
}

/// Whether `path` is executable for this process (`access(X_OK)`).
pub fn is_executable(path: &CStr) -> bool {
    // SAFETY: a valid C string.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
}
