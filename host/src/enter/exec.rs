//! Running a command inside the Planet container: planet-init starts a helper — its own
//! binary again, `planet-init --exec-in-container PID MODE TERM -- ARGV…` — that joins the
//! namespaces, cgroup and root of the container's init and forks the command there.
//!
//! Why a helper process: PID 1 is multi-threaded, and entering a mount namespace needs a
//! single-threaded process; entering a pid namespace only places the caller's *children* in it.
//! Why `clone3` with no exit signal: the supervisor reaps every child with `waitpid(-1)`; a
//! child that sends no SIGCHLD is a "clone" child, which only `__WALL`/`__WCLONE` waits see, so
//! the helper's status stays with whoever started it (through a pidfd).
//!
//! The helper reports over a `SOCK_SEQPACKET` pair on its fd 3: `R` when the command runs
//! (with the pty master attached in tty mode), `E` + status + message when it cannot be run,
//! `X` + code + signal when it ended. It exits with the command's status (128+signal when a
//! signal killed it). SIGHUP to the helper hangs the command up (SIGHUP to its process group,
//! SIGKILL 3 s later); SIGTERM kills the group at once.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::launcher::Kind;
use crate::sys::fd::{self, pipe, poll_one, read as read_fd, set_nonblocking};
use crate::sys::process::{self, ExecArgs};
use crate::sys::{ioctl, net};

/// argv[1] that makes planet-init the helper instead of PID 1.
pub const HELPER_FLAG: &str = "--exec-in-container";
/// The helper's report channel.
const CONTROL_FD: RawFd = 3;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The container's file with KEY=VALUE lines for entered commands (a release ships
/// `KUBECONFIG=…` there).
pub const ENV_FILE: &str = "/etc/planet/enter.env";
const ENV_FILE_MAX: u64 = 64 * 1024;
const HANGUP_GRACE_SECS: u32 = 3;
/// Largest report message.
const CONTROL_MAX: usize = 2048;

/// Exit statuses for commands that could not run, as shells use them.
pub const STATUS_NOT_FOUND: u8 = 127;
pub const STATUS_CANNOT_EXECUTE: u8 = 126;
pub const STATUS_FAILED: u8 = 255;

/// The PID (in planet-init's namespace) of the Planet container's init, or why there is none.
///
/// The built-in launcher's container is its init. A release launcher starts its container
/// itself: its init is the launcher's closest descendant in another pid namespace.
pub fn container_init() -> std::result::Result<libc::pid_t, String> {
    const NOT_RUNNING: &str = "the Planet container is not running";
    let Some(c) = crate::launcher::current() else { return Err(NOT_RUNNING.into()) };
    match c.kind {
        Kind::Builtin => Ok(c.pid),
        Kind::Release => descendant_in_other_pidns(c.pid).ok_or_else(|| {
            format!("{NOT_RUNNING} yet: the Planet release launcher (pid {}) has not started it", c.pid)
        }),
    }
}

fn pidns_of(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| m.ino())
}

/// Breadth-first over /proc's parent links from `root`.
fn descendant_in_other_pidns(root: libc::pid_t) -> Option<libc::pid_t> {
    let ours = pidns_of("self")?;
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid …"; comm may contain anything, so split after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut level = vec![root];
    for _ in 0..64 {
        let mut next: Vec<libc::pid_t> = parents.iter().filter(|(_, pp)| level.contains(pp)).map(|(p, _)| *p).collect();
        next.sort_unstable();
        if let Some(p) = next.iter().find(|p| pidns_of(&p.to_string()).is_some_and(|ns| ns != ours)) {
            return Some(*p);
        }
        if next.is_empty() {
            return None;
        }
        level = next;
    }
    None
}

/// How the command's standard streams are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// Pipes: stdin, stdout and stderr handed back to the caller.
    Pipes,
    /// stdin from /dev/null, stdout a pipe, stderr discarded.
    Capture,
    /// A pseudo-terminal of the container's devpts with this window size (rows, cols); the
    /// master comes back with the `R` report.
    Tty(u16, u16),
}

/// A report from the helper.
#[derive(Debug)]
pub enum Report {
    Ready(Option<OwnedFd>),
    Error { status: u8, message: String },
    Exit { code: i32, signal: i32 },
}

/// A running helper. Dropping it kills and reaps it (and so the command, which dies with it).
pub struct Helper {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub control: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    reaped: Option<(i32, i32)>,
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new().read(!write).write(write).open("/dev/null")?;
    Ok(f.into())
}

