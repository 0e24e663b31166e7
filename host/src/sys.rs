//! Thin wrappers over the raw syscalls planet-init needs: it has no userspace helpers at all.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// `mount(2)`; `None` passes NULL.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings or NULL for the call's duration.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })?;
    Ok(())
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })?;
    Ok(())
}

/// Whether `path` is the root of a mount (its device differs from its parent's, or it is `/`).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(parent) = std::fs::metadata(path.join("..")) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: statvfs fills the zeroed struct; c is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })
        .map_err(|e| anyhow::anyhow!("statvfs {}: {e}", path.display()))?;
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Flushes all filesystems and restarts the machine (or, outside PID 1, just exits).
pub fn reboot() -> ! {
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        if is_pid1() {
            libc::reboot(libc::RB_AUTOBOOT);
        }
    }
    std::process::exit(1)
}

/// Whether this process is PID 1 (the real boot, as opposed to a test run on a workstation).
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The running kernel's release (`uname -r`), naming the module directory.
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    check(unsafe { libc::uname(&mut u) })?;
    // SAFETY: the kernel NUL-terminates release.
    let r = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Ok(r.to_string_lossy().into_owned())
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) })?;
    Ok(())
}

/// Flushes all filesystems and turns the machine off (or, outside PID 1, just exits).
pub fn power_off() -> ! {
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        if is_pid1() {
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
    std::process::exit(1)
}

/// Signal name for messages.
pub fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGPWR => "SIGPWR".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        s if s >= libc::SIGRTMIN() => format!("SIGRTMIN+{}", s - libc::SIGRTMIN()),
        s => format!("signal{s}"),
    }
}

/// Describes a `waitpid` status the way operators read it.
pub fn describe_status(status: libc::c_int) -> (&'static str, String) {
    if libc::WIFEXITED(status) {
        ("code", libc::WEXITSTATUS(status).to_string())
    } else if libc::WIFSIGNALED(status) {
        ("signal", signal_name(libc::WTERMSIG(status)))
    } else {
        ("status", status.to_string())
    }
}

/// `struct clone_args` of `clone3(2)` (the kernel's layout, version 2 with `cgroup`): used by
/// the launcher and by the enter helper. Unused fields stay zero (`..Default::default()`).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}
