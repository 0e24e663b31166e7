//! Supervision: keep the container running (bounded restarts with backoff), reap orphans (we
//! are PID 1), and turn a power-off request — ACPI power button, ctrl-alt-del, SIGTERM,
//! SIGINT, SIGPWR — into a clean container stop.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::launcher::Container;
use crate::sys::process::{kill, waitpid};
use crate::sys::{describe_status, fd, process, signal_name};

/// Signals PID 1 handles synchronously through a signalfd.
pub const SIGNALS: [libc::c_int; 6] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR, libc::SIGHUP, libc::SIGUSR1];

fn sigset() -> libc::sigset_t {
    process::sigset(&SIGNALS)
}

/// Blocks the handled signals; must run before any thread starts so every thread inherits the
/// mask (children get a clean mask: std's spawn and the built-in launcher reset it).
pub fn block_signals() -> Result<()> {
    process::block_signals(&sigset()).map_err(|e| anyhow::anyhow!("blocking signals: {e}"))?;
    // Ctrl-alt-del then sends SIGINT to PID 1 instead of rebooting at once.
    crate::sys::system::disable_ctrl_alt_del();
    Ok(())
}

fn signalfd() -> Result<OwnedFd> {
    process::signalfd(&sigset()).context("creating a signalfd")
}

/// Why the machine shuts down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    PowerButton,
    Signal(String),
    /// The update agent asks for a reboot (into a new release, or out of a failed trial).
    Reboot(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::PowerButton => f.write_str("power-button"),
            StopReason::Signal(s) => f.write_str(s),
            StopReason::Reboot(why) => write!(f, "reboot ({why})"),
        }
    }
}

/// `struct input_event` on 64-bit: timeval (16), type, code, value.
const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
pub const KEY_POWER: u16 = 116;

/// Whether a buffer of input events holds a KEY_POWER press.
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|e| {
        let ty = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// The open `/dev/input/event*` devices, reopened when new ones appear.
struct Inputs {
    dir: PathBuf,
    open: Vec<(PathBuf, File)>,
}

impl Inputs {
    fn rescan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_name().to_string_lossy().starts_with("event") || self.open.iter().any(|(q, _)| *q == p) {
                continue;
            }
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&p) {
                self.open.push((p, f));
            }
        }
    }
}

/// Restart policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_restarts: u32,
    pub stop_timeout: Duration,
}

/// PID 1's panic hook, installed from the main thread. A panic there is `fatal` (power off, or
/// reboot on trial): the boot cannot go on. A panic in a helper thread (the update agent, its
/// socket, the enter server, a DHCP renewal) is only logged on the console: that thread unwinds
/// and stops, and the cluster keeps running; the next boot starts the helper again.
pub fn install_panic_hook(fatal: fn(&str)) {
    let main = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        let me = std::thread::current();
        if me.id() == main {
            fatal(&format!("panic: {info}"));
        } else {
            crate::event!("thread stopped", thread = me.name().unwrap_or("unnamed"), error = format!("panic: {info}"));
        }
    }));
}

/// `now + d`, saturating at about ten years instead of panicking: timeouts come from the
/// command line (`planet.stop_timeout`, `planet.datasource_timeout`), and `Instant + Duration`
/// panics on overflow in every build profile.
pub fn deadline_after(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(10 * 365 * 86400);
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// Delay before restart number `n` (1-based): 1, 2, 4, 8, 16, then 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX).min(30))
}

/// A run longer than this resets the restart count: the container was healthy.
const HEALTHY_RUN: Duration = Duration::from_secs(300);

enum State {
    Running { c: Container, since: Instant },
    Backoff { until: Instant },
    Stopping { c: Container, deadline: Instant, killed: bool },
}

