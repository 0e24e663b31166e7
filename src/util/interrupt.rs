//! SIGINT, SIGTERM and SIGHUP during `build`, `bundle`, `seed` and `publish`: the default action
//! kills the process without running a single `Drop`, which left multi-GB work directories,
//! `.partial` outputs and a pending EBS snapshot behind.
//!
//! [`install`] sets a handler that only records the signal and wakes a watcher thread. The
//! watcher removes every registered temporary path at once, stops registered child processes,
//! and gives the main thread [`GRACE`] to notice ([`interrupted`], [`check`]) and unwind (the
//! AWS publisher deletes its snapshot on that path); then it removes the paths again and exits
//! with 128 + the signal. A second signal ends the wait.

use anyhow::Result;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::sys;

/// How long the main thread may take to unwind after a signal.
pub const GRACE: Duration = Duration::from_secs(30);

/// Whether [`install`] ran: only then do the signals `sys` records mean an interruption.
static INSTALLED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static PATHS: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static CHILDREN: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());

/// The error the main thread returns once it notices the signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal; temporary files are removed")]
pub struct Interrupted;

/// Whether a signal came.
pub fn interrupted() -> bool {
    first_signal().is_some()
}

fn first_signal() -> Option<i32> {
    sys::first_caught().filter(|_| INSTALLED.load(Ordering::SeqCst))
}

/// `Err(Interrupted)` once a signal came: call between steps and in long loops.
pub fn check() -> Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// The exit status for the signal that came (130 for SIGINT), if one did.
pub fn exit_code() -> Option<i32> {
    first_signal().map(|s| 128 + s)
}

/// A temporary path (file or directory) removed on a signal until this is dropped.
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        let id = self.0;
        lock(&PATHS).retain(|(i, _)| *i != id);
        lock(&CHILDREN).retain(|(i, _)| *i != id);
    }
}

/// Removes `path` (recursively) if a signal comes while the result lives.
pub fn register_path(path: &Path) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    lock(&PATHS).push((id, path.to_path_buf()));
    Registered(id)
}

/// Sends SIGTERM to the child `pid` if a signal comes while the result lives (a `kill` aimed at
/// planet-image alone does not reach the tools it runs).
pub fn register_child(pid: u32) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    lock(&CHILDREN).push((id, pid));
    Registered(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every registered path now; best effort.
pub fn remove_registered() {
    let paths: Vec<PathBuf> = lock(&PATHS).iter().map(|(_, p)| p.clone()).collect();
    for p in paths {
        remove(&p);
    }
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Installs the handler and starts the watcher. Call once, before the work starts.
pub fn install() -> Result<()> {
    let (read_end, write_end) = sys::pipe()?;
    sys::wake_on_signal(write_end);
    INSTALLED.store(true, Ordering::SeqCst);
    std::thread::Builder::new().name("signals".into()).spawn(move || watch(read_end))?;
    sys::catch_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], true)?;
    Ok(())
}

/// Blocks until the pipe has a byte, or `timeout` passes; true when a byte came.
fn wait_byte(fd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let mut p = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    if sys::poll(&mut p, ms).ok() == Some(1) {
        let mut b = [0u8; 16];
        let _ = sys::read(fd.as_raw_fd(), &mut b);
        return true;
    }
    false
}

fn watch(fd: OwnedFd) {
    while !wait_byte(&fd, None) {}
    eprintln!("planet-image: interrupted; removing temporary files");
    remove_registered();
    let pids: Vec<u32> = lock(&CHILDREN).iter().map(|(_, p)| *p).collect();
    for pid in pids {
        // A child we started and have not reaped (it is unregistered first).
        let _ = sys::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    // The main thread exits by itself once it has unwound; a second signal or the grace
    // period ends the wait.
    let _ = wait_byte(&fd, Some(GRACE));
    remove_registered();
    std::process::exit(exit_code().unwrap_or(130));
}

#[cfg(test)]
mod tests {
    use super::*;

    // Other tests of this binary register their outputs too: only look at our own entries.
    fn is_registered(p: &Path) -> bool {
        lock(&PATHS).iter().any(|(_, q)| q == p)
    }

    #[test]
    fn paths_are_registered_until_dropped_and_removed_whatever_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("x")).unwrap();
        std::fs::write(&b, "b").unwrap();
        let ra = register_path(&a);
        let rb = register_path(&b);
        assert!(is_registered(&a) && is_registered(&b));
        drop(rb);
        assert!(!is_registered(&b));
        remove(&a);
        remove(&b);
        assert!(!a.exists() && !b.exists());
        drop(ra);
        assert!(!is_registered(&a));
    }
}
