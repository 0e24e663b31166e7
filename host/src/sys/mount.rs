//! Mounting, unmounting and asking a filesystem how much room it has.

use std::io;
use std::path::Path;

use super::{check, cstr};

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
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })?;
    Ok(())
}

/// `umount2(2)`.
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

/// `statvfs(3)` of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: statvfs is plain data (integers), valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string; statvfs fills the struct it is given.
    check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    let st = statvfs(path).map_err(|e| anyhow::anyhow!("statvfs {}: {e}", path.display()))?;
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
