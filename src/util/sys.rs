//! The one place planet-image makes system calls that std does not wrap: signals, terminals,
//! `poll`, file locks, extended attributes, sparse-file seeks and the KVM probe. Each is a safe
//! function returning `io::Result` (each `unsafe` block says why it is sound); the rest of the
//! crate, and its tests, have no `unsafe` code (`unsafe_code = "deny"` in the workspace,
//! allowed only here).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Turns a `-1 + errno` return into an error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`check`] for the byte counts of `read(2)` and the xattr calls.
fn check_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Wraps a descriptor the kernel just returned (or turns -1 into the error).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just created by the kernel for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---- Processes and signals -----------------------------------------------------------------

pub fn getuid() -> libc::uid_t {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Sends `sig` to `pid` (negative: its process group).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill touches no memory of ours.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Sets the process's file creation mask; returns the previous one.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only changes this process's mask and cannot fail.
    unsafe { libc::umask(mask) }
}

/// Makes `cmd`'s child start with the file creation mask `mask`.
pub fn umask_on_exec(cmd: &mut std::process::Command, mask: libc::mode_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls umask, which is async-signal-safe, as required between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// Makes `cmd`'s child run at `niceness` (`setpriority`); spawning fails if it cannot.
pub fn niceness_on_exec(cmd: &mut std::process::Command, niceness: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls setpriority and reads errno, both async-signal-safe, as
    // required between fork and exec.
    unsafe {
        cmd.pre_exec(move || match libc::setpriority(libc::PRIO_PROCESS, 0, niceness) {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        });
    }
}

/// Signals seen by the handler of [`catch_signals`], by number.
static CAUGHT: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];
/// The first signal the handler saw (0: none yet).
static FIRST_CAUGHT: AtomicI32 = AtomicI32::new(0);
/// A pipe's write end the handler writes a byte to (-1: none); see [`wake_on_signal`].
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn record_signal(sig: libc::c_int) {
    // Async-signal-safe only: atomics and write(2).
    let _ = FIRST_CAUGHT.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    if let Some(flag) = usize::try_from(sig).ok().and_then(|s| CAUGHT.get(s)) {
        flag.store(true, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: writing one byte from the stack.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs a handler for `signals` that only records their arrival ([`take_caught`],
/// [`caught`], [`first_caught`]) and wakes the pipe of [`wake_on_signal`]. `restart`: calls
/// interrupted by these signals restart (SA_RESTART) instead of failing with EINTR.
pub fn catch_signals(signals: &[libc::c_int], restart: bool) -> io::Result<()> {
    // SAFETY: sigaction is plain data, valid when zeroed (no flags, empty mask on Linux).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = record_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    if restart {
        sa.sa_flags = libc::SA_RESTART;
    }
    // SAFETY: sigemptyset writes the mask we own.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    for s in signals {
        // SAFETY: the handler is async-signal-safe (atomics and write(2)) and lives forever.
        check(unsafe { libc::sigaction(*s, &sa, std::ptr::null_mut()) })?;
    }
    Ok(())
}

/// Makes the handler of [`catch_signals`] write a byte to `pipe` (kept open for the rest of
/// the process) on every signal.
pub fn wake_on_signal(pipe: OwnedFd) {
    use std::os::fd::IntoRawFd;
    WAKE_FD.store(pipe.into_raw_fd(), Ordering::SeqCst);
}

/// Whether `sig` arrived since the last call.
pub fn take_caught(sig: libc::c_int) -> bool {
    usize::try_from(sig).ok().and_then(|s| CAUGHT.get(s)).is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// Whether `sig` has arrived (not cleared).
pub fn caught(sig: libc::c_int) -> bool {
    usize::try_from(sig).ok().and_then(|s| CAUGHT.get(s)).is_some_and(|f| f.load(Ordering::SeqCst))
}

/// The first signal caught, if any.
pub fn first_caught() -> Option<libc::c_int> {
    Some(FIRST_CAUGHT.load(Ordering::SeqCst)).filter(|s| *s != 0)
}

// ---- Descriptors ---------------------------------------------------------------------------

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `poll(2)` on `fds` for at most `timeout_ms` (-1: no limit); the number with events.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a valid slice of pollfd.
    let n = check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })?;
    Ok(n as usize)
}

/// `read(2)` on a raw fd (stdin, a pipe) into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    check_len(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Shuts down the sending side of the socket on `fd`.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown touches no memory of ours.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

