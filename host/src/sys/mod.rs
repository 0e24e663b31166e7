//! The one place planet-init talks to the kernel directly. planet-init has no userspace
//! helpers at all, so it makes many raw system calls; they all go through the safe functions of
//! this module (each `unsafe` block says why it is sound), and the rest of the crate has no
//! `unsafe` code (`unsafe_code = "deny"` in the workspace, allowed only here).
//!
//! - [`fd`]: descriptors, pipes, `poll`, reads and writes on raw fds, `*at` file calls.
//! - [`process`]: fork/`clone3` + exec (the async-signal-safe child sides live here), waits,
//!   signals, namespaces.
//! - [`mount`]: mounts and filesystem space.
//! - [`ioctl`]: block-device, ext4, terminal and network-interface ioctls.
//! - [`net`]: sockets, and fds passed over them.
//! - [`system`]: machine-wide calls: reboot, hostname, kernel release, modules.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;

pub mod fd;
pub mod ioctl;
pub mod mount;
pub mod net;
pub mod process;
pub mod system;

pub use mount::{free_bytes, is_mountpoint, mount, umount};
pub use process::{describe_status, signal_name};
pub use system::{is_pid1, kernel_release, power_off, reboot, sethostname, sync};

/// A C string from a path or text; interior NULs (never valid in paths) become an error.
pub fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

/// Turns a `-1 + errno` return into an error.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`check`] for the `long` return of `syscall(2)`.
fn check_syscall(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`check`] for the byte counts of `read(2)` and `write(2)`.
fn check_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// The calling thread's errno (for code that must not allocate, between fork and exec).
fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}