impl Helper {
    /// Starts the helper for the container whose init is `pid`. `argv` empty: a login shell.
    pub fn spawn(pid: libc::pid_t, stdio: Stdio, term: &str, argv: &[Vec<u8>]) -> Result<Helper> {
        Helper::spawn_exe(c"/proc/self/exe", pid, stdio, term, argv)
    }

    /// [`Helper::spawn`] with another planet-init binary (tests).
    pub(crate) fn spawn_exe(
        exe: &std::ffi::CStr,
        pid: libc::pid_t,
        stdio: Stdio,
        term: &str,
        argv: &[Vec<u8>],
    ) -> Result<Helper> {
        let mode = match stdio {
            Stdio::Tty(rows, cols) => format!("tty={rows}x{cols}"),
            Stdio::Pipes | Stdio::Capture => "pipe".into(),
        };
        let mut args: Vec<CString> = vec![c"planet-init".into(), CString::new(HELPER_FLAG)?];
        args.push(CString::new(pid.to_string())?);
        args.push(CString::new(mode)?);
        args.push(CString::new(term).context("TERM contains a NUL byte")?);
        args.push(c"--".into());
        for a in argv {
            args.push(CString::new(a.clone()).context("an argument contains a NUL byte")?);
        }
        let exec_args = ExecArgs::new(args, Vec::new());

        let (control, theirs) =
            net::socketpair(libc::SOCK_SEQPACKET).context("creating the helper's report channel")?;

        // (the helper's fd 0, 1, 2; our ends)
        let (child_fds, stdin, stdout, stderr) = match stdio {
            Stdio::Pipes => {
                let (in_r, in_w) = pipe()?;
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                ([in_r, out_w, err_w], Some(in_w), Some(out_r), Some(err_r))
            }
            Stdio::Capture => {
                let (out_r, out_w) = pipe()?;
                ([dev_null(false)?, out_w, dev_null(true)?], None, Some(out_r), None)
            }
            Stdio::Tty(..) => ([dev_null(false)?, dev_null(true)?, dev_null(true)?], None, None, None),
        };
        let [c0, c1, c2] = child_fds;
        // Numbered 10 or above, so the child's dup2 onto 0-3 never collides.
        let high = |f: OwnedFd| fd::dup_at_least(f.as_fd(), 10);
        let child = [high(c0)?, high(c1)?, high(c2)?, high(theirs)?];
        let raw: [RawFd; 4] = [child[0].as_raw_fd(), child[1].as_raw_fd(), child[2].as_raw_fd(), child[3].as_raw_fd()];
        let (pid, pidfd) = process::spawn_clone_child(exe, &exec_args, raw).context("starting the helper (clone3)")?;
        drop(child);
        set_nonblocking(control.as_raw_fd())?;
        Ok(Helper { pid, pidfd, control, stdin, stdout, stderr, reaped: None })
    }

    /// The next report, if one is waiting; an `UnexpectedEof` error once the helper closed
    /// the channel (it exited).
    pub fn report(&self) -> io::Result<Option<Report>> {
        recv_report(self.control.as_raw_fd())
    }

    /// Sends `sig` to the helper (through its pidfd: never to a recycled pid).
    pub fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            let _ = process::pidfd_send_signal(self.pidfd.as_fd(), sig);
        }
    }

    /// Whether the helper has exited: (code, signal) as [`Report::Exit`] has them, from its
    /// wait status — or, when it cannot be waited for (the kernel may let another waiter of
    /// PID 1 take it), the failure status; callers prefer the helper's own `X` report.
    pub fn try_reap(&mut self) -> Option<(i32, i32)> {
        if self.reaped.is_none() {
            self.reaped = match process::waitid_pidfd(self.pidfd.as_fd(), libc::WNOHANG) {
                Ok(r) => r,
                // A pidfd polls readable once its process is gone, reaped or not.
                Err(_) if poll_one(self.pidfd.as_raw_fd(), libc::POLLIN, Duration::ZERO) != 0 => {
                    Some((STATUS_FAILED.into(), 0))
                }
                Err(_) => None,
            };
        }
        self.reaped
    }

    /// Stops the command: SIGHUP (hang-up, as when a terminal goes away) or SIGTERM (kill at
    /// once) to the helper, SIGKILL after `grace`, then reaps it.
    pub fn stop(&mut self, sig: libc::c_int, grace: Duration) -> (i32, i32) {
        if let Some(r) = self.try_reap() {
            return r;
        }
        self.signal(sig);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(r) = self.try_reap() {
                return r;
            }
            poll_one(self.pidfd.as_raw_fd(), libc::POLLIN, Duration::from_millis(100));
        }
        self.kill()
    }

    /// SIGKILL, then waits (at most a few seconds when it cannot be waited for).
    fn kill(&mut self) -> (i32, i32) {
        self.signal(libc::SIGKILL);
        let r = match process::waitid_pidfd(self.pidfd.as_fd(), 0) {
            Ok(Some(r)) => r,
            _ => {
                poll_one(self.pidfd.as_raw_fd(), libc::POLLIN, Duration::from_secs(5));
                (128 + libc::SIGKILL, libc::SIGKILL)
            }
        };
        self.reaped = Some(r);
        r
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.try_reap().is_none() {
            self.kill();
        }
    }
}