/// `flock(2)` without blocking (`LOCK_NB` is added).
pub fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a file we hold open.
    check(unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) })?;
    Ok(())
}

/// The next offset at or after `pos` holding data (`SEEK_DATA`).
pub fn seek_data(file: &File, pos: u64) -> io::Result<u64> {
    seek(file, pos, libc::SEEK_DATA)
}

/// The next hole at or after `pos` (`SEEK_HOLE`; the end of the file counts as one).
pub fn seek_hole(file: &File, pos: u64) -> io::Result<u64> {
    seek(file, pos, libc::SEEK_HOLE)
}

fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<u64> {
    let pos = libc::off_t::try_from(pos).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on a file we hold open touches no memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos, whence) };
    u64::try_from(r).map_err(|_| io::Error::last_os_error())
}

// ---- Files ---------------------------------------------------------------------------------

/// The names of `path`'s extended attributes (not following a symlink), NUL-separated, into
/// `buf`; an empty `buf` asks for the length needed.
pub fn llistxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
    // SAFETY: a valid C string; the kernel writes at most buf.len() bytes into buf.
    check_len(unsafe { libc::llistxattr(path.as_ptr(), ptr, buf.len()) })
}

/// The value of `path`'s extended attribute `name` (not following a symlink) into `buf`; an
/// empty `buf` asks for the length needed.
pub fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
    // SAFETY: valid C strings; the kernel writes at most buf.len() bytes into buf.
    check_len(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) })
}

pub fn mkfifo(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid C string.
    check(unsafe { libc::mkfifo(path.as_ptr(), mode) })?;
    Ok(())
}

// ---- Terminals -----------------------------------------------------------------------------

pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal's settings (`tcgetattr`).
pub fn terminal_settings(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data, valid when zeroed.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills the struct it is given.
    check(unsafe { libc::tcgetattr(fd, &mut t) })?;
    Ok(t)
}

/// Applies `t` once pending output is written (`tcsetattr(TCSADRAIN)`).
pub fn set_terminal_settings(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr reads the struct it is given.
    check(unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, t) })?;
    Ok(())
}

/// `t` changed to raw mode (`cfmakeraw`).
pub fn raw_mode(mut t: libc::termios) -> libc::termios {
    // SAFETY: cfmakeraw only changes the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    t
}

/// A terminal's window size (rows, columns), `TIOCGWINSZ`.
pub fn window_size(fd: RawFd) -> io::Result<(u16, u16)> {
    // SAFETY: winsize is plain data, valid when zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_row, ws.ws_col))
}

// ---- KVM -----------------------------------------------------------------------------------

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;

/// The KVM API version of /dev/kvm (12 on every kernel since 2.6.22).
pub fn kvm_api_version(kvm: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: KVM_GET_API_VERSION takes no argument.
    check(unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) })
}

/// A new, empty VM (`KVM_CREATE_VM`, default machine type).
pub fn kvm_create_vm(kvm: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: KVM_CREATE_VM takes the machine type as an integer and returns a new fd.
    owned(unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) })
}

/// vCPU 0 of `vm` (`KVM_CREATE_VCPU`).
pub fn kvm_create_vcpu(vm: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: KVM_CREATE_VCPU takes the vCPU id as an integer and returns a new fd.
    owned(unsafe { libc::ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_caught_signal_is_recorded_until_taken() {
        // SIGUSR2: no other test of this binary uses it (and interrupt ignores signals until
        // its install() ran, which no test does).
        catch_signals(&[libc::SIGUSR2], false).unwrap();
        assert!(!caught(libc::SIGUSR2));
        kill(std::process::id() as libc::pid_t, libc::SIGUSR2).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !caught(libc::SIGUSR2) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(take_caught(libc::SIGUSR2));
        assert!(!take_caught(libc::SIGUSR2));
        assert!(first_caught().is_some());
        assert!(!take_caught(1000), "out of range: never caught, no panic");
    }

    #[test]
    fn xattr_lengths_are_asked_with_an_empty_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        match llistxattr(&c, &mut []) {
            Ok(n) => {
                let mut names = vec![0u8; n];
                assert_eq!(llistxattr(&c, &mut names).unwrap(), n);
            }
            // tmpfs without xattr support.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP)),
        }
        let missing = std::ffi::CString::new(tmp.path().join("missing").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(llistxattr(&missing, &mut []).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