/// Runs the container until a stop request, restarting it when it dies. Returns once it is
/// stopped; an error when restarts are exhausted.
pub fn supervise(mut launch: impl FnMut() -> Result<Container>, policy: Policy, dev: &Path) -> Result<StopReason> {
    let sfd = signalfd()?;
    let mut inputs = Inputs { dir: dev.join("input"), open: Vec::new() };
    inputs.rescan();
    let mut last_scan = Instant::now();
    let mut restarts = 0u32;
    let mut state = State::Running { c: launch()?, since: Instant::now() };
    crate::update::container_started();
    let mut reason: Option<StopReason> = None;
    loop {
        // Wait for a signal, an input event or the next timer.
        let mut pfds: Vec<libc::pollfd> = vec![libc::pollfd { fd: sfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        pfds.extend(inputs.open.iter().map(|(_, f)| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let _ = fd::poll(&mut pfds, 1000);

        let mut request: Option<StopReason> = None;
        let mut buf = [0u8; 128];
        // signalfd_siginfo records of 128 bytes.
        while fd::read(sfd.as_raw_fd(), &mut buf).ok() == Some(128) {
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as libc::c_int;
            if signo != libc::SIGCHLD {
                request = Some(StopReason::Signal(signal_name(signo)));
            }
        }
        let mut gone = Vec::new();
        for (i, (p, f)) in inputs.open.iter_mut().enumerate() {
            let mut ebuf = [0u8; INPUT_EVENT_SIZE * 16];
            match f.read(&mut ebuf) {
                Ok(0) => gone.push(i),
                Ok(n) => {
                    if has_power_press(&ebuf[..n]) {
                        request = Some(StopReason::PowerButton);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    let _ = p;
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            inputs.open.remove(i);
        }
        if last_scan.elapsed() > Duration::from_secs(5) {
            inputs.rescan();
            last_scan = Instant::now();
        }
        if request.is_none() {
            request = crate::update::reboot_requested().map(StopReason::Reboot);
        }

        if let Some(r) = request {
            if reason.is_none() {
                crate::event!("shutdown requested", reason = r);
                reason = Some(r);
                state = match state {
                    State::Running { c, .. } => {
                        crate::event!(
                            "container stopping",
                            pid = c.pid,
                            signal = signal_name(c.stop_signal),
                            timeout = format!("{}s", policy.stop_timeout.as_secs())
                        );
                        let _ = kill(c.pid, c.stop_signal);
                        State::Stopping { c, deadline: deadline_after(policy.stop_timeout), killed: false }
                    }
                    State::Backoff { .. } => {
                        crate::event!("container stopped", how = "not-running");
                        return Ok(reason.unwrap_or(StopReason::PowerButton));
                    }
                    s => s,
                };
            }
        }

        // Reap every exited child; only the container's exit matters.
        loop {
            let (pid, status) = match waitpid(-1, libc::WNOHANG) {
                Ok((pid, status)) if pid > 0 => (pid, status),
                _ => break,
            };
            let (sk, sv) = describe_status(status);
            state = match state {
                State::Running { c, since } if c.pid == pid => {
                    crate::update::container_exited();
                    crate::launcher::set_current(None);
                    crate::console::emit(
                        "container exited",
                        &[
                            ("pid", pid.to_string()),
                            (sk, sv.clone()),
                            ("ran", format!("{}s", since.elapsed().as_secs())),
                        ],
                    );
                    if crate::update::on_trial() {
                        // A new release on trial gets no restarts: the boot counter decides.
                        crate::event!("update trial failed", reason = format!("the container exited ({sk}={sv})"));
                        return Ok(StopReason::Reboot("update trial failed".into()));
                    }
                    if since.elapsed() > HEALTHY_RUN {
                        restarts = 0;
                    }
                    if restarts >= policy.max_restarts {
                        bail!(
                            "the container exited ({sk}={sv}) and its {} restarts are used up; giving up",
                            policy.max_restarts
                        );
                    }
                    restarts += 1;
                    let delay = backoff(restarts);
                    crate::event!(
                        "container restarting",
                        attempt = restarts,
                        of = policy.max_restarts,
                        delay = format!("{}s", delay.as_secs())
                    );
                    State::Backoff { until: Instant::now() + delay }
                }
                State::Stopping { c, killed, .. } if c.pid == pid => {
                    crate::update::container_exited();
                    crate::launcher::set_current(None);
                    crate::console::emit("container exited", &[("pid", pid.to_string()), (sk, sv.clone())]);
                    crate::event!("container stopped", pid = pid, how = if killed { "killed" } else { "clean" });
                    return Ok(reason.unwrap_or(StopReason::PowerButton));
                }
                s => s,
            };
        }

        state = match state {
            State::Backoff { until } if Instant::now() >= until => match launch() {
                Ok(c) => {
                    crate::update::container_started();
                    State::Running { c, since: Instant::now() }
                }
                Err(e) => {
                    crate::event!("launcher failed", error = format!("{e:#}"));
                    if restarts >= policy.max_restarts {
                        return Err(e).context("restarting the container");
                    }
                    restarts += 1;
                    State::Backoff { until: Instant::now() + backoff(restarts) }
                }
            },
            State::Stopping { c, deadline, killed: false } if Instant::now() >= deadline => {
                crate::event!("container kill", pid = c.pid, reason = "stop timeout");
                let _ = kill(c.pid, libc::SIGKILL);
                State::Stopping { c, deadline, killed: true }
            }
            s => s,
        };
    }
}

/// Terminates every other process (SIGTERM, a grace period, SIGKILL) and reaps them, so no
/// file stays open on the state partition.
pub fn kill_everything(grace: Duration) {
    // kill(-1) from PID 1 signals every process but itself.
    let _ = kill(-1, libc::SIGTERM);
    let until = deadline_after(grace);
    loop {
        let Ok((pid, _)) = waitpid(-1, libc::WNOHANG) else {
            return; // ECHILD: nothing left
        };
        if pid == 0 {
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = kill(-1, libc::SIGKILL);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let Ok((pid, _)) = waitpid(-1, libc::WNOHANG) else {
            return;
        };
        if pid == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_key_press_is_recognised() {
        let ev = |ty: u16, code: u16, value: i32| {
            let mut e = vec![0u8; 16];
            e.extend_from_slice(&ty.to_ne_bytes());
            e.extend_from_slice(&code.to_ne_bytes());
            e.extend_from_slice(&value.to_ne_bytes());
            e
        };
        let mut buf = ev(0, 0, 0);
        buf.extend(ev(EV_KEY, KEY_POWER, 0)); // release
        assert!(!has_power_press(&buf));
        buf.extend(ev(EV_KEY, KEY_POWER, 1));
        assert!(has_power_press(&buf));
        assert!(!has_power_press(&ev(EV_KEY, 30, 1)));
    }

    use crate::launcher::Kind;

    /// Blocks the handled signals in the calling (test) thread only. `block_signals` is not
    /// used: it would also disable ctrl-alt-del on the build machine.
    fn block_here() {
        process::block_signals(&sigset()).unwrap();
    }

    fn spawn_sh(script: &str) -> Result<Container> {
        let child = std::process::Command::new("/bin/sh").args(["-c", script]).spawn()?;
        Ok(Container { pid: child.id() as libc::pid_t, kind: Kind::Release, stop_signal: libc::SIGTERM })
    }

    /// Both scenarios share one test: supervise reaps with waitpid(-1), which must not race
    /// with another supervising test thread.
    #[test]
    fn restarts_are_bounded_and_a_stop_signal_stops_the_container() {
        block_here();
        let dev = tempfile::tempdir().unwrap();
        let mut launches = 0;
        let policy = Policy { max_restarts: 1, stop_timeout: Duration::from_secs(5) };
        let err = supervise(
            || {
                launches += 1;
                spawn_sh("exit 3")
            },
            policy,
            dev.path(),
        )
        .unwrap_err();
        assert_eq!(launches, 2, "one start and one restart");
        assert!(err.to_string().contains("code=3"), "{err}");

        // A SIGTERM to PID 1 (here: this thread) stops the container and returns.
        let (pid, tid) = (process::getpid(), process::gettid());
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            // A thread-directed signal to the supervising thread, which blocks it.
            process::tgkill(pid, tid, libc::SIGTERM).unwrap();
        });
        let started = Instant::now();
        let reason = supervise(|| spawn_sh("sleep 30"), policy, dev.path()).unwrap();
        sender.join().unwrap();
        assert_eq!(reason, StopReason::Signal("SIGTERM".into()));
        assert!(started.elapsed() < Duration::from_secs(5), "stopped by SIGTERM, not killed at the timeout");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(100).as_secs(), 30);
    }
}
