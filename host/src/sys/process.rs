//! Processes: starting them (`clone3`/`fork` + `execve`), waiting for them, signals, pidfds
//! and namespaces.
//!
//! The child side of every fork and clone lives here, because it runs in a copy of a possibly
//! multi-threaded process where only async-signal-safe calls are sound: it makes raw system
//! calls on data prepared before the fork (C strings, pointer arrays) and ends in `execve` or
//! `_exit`, never allocating, locking or unwinding.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check, check_syscall, errno};

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

// ---- Signals -------------------------------------------------------------------------------

/// A signal set holding `signals`.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

/// Blocks `set` in the calling thread (threads started afterwards inherit the mask).
pub fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: a valid sigset; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Unblocks every signal in the calling thread. Async-signal-safe.
pub fn unblock_all_signals() {
    let empty = sigset(&[]);
    // SAFETY: a valid, empty sigset; the old mask is not asked for.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
}

/// A non-blocking, close-on-exec signalfd for `set` (which the caller blocks).
pub fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: a valid sigset; the new fd is ours.
    let fd = check(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd`'s child start with no signal blocked: PID 1 blocks the signals it reads from
/// its signalfd, and std's spawn passes the mask on.
pub fn unblock_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls sigprocmask (async-signal-safe) on a set built on the
    // stack, as required between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            unblock_all_signals();
            Ok(())
        });
    }
}

/// Signals seen by the handler of [`catch_signals`], by number.
static CAUGHT: [AtomicBool; 65] = [const { AtomicBool::new(false) }; 65];

extern "C" fn record_signal(sig: libc::c_int) {
    if let Some(flag) = usize::try_from(sig).ok().and_then(|s| CAUGHT.get(s)) {
        flag.store(true, Ordering::SeqCst);
    }
}

/// Installs a handler for `signals` that only records their arrival (see [`take_caught`]).
/// Without SA_RESTART: a blocking call such as `waitpid` returns EINTR so its caller can look.
pub fn catch_signals(signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: sigaction is plain data, valid when zeroed (no flags, empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = record_signal as *const () as libc::sighandler_t;
    for s in signals {
        // SAFETY: the handler is async-signal-safe (one atomic store) and lives forever.
        check(unsafe { libc::sigaction(*s, &sa, std::ptr::null_mut()) })?;
    }
    Ok(())
}

/// Whether `sig` arrived since the last call (for signals given to [`catch_signals`]).
pub fn take_caught(sig: libc::c_int) -> bool {
    usize::try_from(sig).ok().and_then(|s| CAUGHT.get(s)).is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// Sends `sig` to `pid` (`kill(2)`: negative for a process group, -1 for every process).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill touches no memory of ours.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Schedules SIGALRM in `secs` seconds.
pub fn alarm(secs: u32) {
    // SAFETY: alarm touches no memory of ours.
    unsafe { libc::alarm(secs) };
}

pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sends `sig` to one thread (`tgkill(2)`).
pub fn tgkill(pid: libc::pid_t, tid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill touches no memory of ours.
    check_syscall(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) })?;
    Ok(())
}

// ---- Waiting -------------------------------------------------------------------------------

/// `waitpid(2)`: the pid and status of a child that changed state; pid 0 under WNOHANG when
/// none did.
pub fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: waitpid writes one int.
    let r = check(unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok((r, status))
}

/// A pidfd for `pid`: a handle that pins it (signals through it never reach a recycled pid).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open touches no memory of ours; the new fd is ours.
    let fd = check_syscall(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` (0: only checks the process still exists) through a pidfd.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: no siginfo is passed (NULL); the pidfd is borrowed.
    check_syscall(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0)
    })?;
    Ok(())
}

/// `waitid(P_PIDFD)` for any kind of child (`__WALL`, so clone children too): `Ok(None)` while
/// it runs (WNOHANG); else (code, signal), code 128+signal when a signal ended it. Retries on
/// EINTR.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<Option<(i32, i32)>> {
    loop {
        // SAFETY: siginfo_t is plain data, valid when zeroed.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid fills the siginfo it is given.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL | flags,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: waitid filled a SIGCHLD-style siginfo (or left it zeroed under WNOHANG), in
        // which si_pid and si_status are the valid fields.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(if info.si_code == libc::CLD_EXITED { (status, 0) } else { (128 + status, status) }));
    }
}

// ---- Namespaces and roots ------------------------------------------------------------------

/// Joins the namespace `ns` (an open /proc/PID/ns/* file) of type `nstype` (`CLONE_NEW*`).
pub fn setns(ns: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns on a borrowed fd touches no memory of ours.
    check(unsafe { libc::setns(ns.as_raw_fd(), nstype) })?;
    Ok(())
}