fn recv_report(fd: RawFd) -> io::Result<Option<Report>> {
    let mut buf = [0u8; CONTROL_MAX];
    let Some((n, passed)) = net::recv_with_fd(fd, &mut buf)? else { return Ok(None) };
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let msg = buf.get(..n).unwrap_or_default();
    let int = |at: usize| msg.get(at..at + 4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes);
    Ok(match msg.first() {
        None => None,
        Some(b'R') => Some(Report::Ready(passed)),
        Some(b'E') => Some(Report::Error {
            status: msg.get(1).copied().unwrap_or(STATUS_FAILED),
            message: String::from_utf8_lossy(msg.get(2..).unwrap_or_default()).into_owned(),
        }),
        Some(b'X') => Some(Report::Exit { code: int(1).unwrap_or(STATUS_FAILED.into()), signal: int(5).unwrap_or(0) }),
        Some(_) => Some(Report::Error { status: STATUS_FAILED, message: "the helper sent an unknown report".into() }),
    })
}

fn send_report(fd: RawFd, msg: &[u8], pass: Option<RawFd>) {
    net::send_with_fd(fd, msg.get(..msg.len().min(CONTROL_MAX)).unwrap_or_default(), pass);
}

/// Runs `argv` in the current Planet container with stdin from /dev/null and returns its exit
/// status (128+signal when a signal ended it) and its stdout (the first 1 MiB; stderr is
/// discarded). Errors when no container runs, the command cannot be started (not found, not
/// executable) or it has not finished within `timeout` — then it is killed, with its process
/// group and the helper. For callers inside planet-init, e.g. the update agent's health check.
pub fn run_in_container(argv: &[&str], timeout: Duration) -> Result<(i32, Vec<u8>)> {
    if argv.is_empty() {
        bail!("run_in_container: no command given");
    }
    let pid = container_init().map_err(anyhow::Error::msg)?;
    run_in(c"/proc/self/exe", pid, argv, timeout)
}

