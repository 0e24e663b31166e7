//! Machine-wide calls: flushing, rebooting, the hostname, the kernel release, loading modules.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{check, check_syscall};

/// Flushes all filesystems (`sync(2)`).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Flushes all filesystems and restarts the machine (or, outside PID 1, just exits).
pub fn reboot() -> ! {
    sync();
    if is_pid1() {
        // SAFETY: reboot with a plain command constant touches no memory of ours.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    }
    std::process::exit(1)
}

/// Flushes all filesystems and turns the machine off (or, outside PID 1, just exits).
pub fn power_off() -> ! {
    sync();
    if is_pid1() {
        // SAFETY: as in `reboot`.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
    }
    std::process::exit(1)
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() {
    // SAFETY: as in `reboot`.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

/// Whether this process is PID 1 (the real boot, as opposed to a test run on a workstation).
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The running kernel's release (`uname -r`), naming the module directory.
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain data (byte arrays), valid when zeroed.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    check(unsafe { libc::uname(&mut u) })?;
    // SAFETY: the kernel NUL-terminates release, which lives as long as `u`.
    let r = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Ok(r.to_string_lossy().into_owned())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Loads the kernel module in `file` without parameters (`finit_module(2)`).
pub fn finit_module(file: BorrowedFd<'_>) -> io::Result<()> {
    let params = c"";
    // SAFETY: a valid fd and a NUL-terminated parameter string for the call's duration.
    check_syscall(unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) })?;
    Ok(())
}

/// Sets the process's file creation mask; returns the previous one.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask only changes this process's mask and cannot fail.
    unsafe { libc::umask(mask) }
}