/// Makes the directory `dir` (an `O_PATH` fd will do) the working directory and the root.
pub fn enter_root(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir on a borrowed fd, then chroot to a static C string.
    check(unsafe { libc::fchdir(dir.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::chroot(c".".as_ptr()) })?;
    Ok(())
}

// ---- Starting processes --------------------------------------------------------------------

/// `struct clone_args` of `clone3(2)` (the kernel's layout, version 2 with `cgroup`). Unused
/// fields stay zero (`..Default::default()`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3` without a new stack or shared memory: a fork with extra flags. 0 in the child.
fn clone3_fork(args: &mut CloneArgs) -> io::Result<libc::pid_t> {
    debug_assert_eq!(args.flags & (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SETTLS) as u64, 0);
    debug_assert_eq!(args.stack, 0);
    // SAFETY: with no CLONE_VM and no stack the child gets a copy of our memory, like fork;
    // args is a valid clone_args of the size given and every pointer in it (pidfd) is valid.
    // Callers only run async-signal-safe code in the child (see the module comment).
    let r = check_syscall(unsafe {
        libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, std::mem::size_of::<CloneArgs>())
    })?;
    Ok(r as libc::pid_t)
}

/// An `execve` argument list and environment prepared before a fork: the child only reads
/// the pointer arrays.
pub struct ExecArgs {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl ExecArgs {
    pub fn new(argv: Vec<CString>, env: Vec<CString>) -> ExecArgs {
        // The pointers refer to the strings' heap buffers, which moving the CStrings into
        // `_strings` does not move.
        let argv_p = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let envp_p = env.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
        let mut strings = argv;
        strings.extend(env);
        ExecArgs { _strings: strings, argv: argv_p, envp: envp_p }
    }

    /// `execve(path)`; returns only on failure, with the errno. Async-signal-safe.
    fn exec(&self, path: &CStr) -> libc::c_int {
        // SAFETY: path and both NULL-terminated arrays of C strings live in self or the caller.
        unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        errno()
    }
}

/// Ends a child without running any destructor or atexit handler. Async-signal-safe.
fn exit_child(status: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(status) }
}

/// Writes `data` to `fd` from a child; best effort. Async-signal-safe.
fn write_from_child(fd: RawFd, data: &[u8]) {
    // SAFETY: the kernel reads at most data.len() bytes from data.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
}

/// Starts `exe` with `args` and no environment as a "clone" child (no exit signal, so a
/// `waitpid(-1)` elsewhere in the process never reaps it) whose fds 0-3 are copies of
/// `fds`, with no signal blocked. Returns its pid and pidfd. The fds must not be 0-3
/// themselves (`dup_at_least(fd, 10)` makes sure). If exec fails the child exits with 255.
pub fn spawn_clone_child(exe: &CStr, args: &ExecArgs, fds: [RawFd; 4]) -> io::Result<(libc::pid_t, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut ca = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        // No SIGCHLD (exit_signal 0).
        ..Default::default()
    };
    let pid = clone3_fork(&mut ca)?;
    if pid == 0 {
        // Child: syscalls only.
        for (target, fd) in fds.iter().enumerate() {
            // SAFETY: dup2 onto 0-3 of this new process, whose copies of those are not owned
            // by anything that runs before the exec.
            if unsafe { libc::dup2(*fd, target as libc::c_int) } < 0 {
                exit_child(255);
            }
        }
        unblock_all_signals();
        args.exec(exe);
        exit_child(255);
    }
    // SAFETY: the kernel stored a fresh pidfd that nothing else owns.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// What the child of [`fork_command`] does before trying to exec.
pub struct CommandSetup<'a> {
    /// A terminal that becomes the controlling terminal and fds 0-2.
    pub tty: Option<BorrowedFd<'a>>,
    /// Signals whose handlers are reset to the default.
    pub default_signals: &'a [libc::c_int],
    pub cwd: &'a CStr,
    /// Paths to try in turn, as execvp does with PATH.
    pub candidates: &'a [CString],
    /// Where the child writes the errno (4 bytes, native order) when no candidate runs.
    pub error_pipe: BorrowedFd<'a>,
}

/// Forks the calling (single-threaded) process; the child becomes a session leader, dies with
/// its parent (PDEATHSIG SIGKILL), takes `setup` and execs the first candidate that runs, as
/// execvp does: a permission problem beats "not found" further down the list. If none runs it
/// writes the errno to the error pipe and exits 127 (not found) or 126 (cannot execute).
pub fn fork_command(setup: &CommandSetup<'_>, args: &ExecArgs) -> io::Result<libc::pid_t> {
    // SAFETY: a plain fork; the child below only makes async-signal-safe calls.
    let pid = check(unsafe { libc::fork() })?;
    if pid != 0 {
        return Ok(pid);
    }
    // SAFETY (this block): the child makes syscalls on data prepared before the fork; dup2
    // replaces fds 0-2 of this new process, which nothing here owns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setsid();
        if let Some(tty) = setup.tty {
            let s = tty.as_raw_fd();
            libc::ioctl(s, libc::TIOCSCTTY, 0);
            for t in 0..3 {
                libc::dup2(s, t);
            }
        }
        for s in setup.default_signals {
            libc::signal(*s, libc::SIG_DFL);
        }
        unblock_all_signals();
        libc::chdir(setup.cwd.as_ptr());
    }
    let mut err = libc::ENOENT;
    for c in setup.candidates {
        let e = args.exec(c);
        if e != libc::ENOENT || err == libc::ENOENT {
            err = e;
        }
    }
    write_from_child(setup.error_pipe.as_raw_fd(), &err.to_ne_bytes());
    exit_child(if err == libc::ENOENT { 127 } else { 126 })
}