fn run_in(exe: &std::ffi::CStr, pid: libc::pid_t, argv: &[&str], timeout: Duration) -> Result<(i32, Vec<u8>)> {
    const MAX_OUTPUT: usize = 1024 * 1024;
    let Some(name) = argv.first() else { bail!("run_in_container: no command given") };
    let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
    let mut h = Helper::spawn_exe(exe, pid, Stdio::Capture, "dumb", &argv)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut stdout = h.stdout.take();
    if let Some(fd) = &stdout {
        set_nonblocking(fd.as_raw_fd())?;
    }
    let mut exit: Option<(i32, i32)> = None;
    let mut reported_exit: Option<(i32, i32)> = None;
    let mut error: Option<String> = None;
    let mut exited_at: Option<Instant> = None;
    let mut control_open = true;
    loop {
        while control_open {
            match h.report() {
                Ok(Some(Report::Error { message, .. })) => error = Some(message),
                Ok(Some(Report::Exit { code, signal })) => reported_exit = Some((code, signal)),
                Ok(Some(Report::Ready(_))) => {}
                Ok(None) => break,
                Err(_) => control_open = false,
            }
        }
        if exit.is_none() {
            exit = h.try_reap();
            if exit.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        // Done once the helper is gone and stdout is closed (or kept open by a background
        // process for a second).
        if let Some(at) = exited_at {
            if stdout.is_none() || at.elapsed() > Duration::from_secs(1) {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            h.stop(libc::SIGTERM, Duration::from_secs(2));
            bail!("`{name}` did not finish within {} s in the container; it was killed", timeout.as_secs());
        }
        let wait = (deadline - now).min(Duration::from_millis(250));
        let mut pfds = Vec::with_capacity(3);
        if exit.is_none() {
            pfds.push(libc::pollfd { fd: h.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if control_open {
            pfds.push(libc::pollfd { fd: h.control.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if let Some(fd) = &stdout {
            pfds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let _ = fd::poll(&mut pfds, wait.as_millis() as libc::c_int);
        if let Some(fd) = &stdout {
            let mut buf = [0u8; 16 * 1024];
            match read_fd(fd.as_raw_fd(), &mut buf) {
                Ok(0) => stdout = None,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(out.len()).min(n);
                    out.extend_from_slice(buf.get(..room).unwrap_or_default());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => stdout = None,
            }
        }
    }
    if let Some(message) = error {
        bail!("{message}");
    }
    let (code, _) = reported_exit.or(exit).unwrap_or((STATUS_FAILED.into(), 0));
    Ok((code, out))
}

// ---- The helper process --------------------------------------------------------------------

/// The signals the helper passes on to the command (see [`wait_child`]).
const HELPER_SIGNALS: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGALRM];

/// Why the helper could not run the command.
struct Failure {
    status: u8,
    message: String,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure { status: STATUS_FAILED, message: message.into() }
}

/// An errno's text without std's " (os error N)".
fn errno_text(e: &io::Error) -> String {
    let t = e.to_string();
    match t.find(" (os error") {
        Some(i) => t.get(..i).unwrap_or(&t).to_string(),
        None => t,
    }
}

fn os_fail(what: &str, e: &io::Error) -> Failure {
    fail(format!("{what}: {}", errno_text(e)))
}

/// Entry point of `planet-init --exec-in-container PID MODE TERM -- ARGV…`: returns the
/// process's exit status. Never prints: everything goes through the report channel.
pub fn helper_main(args: &[Vec<u8>]) -> i32 {
    // Our report fd close-on-exec so the command does not inherit it, and anything else
    // inherited by mistake closed (best effort; needs Linux 5.9).
    let _ = fd::set_cloexec(CONTROL_FD);
    fd::close_all_from(CONTROL_FD + 1);
    match helper(args) {
        Ok(status) => status,
        Err(f) => {
            let mut msg = vec![b'E', f.status];
            msg.extend_from_slice(f.message.as_bytes());
            send_report(CONTROL_FD, &msg, None);
            f.status.into()
        }
    }
}

struct HelperArgs {
    pid: libc::pid_t,
    tty: Option<(u16, u16)>,
    term: String,
    argv: Vec<Vec<u8>>,
}

fn parse_helper_args(args: &[Vec<u8>]) -> Option<HelperArgs> {
    let text = |i: usize| args.get(i).and_then(|a| std::str::from_utf8(a).ok());
    if text(1)? != HELPER_FLAG || text(5)? != "--" {
        return None;
    }
    let pid = text(2)?.parse().ok().filter(|p| *p > 0)?;
    let tty = match text(3)? {
        "pipe" => None,
        m => {
            let (r, c) = m.strip_prefix("tty=")?.split_once('x')?;
            Some((r.parse().ok()?, c.parse().ok()?))
        }
    };
    Some(HelperArgs { pid, tty, term: text(4)?.to_string(), argv: args.get(6..)?.to_vec() })
}

fn helper(args: &[Vec<u8>]) -> std::result::Result<i32, Failure> {
    let a = parse_helper_args(args).ok_or_else(|| fail("planet-init --exec-in-container: bad arguments"))?;
    // Recorded (without SA_RESTART, so waitpid below returns to look at them).
    let _ = process::catch_signals(&HELPER_SIGNALS);
    process::unblock_all_signals();
    let not_running = || fail("the Planet container is not running");
    // A pidfd pins the process: the files opened below belong to it if it is still alive after.
    let pidfd = process::pidfd_open(a.pid).map_err(|_| not_running())?;
    let proc = format!("/proc/{}", a.pid);
    if pidns_of("self") == pidns_of(&a.pid.to_string()) {
        return Err(fail(format!("process {} is not in a container (it shares planet-init's namespaces)", a.pid)));
    }
    let open = |p: String, flags: libc::c_int| -> std::result::Result<OwnedFd, Failure> {
        let c = crate::sys::cstr(&p).map_err(|_| fail("bad path"))?;
        fd::open(&c, flags).map_err(|e| os_fail(&format!("opening {p}"), &e))
    };
    let root = open(format!("{proc}/root"), libc::O_PATH | libc::O_DIRECTORY)?;
    // Mount last: once in it, /proc is the container's.
    let mut ns = Vec::new();
    for (name, flag) in [
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        ns.push((name, flag, open(format!("{proc}/ns/{name}"), libc::O_RDONLY)?));
    }
    join_cgroup(&proc);
    // Signal 0 only checks that the pinned process still exists.
    if process::pidfd_send_signal(pidfd.as_fd(), 0).is_err() {
        return Err(not_running());
    }
    for (name, flag, fd) in &ns {
        process::setns(fd.as_fd(), *flag)
            .map_err(|e| os_fail(&format!("entering the container's {name} namespace"), &e))?;
    }
    // The container's root, whether its init pivoted or chrooted into it.
    process::enter_root(root.as_fd()).map_err(|e| os_fail("entering the container's root", &e))?;
    drop(ns);
    drop(root);

    let env = environment(&a);
    let argv = if a.argv.is_empty() {
        let shell = if is_executable("/bin/bash") { "/bin/bash" } else { "/bin/sh" };
        vec![shell.as_bytes().to_vec(), b"-l".to_vec()]
    } else {
        a.argv.clone()
    };
    let name = String::from_utf8_lossy(argv.first().map(Vec::as_slice).unwrap_or_default()).into_owned();
    let candidates = candidates(argv.first().map(Vec::as_slice).unwrap_or_default(), &env);
    if candidates.is_empty() {
        return Err(Failure {
            status: STATUS_NOT_FOUND,
            message: format!("{name}: command not found in the container"),
        });
    }
    let cstrings = |v: &[Vec<u8>]| -> std::result::Result<Vec<CString>, Failure> {
        v.iter().map(|s| CString::new(s.clone()).map_err(|_| fail("NUL byte in an argument"))).collect()
    };
    let exec_args = ExecArgs::new(cstrings(&argv)?, cstrings(&env)?);
    let cwd: &std::ffi::CStr = if Path::new("/root").is_dir() { c"/root" } else { c"/" };

    let pty = match a.tty {
        Some((rows, cols)) => Some(open_pty(rows, cols)?),
        None => None,
    };
    let (err_r, err_w) = pipe().map_err(|e| fail(format!("creating a pipe: {e}")))?;

    // This process is single-threaded.
    let setup = process::CommandSetup {
        tty: pty.as_ref().map(|(_, slave)| slave.as_fd()),
        default_signals: &[libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGALRM, libc::SIGPIPE],
        cwd,
        candidates: &candidates,
        error_pipe: err_w.as_fd(),
    };
    let child = process::fork_command(&setup, &exec_args).map_err(|e| os_fail("forking the command", &e))?;
    drop(err_w);
    let master = pty.map(|(m, _slave)| m);
    let mut b = [0u8; 4];
    let n = loop {
        match read_fd(err_r.as_raw_fd(), &mut b) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r.unwrap_or(0),
        }
    };
    if n == 4 {
        let errno = i32::from_ne_bytes(b);
        let _ = wait_child(child);
        return Err(if errno == libc::ENOENT && !name.contains('/') {
            Failure { status: STATUS_NOT_FOUND, message: format!("{name}: command not found in the container") }
        } else {
            Failure {
                status: if errno == libc::ENOENT { STATUS_NOT_FOUND } else { STATUS_CANNOT_EXECUTE },
                message: format!(
                    "cannot run {name} in the container: {}",
                    errno_text(&io::Error::from_raw_os_error(errno))
                ),
            }
        });
    }
    send_report(CONTROL_FD, b"R", master.as_ref().map(|m| m.as_raw_fd()));
    drop(master);
    let (code, signal) = wait_child(child);
    let mut msg = vec![b'X'];
    msg.extend_from_slice(&code.to_be_bytes());
    msg.extend_from_slice(&signal.to_be_bytes());
    send_report(CONTROL_FD, &msg, None);
    Ok(code)
}

/// Waits for the command, passing hang-ups and terminations on to its process group.
fn wait_child(child: libc::pid_t) -> (i32, i32) {
    let mut hung_up = false;
    loop {
        let terminate = process::take_caught(libc::SIGTERM) | process::take_caught(libc::SIGINT);
        if terminate || process::take_caught(libc::SIGALRM) {
            // The command's process group and the command.
            let _ = process::kill(-child, libc::SIGKILL);
            let _ = process::kill(child, libc::SIGKILL);
        }
        if process::take_caught(libc::SIGHUP) && !hung_up {
            hung_up = true;
            let _ = process::kill(-child, libc::SIGHUP);
            let _ = process::kill(-child, libc::SIGCONT);
            // Makes sure a command ignoring SIGHUP still ends.
            process::alarm(HANGUP_GRACE_SECS);
        }
        match process::waitpid(child, 0) {
            Ok((pid, status)) if pid == child => {
                return if libc::WIFSIGNALED(status) {
                    (128 + libc::WTERMSIG(status), libc::WTERMSIG(status))
                } else {
                    (libc::WEXITSTATUS(status), 0)
                };
            }
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return (STATUS_FAILED.into(), 0),
            _ => {}
        }
    }
}

/// Joins the cgroup of the container's init, so the command counts against the container's
/// resources and shows in its cgroup tree. Best effort: a cgroup with controllers enabled for
/// its children takes no processes.
fn join_cgroup(proc: &str) {
    let Ok(text) = std::fs::read_to_string(format!("{proc}/cgroup")) else { return };
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return };
    let procs = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("cgroup.procs");
    let _ = std::fs::write(procs, format!("{}\n", process::getpid()));
}

/// The command's environment: a clean, fixed base, then the container's enter.env.
fn environment(a: &HelperArgs) -> Vec<Vec<u8>> {
    let term = match (&a.tty, a.term.is_empty()) {
        (_, false) => a.term.clone(),
        (Some(_), true) => "xterm".into(),
        (None, true) => "dumb".into(),
    };
    let mut vars: Vec<(String, Vec<u8>)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), b"/root".to_vec()),
        ("USER".into(), b"root".to_vec()),
        ("LOGNAME".into(), b"root".to_vec()),
        ("TERM".into(), term.into_bytes()),
        ("container".into(), b"planet".to_vec()),
    ];
    if let Ok(text) = read_limited(Path::new(ENV_FILE), ENV_FILE_MAX) {
        for (k, v) in parse_env_file(&text) {
            match vars.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => vars.push((k, v)),
            }
        }
    }
    vars.into_iter()
        .map(|(k, v)| {
            let mut e = k.into_bytes();
            e.push(b'=');
            e.extend_from_slice(&v);
            e
        })
        .collect()
}

fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut v)?;
    Ok(v)
}

/// `KEY=VALUE` lines (`export ` allowed, `#` comments, one pair of surrounding quotes
/// removed); lines that are not such an assignment are skipped. At most 256 variables.
pub fn parse_env_file(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line).trim_ascii();
        let line = line.strip_prefix(b"export ").map(<[u8]>::trim_ascii).unwrap_or(line);
        if line.is_empty() || line.starts_with(b"#") || line.contains(&0) {
            continue;
        }
        let Some(eq) = line.iter().position(|b| *b == b'=') else { continue };
        let (Some(key), Some(value)) = (line.get(..eq), line.get(eq + 1..)) else { continue };
        let valid = key.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && key.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !valid {
            continue;
        }
        let value = match (value.first(), value.last()) {
            (Some(b'"'), Some(b'"')) | (Some(b'\''), Some(b'\'')) if value.len() >= 2 => {
                value.get(1..value.len() - 1).unwrap_or_default()
            }
            _ => value,
        };
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
        if out.len() >= 256 {
            break;
        }
    }
    out
}

fn is_executable(p: &str) -> bool {
    CString::new(p).is_ok_and(|c| fd::is_executable(&c))
}

/// Where execve looks for `name`: itself when it has a slash, else each PATH directory (from
/// the command's environment), as execvp does.
fn candidates(name: &[u8], env: &[Vec<u8>]) -> Vec<CString> {
    if name.is_empty() {
        return Vec::new();
    }
    if name.contains(&b'/') {
        return CString::new(name.to_vec()).into_iter().collect();
    }
    let path = env.iter().rev().find_map(|e| e.strip_prefix(b"PATH=")).unwrap_or(PATH.as_bytes());
    path.split(|b| *b == b':')
        .map(|dir| if dir.is_empty() { b".".as_slice() } else { dir })
        .filter_map(|dir| {
            let mut p = dir.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            CString::new(p).ok()
        })
        .collect()
}