/// A filesystem step for the child of [`clone_container`], its strings ready.
pub enum ChildStep {
    Mount { src: CString, target: CString, fstype: Option<CString>, flags: libc::c_ulong, data: Option<CString> },
    Mkdir(CString, libc::mode_t),
    Mknod(CString, libc::mode_t, libc::dev_t),
    Symlink { target: CString, link: CString },
}

impl ChildStep {
    /// Runs the step: 0 or the errno (EEXIST counts as done for what it creates).
    /// Async-signal-safe.
    fn run(&self) -> libc::c_int {
        // SAFETY: all pointers are valid C strings (or NULL) prepared before the clone.
        let r = unsafe {
            match self {
                ChildStep::Mount { src, target, fstype, flags, data } => libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                    *flags,
                    data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
                ),
                ChildStep::Mkdir(p, mode) => libc::mkdir(p.as_ptr(), *mode),
                ChildStep::Mknod(p, mode, dev) => libc::mknod(p.as_ptr(), *mode, *dev),
                ChildStep::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()),
            }
        };
        if r == 0 {
            return 0;
        }
        match (self, errno()) {
            (ChildStep::Mkdir(..) | ChildStep::Mknod(..) | ChildStep::Symlink { .. }, libc::EEXIST) => 0,
            (_, e) => e,
        }
    }
}

/// What the child of [`clone_container`] does, all prepared before the clone.
pub struct ContainerChild<'a> {
    pub steps: &'a [ChildStep],
    pub hostname: &'a [u8],
    /// The new root directory.
    pub root: &'a CStr,
    pub init: &'a CStr,
    pub args: &'a ExecArgs,
    /// The launch pipe's write end: a failure is reported there as (step, errno), two
    /// native-order u32/i32, and the child exits 127. Steps are numbered: `steps` first, then
    /// with n = steps.len(): n sethostname, n+1 chdir to the root, n+2 detaching the old root
    /// after pivot_root, n+3 moving the root onto / (when pivot_root is refused), n+4 chroot,
    /// n+5 chdir to /, n+6 execve.
    pub report: BorrowedFd<'a>,
}

/// The namespaces a container may be given.
const CONTAINER_NAMESPACES: libc::c_int = libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUSER;

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts a container's init: a child (SIGCHLD on exit) in the new `namespaces` (`CLONE_NEW*`
/// flags only), in the cgroup directory `cgroup` when given, which resets its signal mask,
/// becomes a session leader, runs `child.steps`, sets the hostname, makes `child.root` its
/// root (pivot_root, or move-mount and chroot as switch_root does when the current root is
/// the initramfs) and execs `child.init`. Returns its pid; failures of the child come through
/// `child.report`.
pub fn clone_container(
    namespaces: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
    child: &ContainerChild<'_>,
) -> io::Result<libc::pid_t> {
    if namespaces & !CONTAINER_NAMESPACES != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "clone_container: not a namespace flag"));
    }
    let mut args = CloneArgs { flags: namespaces as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    let pid = clone3_fork(&mut args)?;
    if pid == 0 {
        container_child(child)
    }
    Ok(pid)
}

/// Reports a failed step of [`container_child`] and exits. Async-signal-safe.
fn report_child_failure(report: RawFd, step: usize, e: libc::c_int) -> ! {
    let mut msg = [0u8; 8];
    msg[0..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..8].copy_from_slice(&e.to_ne_bytes());
    write_from_child(report, &msg);
    exit_child(127)
}

/// The child side of [`clone_container`]. Async-signal-safe.
fn container_child(c: &ContainerChild<'_>) -> ! {
    let fail = |step: usize, e: libc::c_int| report_child_failure(c.report.as_raw_fd(), step, e);
    unblock_all_signals();
    // SAFETY: setsid touches no memory.
    unsafe { libc::setsid() };
    for (i, s) in c.steps.iter().enumerate() {
        let e = s.run();
        if e != 0 {
            fail(i, e);
        }
    }
    let n = c.steps.len();
    let dot = c".";
    // SAFETY (this block): syscalls on C strings and a byte slice prepared before the clone.
    unsafe {
        if libc::sethostname(c.hostname.as_ptr().cast(), c.hostname.len()) != 0 {
            fail(n, errno());
        }
        if libc::chdir(c.root.as_ptr()) != 0 {
            fail(n + 1, errno());
        }
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
            if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
                fail(n + 2, errno());
            }
        } else {
            if libc::mount(dot.as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_MOVE, std::ptr::null()) != 0 {
                fail(n + 3, errno());
            }
            if libc::chroot(dot.as_ptr()) != 0 {
                fail(n + 4, errno());
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(n + 5, errno());
        }
    }
    let e = c.args.exec(c.init);
    report_child_failure(c.report.as_raw_fd(), n + 6, e)
}