/// A pseudo-terminal from the container's /dev/ptmx (its own devpts instance): (master, slave).
fn open_pty(rows: u16, cols: u16) -> std::result::Result<(OwnedFd, OwnedFd), Failure> {
    let flags = libc::O_RDWR | libc::O_NOCTTY;
    let master = fd::open(c"/dev/ptmx", flags).map_err(|e| os_fail("opening the container's /dev/ptmx", &e))?;
    ioctl::unlock_pty(master.as_fd()).map_err(|e| os_fail("unlocking the pty", &e))?;
    if rows > 0 && cols > 0 {
        ioctl::set_window_size(master.as_fd(), rows, cols);
    }
    let slave = match ioctl::open_pty_peer(master.as_fd()) {
        Ok(s) => s,
        Err(_) => {
            // Before Linux 4.13: by name.
            let n = ioctl::pty_number(master.as_fd()).map_err(|e| os_fail("finding the pty's number", &e))?;
            let path = CString::new(format!("/dev/pts/{n}")).map_err(|_| fail("bad pty path"))?;
            fd::open(&path, flags).map_err(|e| os_fail("opening the pty's terminal", &e))?
        }
    };
    Ok((master, slave))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_arguments_parse_and_refuse_garbage() {
        let args = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let a = parse_helper_args(&args(&["planet-init", HELPER_FLAG, "42", "tty=24x80", "xterm", "--", "ls", "-l"]))
            .unwrap();
        assert_eq!((a.pid, a.tty, a.term.as_str()), (42, Some((24, 80)), "xterm"));
        assert_eq!(a.argv, args(&["ls", "-l"]));
        let a = parse_helper_args(&args(&["planet-init", HELPER_FLAG, "7", "pipe", "", "--"])).unwrap();
        assert_eq!((a.tty, a.argv.len()), (None, 0));
        for bad in [
            &["planet-init", HELPER_FLAG, "0", "pipe", "", "--"][..],
            &["planet-init", HELPER_FLAG, "x", "pipe", "", "--"],
            &["planet-init", HELPER_FLAG, "7", "tty=24", "", "--"],
            &["planet-init", HELPER_FLAG, "7", "pipe", ""],
            &["planet-init", "--other", "7", "pipe", "", "--"],
        ] {
            assert!(parse_helper_args(&args(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn env_file_lines() {
        let text = b"# comment\nKUBECONFIG=/etc/kubernetes/admin.conf\r\nexport A_1=\"quoted value\"\n\
            B='x'\n1BAD=no\nbad-key=no\nnoequals\n  SPACED = no\nEMPTY=\n";
        let got = parse_env_file(text);
        let got: Vec<(String, String)> = got.into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect();
        let want = [("KUBECONFIG", "/etc/kubernetes/admin.conf"), ("A_1", "quoted value"), ("B", "x"), ("EMPTY", "")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(parse_env_file(&b"A=1\n".repeat(1000)).len(), 256);
    }

    #[test]
    fn the_environment_is_clean_and_enter_env_overrides_it() {
        let a = HelperArgs { pid: 1, tty: Some((1, 1)), term: String::new(), argv: vec![] };
        let env = environment(&a);
        assert!(env.contains(&b"TERM=xterm".to_vec()));
        assert!(env.contains(&b"container=planet".to_vec()));
        assert!(env.contains(&b"HOME=/root".to_vec()));
        let a = HelperArgs { tty: None, ..a };
        assert!(environment(&a).contains(&b"TERM=dumb".to_vec()));
    }

    #[test]
    fn commands_are_looked_up_in_path() {
        let env = vec![b"PATH=/a::/b".to_vec()];
        let c: Vec<String> = candidates(b"ls", &env).into_iter().map(|c| c.into_string().unwrap()).collect();
        assert_eq!(c, ["/a/ls", "./ls", "/b/ls"]);
        assert_eq!(candidates(b"./x", &env), [c"./x".to_owned()]);
        assert!(candidates(b"", &env).is_empty());
    }

    /// run_in_container with the planet-init that scripts/test builds (PLANET_INIT) and an
    /// unshare'd stand-in for the container; needs root. Skipped otherwise.
    #[test]
    fn run_in_container_captures_stdout_and_kills_what_overstays() {
        use test_support::cmdlines_in_pidns_of;
        let Some((exe, _container, pid)) = test_support::setup() else { return };
        let t = Duration::from_secs(20);
        assert_eq!(run_in(&exe, pid, &["hostname"], t).unwrap(), (0, b"fake-container\n".to_vec()));
        assert_eq!(run_in(&exe, pid, &["cat", "/proc/1/comm"], t).unwrap(), (0, b"sleep\n".to_vec()));
        assert_eq!(
            run_in(&exe, pid, &["sh", "-c", "echo out; echo err >&2; exit 3"], t).unwrap(),
            (3, b"out\n".to_vec())
        );
        assert_eq!(run_in(&exe, pid, &["sh", "-c", "kill -9 $$"], t).unwrap().0, 128 + 9);
        let e = run_in(&exe, pid, &["no-such-command"], t).unwrap_err().to_string();
        assert_eq!(e, "no-such-command: command not found in the container");
        // A background process holding stdout does not hold the caller for long.
        let started = Instant::now();
        assert_eq!(run_in(&exe, pid, &["sh", "-c", "echo a; sleep 30 &"], t).unwrap(), (0, b"a\n".to_vec()));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // The timeout kills the command's whole process group.
        let started = Instant::now();
        let e = run_in(&exe, pid, &["sh", "-c", "sleep 31 & sleep 32"], Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("did not finish within 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        let left = cmdlines_in_pidns_of(pid);
        // The background `sleep 30` of the earlier call still runs; the timed-out ones do not.
        assert!(left.iter().any(|c| c.starts_with("sleep 30")), "{left:?}");
        assert!(!left.iter().any(|c| c.starts_with("sleep 31") || c.starts_with("sleep 32")), "{left:?}");
    }

    #[test]
    fn reports_round_trip_with_a_passed_fd() {
        let (a, b) = net::socketpair(libc::SOCK_SEQPACKET).unwrap();
        let null = dev_null(false).unwrap();
        send_report(a.as_raw_fd(), b"R", Some(null.as_raw_fd()));
        send_report(a.as_raw_fd(), b"E\x7fno such thing", None);
        send_report(a.as_raw_fd(), &[b'X', 0, 0, 0, 137, 0, 0, 0, 9], None);
        send_report(a.as_raw_fd(), b"X\x01", None);
        match recv_report(b.as_raw_fd()).unwrap() {
            // A live descriptor of its own (its number depends on what else the process has open).
            Some(Report::Ready(Some(fd))) => {
                assert_ne!(fd.as_raw_fd(), null.as_raw_fd());
                assert!(fd::is_open(fd.as_raw_fd()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            recv_report(b.as_raw_fd()).unwrap(),
            Some(Report::Error { status: 127, ref message }) if message == "no such thing"
        ));
        assert!(matches!(recv_report(b.as_raw_fd()).unwrap(), Some(Report::Exit { code: 137, signal: 9 })));
        // Truncated: defaults, no panic.
        assert!(matches!(recv_report(b.as_raw_fd()).unwrap(), Some(Report::Exit { code: 255, signal: 0 })));
        assert!(recv_report(b.as_raw_fd()).unwrap().is_none());
        drop(a);
        assert_eq!(recv_report(b.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}

/// A stand-in container and this tree's planet-init for tests that run real helpers.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A throw-away "container": `unshare` with the namespaces the built-in launcher makes,
    /// running `sleep` as its init. Killed when dropped.
    pub(crate) struct FakeContainer(std::process::Child);

    impl FakeContainer {
        fn start() -> Option<(FakeContainer, libc::pid_t)> {
            let child = std::process::Command::new("unshare")
                .args(["--pid", "--mount", "--uts", "--ipc", "--cgroup", "--fork", "--kill-child", "--mount-proc"])
                .args(["sh", "-c", "hostname fake-container && exec sleep 120"])
                .spawn()
                .ok()?;
            let c = FakeContainer(child);
            let children = format!("/proc/{}/task/{}/children", c.0.id(), c.0.id());
            for _ in 0..100 {
                let init = std::fs::read_to_string(&children).ok().and_then(|t| t.trim().parse().ok());
                if let Some(pid) = init {
                    // Until it has exec'd sleep, hostname may not have run yet.
                    if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
                        return Some((c, pid));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        }
    }

    impl Drop for FakeContainer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Command lines of the processes in `pid`'s pid namespace other than it (zombies have none).
    pub(crate) fn cmdlines_in_pidns_of(pid: libc::pid_t) -> Vec<String> {
        let ns = pidns_of(&pid.to_string());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()))
            .filter(|p| *p != pid && pidns_of(&p.to_string()) == ns)
            .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
            .filter(|c| !c.is_empty())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .collect()
    }

    /// PLANET_INIT as a C string, a stand-in container and its init's pid; `None` (with a
    /// note) without PLANET_INIT, root or unshare.
    pub(crate) fn setup() -> Option<(CString, FakeContainer, libc::pid_t)> {
        let Some(exe) = std::env::var_os("PLANET_INIT") else {
            eprintln!("skipped: PLANET_INIT (the planet-init binary of this tree) is not set");
            return None;
        };
        if !crate::sys::system::is_root() {
            eprintln!("skipped: entering namespaces needs root");
            return None;
        }
        let Some((container, pid)) = FakeContainer::start() else {
            eprintln!("skipped: unshare could not make a container here");
            return None;
        };
        let exe = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(exe.as_os_str())).ok()?;
        Some((exe, container, pid))
    }
}
