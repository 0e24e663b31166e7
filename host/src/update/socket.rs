//! Local update requests: a Unix socket in the directory bind-mounted into the container at
//! `/var/lib/planet-update`, so tooling in the cluster can hand the machine a bundle.
//!
//! One request per connection, a line, answered with one line `ok …` or `error …`:
//! * `status` — the status file's JSON;
//! * `install-url [--allow-downgrade] http://IP[:PORT]/PATH` — fetch and install that bundle;
//! * `install [--allow-downgrade]` — the bundle's bytes follow the line, to the end of the stream;
//! * `check-url [--allow-downgrade] http://IP[:PORT]/PATH` — what `install-url` checks before it
//!   downloads (trusted key, release wanted here, room), on the bundle's first 4 KiB, with
//!   nothing written: answers `ok release R, N bytes`;
//! * `fail-trial REASON…` — while this boot is a release on trial: mark its entry bad and reboot
//!   into the previous release at once, instead of waiting for the boot counter to run down;
//! * `rollback-to RELEASE` — boot the release the other slot still holds, with a fresh boot
//!   counter (it runs its own trial).
//!
//! An install that succeeds answers `ok installed ENTRY; rebooting` and the machine reboots;
//! `fail-trial` answers `ok trial ended; rebooting into the previous release`, `rollback-to`
//! `ok rollback to RELEASE in ENTRY; rebooting`.
//! `--allow-downgrade` is the only way to install an older release: this socket (root in the
//! container, or whoever the operator lets in) is the operator's channel; cloud-init data is not.
//!
//! Connections are served side by side, at most [`MAX_CONNECTIONS`]. A connection has an overall
//! deadline (the request line within [`LINE_DEADLINE`], a bundle within
//! [`install::transfer_time`] of its size), so a stalled client cannot hold the install lock.
//! An `install-url` that finds no valid bundle answers one fixed error (the details go to
//! the console): the socket does not tell a client which addresses answer, so it is no port
//! scanner.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{install, Agent};
use crate::event;

pub const SOCKET_NAME: &str = "update.sock";
/// How long a client has to send its request line.
pub const LINE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at the same time; more are answered with an error at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Each read of a bundle from the socket waits at most this long.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `fail-trial` reason kept (it goes to the console and the status file).
pub const MAX_REASON_CHARS: usize = 200;

/// Binds the socket (root only: the container's root may use it).
pub fn listen(dir: &Path) -> Result<UnixListener> {
    let path = dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// A parsed request line. A `fail-trial` reason is one line of printable text, at most
/// [`MAX_REASON_CHARS`] characters.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    InstallUrl { url: String, allow_downgrade: bool },
    CheckUrl { url: String, allow_downgrade: bool },
    Install { allow_downgrade: bool },
    FailTrial { reason: String },
    RollbackTo { release: String },
}

pub fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let downgrade = |w: &[&str]| -> Option<bool> {
        match w {
            [] => Some(false),
            ["--allow-downgrade"] => Some(true),
            _ => None,
        }
    };
    let req = match words.as_slice() {
        ["status"] => Some(Request::Status),
        ["install", rest @ ..] => downgrade(rest).map(|allow_downgrade| Request::Install { allow_downgrade }),
        ["install-url", rest @ .., url] if !url.starts_with("--") => {
            downgrade(rest).map(|allow_downgrade| Request::InstallUrl { url: url.to_string(), allow_downgrade })
        }
        ["check-url", rest @ .., url] if !url.starts_with("--") => {
            downgrade(rest).map(|allow_downgrade| Request::CheckUrl { url: url.to_string(), allow_downgrade })
        }
        ["fail-trial", reason @ ..] if !reason.is_empty() => {
            // Control characters would reach the console as they are.
            let reason: String = reason.join(" ").chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect();
            Some(Request::FailTrial { reason })
        }
        ["rollback-to", release] if planet_config::is_version_text(release) => {
            Some(Request::RollbackTo { release: release.to_string() })
        }
        _ => None,
    };
    req.ok_or_else(|| {
        format!(
            "unknown request {:?}: expected status, install-url [--allow-downgrade] URL, install \
             [--allow-downgrade] followed by the bundle, check-url [--allow-downgrade] URL, fail-trial \
             REASON, or rollback-to RELEASE",
            line.trim()
        )
    })
}

/// The socket side of a connection, read within an overall deadline: each read waits at most
/// the time left (and at most `READ_TIMEOUT`).
struct Timed {
    conn: UnixStream,
    /// Shared with the handler, which extends it once the bundle's size is known.
    until: std::rc::Rc<std::cell::Cell<Instant>>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.get().saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client took too long"));
        }
        self.conn.set_read_timeout(Some(left.min(READ_TIMEOUT)))?;
        self.conn.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut if Instant::now() >= self.until.get() => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "the client took too long")
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client sent nothing for {} s", READ_TIMEOUT.as_secs()),
            ),
            _ => e,
        })
    }
}

impl Agent {
    /// Serves each connection on its own thread (at most [`MAX_CONNECTIONS`] at once), so a
    /// slow client delays nobody else; installs exclude each other through the agent's lock.
    pub(super) fn serve(&self, listener: UnixListener) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let active = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = writeln!(conn, "error too many requests at once; try again later");
                    continue;
                }
                let active = &active;
                let spawned =
                    std::thread::Builder::new().name("update-request".into()).spawn_scoped(scope, move || {
                        super::contained("update-request", || {
                            if let Err(e) = self.handle(conn) {
                                event!("update request failed", error = format!("{e:#}"));
                            }
                        });
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
                if super::reboot_requested().is_some() {
                    return;
                }
            }
        });
    }

    fn handle(&self, conn: UnixStream) -> Result<()> {
        self.handle_within(conn, LINE_DEADLINE, install::transfer_time)
    }

    /// `handle` with the deadlines given (tests shorten them): `line` for the request line,
    /// `transfer(bytes)` for a bundle of that size, counted from when its prelude is read.
    fn handle_within(&self, conn: UnixStream, line_time: Duration, transfer: fn(u64) -> Duration) -> Result<()> {
        conn.set_write_timeout(Some(READ_TIMEOUT))?;
        let mut w = conn.try_clone()?;
        let until = std::rc::Rc::new(std::cell::Cell::new(Instant::now() + line_time));
        let mut r = BufReader::new(Timed { conn, until: until.clone() });
        let mut line = String::new();
        r.by_ref().take(4096).read_line(&mut line)?;
        let req = match parse_request(&line) {
            Ok(req) => req,
            Err(e) => return writeln!(w, "error {e}").map_err(Into::into),
        };
        event!("update request", request = format!("{req:?}"));
        let result = match req {
            Request::Status => {
                let text = std::fs::read_to_string(self.paths.run_dir.join("status.json")).unwrap_or_default();
                return writeln!(w, "ok {}", text.split_whitespace().collect::<Vec<_>>().join(" ")).map_err(Into::into);
            }
            Request::InstallUrl { url, allow_downgrade } => {
                let mut found = false;
                let r = self.install_from(allow_downgrade, |dest, keys, room, wanted| {
                    let local = || self.local_data();
                    install::download(
                        &url,
                        dest,
                        keys,
                        room,
                        |p| {
                            found = true;
                            wanted(p)
                        },
                        &local,
                    )
                });
                self.drop_local_data();
                match r {
                    Err(e) if !found => {
                        // What went wrong (refused, HTTP status, not a bundle) is for the console only.
                        event!("update refused", source = "socket", url = url, error = format!("{e:#}"));
                        return writeln!(
                            w,
                            "error no bundle signed by a trusted key at {url} (details on the console)"
                        )
                        .map_err(Into::into);
                    }
                    r => r,
                }
            }
            Request::CheckUrl { url, allow_downgrade } => {
                let mut signed = false;
                let checked = self.check_remote(&url, allow_downgrade, &mut signed);
                if let Err(e) = &checked {
                    event!("update check refused", source = "socket", url = url, error = format!("{e:#}"));
                }
                return match checked {
                    Ok(p) => writeln!(w, "ok release {}, {} bytes", p.release, p.total_bytes),
                    // A signed bundle this machine refuses: why (failed here, no room, older) is
                    // the operator's business.
                    Err(e) if signed => writeln!(w, "error {e:#}"),
                    // As for install-url: no answer tells which addresses answer.
                    Err(_) => writeln!(w, "error no bundle signed by a trusted key at {url} (details on the console)"),
                }
                .map_err(Into::into);
            }
            Request::FailTrial { reason } => {
                match self.fail_trial(&reason) {
                    Ok(_) => {
                        // The entry is bad and the trial loop stopped: reboot even if the client
                        // has gone and cannot read the answer.
                        let answered = writeln!(w, "ok trial ended; rebooting into the previous release");
                        drop(w);
                        (self.reboot)("update trial failed");
                        answered?;
                    }
                    Err(e) => {
                        event!("update request refused", request = "fail-trial", error = format!("{e:#}"));
                        writeln!(w, "error {e:#}")?;
                    }
                }
                return Ok(());
            }
            Request::RollbackTo { release } => {
                match self.rollback_to(&release) {
                    Ok(entry) => {
                        // The entry is renamed already: reboot even if the client has gone.
                        let answered = writeln!(w, "ok rollback to {release} in {entry}; rebooting");
                        drop(w);
                        self.reboot_into(&entry);
                        answered?;
                    }
                    Err(e) => {
                        event!("update refused", source = "socket", error = format!("{e:#}"));
                        self.set_status("refused", &format!("{e:#}"));
                        writeln!(w, "error {e:#}")?;
                    }
                }
                return Ok(());
            }
            Request::Install { allow_downgrade } => self.install_from(allow_downgrade, |dest, keys, room, wanted| {
                install::receive(&mut r, None, dest, keys, room, |p| {
                    // From here the whole bundle must arrive within its transfer time.
                    until.set(Instant::now() + transfer(p.total_bytes));
                    wanted(p)
                })
            }),
        };
        match result {
            Ok(Some(entry)) => {
                writeln!(w, "ok installed {entry}; rebooting")?;
                drop(w);
                self.reboot_into(&entry);
            }
            Ok(None) => writeln!(w, "ok nothing to do (same or older release)")?,
            Err(e) => {
                event!("update refused", source = "socket", error = format!("{e:#}"));
                self.set_status("refused", &format!("{e:#}"));
                writeln!(w, "error {e:#}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::install::Target;
    use crate::update::Paths;
    use planet_bundle::SecretKey;
    use planet_config::bootentry::EntryName;
    use std::path::PathBuf;

    thread_local! {
        /// Reboots asked for on this thread (each test its own).
        static REBOOTS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record_reboot(why: &str) {
        REBOOTS.with(|r| r.borrow_mut().push(why.to_string()));
    }

    /// An agent of release 1 in slot a, over a temporary ESP directory and a slot file.
    fn machine(t: &Path, key: &SecretKey) -> Agent {
        let esp = t.join("esp");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        let text = planet_config::bootentry::entry_conf("Planet 1", "1", 'a', "console=ttyS0 planet.slot=a");
        std::fs::write(esp.join("loader/entries/planet-0001-a.conf"), text).unwrap();
        std::fs::write(t.join("slot-b"), vec![0u8; 8 << 20]).unwrap();
        for d in ["state", "run"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let paths = Paths {
            esp_dev: None,
            esp_mount: esp,
            state_dir: t.join("state"),
            run_dir: t.join("run"),
            key: PathBuf::new(),
            uefi: true,
            container_root: t.join("rootfs"),
        };
        let target = Target { slot: 'b', dev: t.join("slot-b"), bytes: 8 << 20, running_dev: None };
        Agent::for_tests(paths, Some(key.public().into()), target, "1", record_reboot)
    }

    fn bundle(t: &Path, release: &str, key: &SecretKey) -> Vec<u8> {
        let mut sections = Vec::new();
        for (name, bytes) in [("rootfs", vec![7u8; 300_000]), ("vmlinuz", b"K".to_vec()), ("initramfs", b"I".to_vec())]
        {
            let p = t.join(format!("{release}.{name}"));
            std::fs::write(&p, bytes).unwrap();
            sections.push((name, p));
        }
        let refs: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let out = t.join(format!("{release}.planet"));
        planet_bundle::write_bundle(&out, release, 1_700_000_000, "6.1.0-test", &refs, key).unwrap();
        std::fs::read(out).unwrap()
    }

    /// Sends `request` (then closes the writing side) and returns the answer line.
    fn exchange(agent: &Agent, listener: &UnixListener, request: Vec<u8>) -> String {
        let path = listener.local_addr().unwrap().as_pathname().unwrap().to_path_buf();
        let client = std::thread::spawn(move || {
            let mut c = UnixStream::connect(path).unwrap();
            // A refused bundle is not read to the end: the write may fail, the answer is there.
            let _ = c.write_all(&request);
            let _ = c.shutdown(std::net::Shutdown::Write);
            // One line; the server may close before reading all of a refused bundle, which
            // resets the connection after the answer.
            let mut answer = String::new();
            let _ = BufReader::new(c).read_line(&mut answer);
            answer
        });
        let (conn, _) = listener.accept().unwrap();
        agent.handle(conn).unwrap();
        client.join().unwrap()
    }

    #[test]
    fn a_bundle_handed_to_the_socket_is_installed_and_a_reboot_asked_for() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = machine(t.path(), &key);
        let listener = listen(&t.path().join("run")).unwrap();

        let answer = exchange(&agent, &listener, b"dance\n".to_vec());
        assert!(answer.starts_with("error unknown request"), "{answer}");

        // Signed by another key: refused, nothing written.
        let mut req = b"install\n".to_vec();
        req.extend(bundle(t.path(), "2", &SecretKey::from_seed([3; 32], [3; 8])));
        let answer = exchange(&agent, &listener, req);
        assert!(answer.starts_with("error ") && answer.contains("another key"), "{answer}");
        assert_eq!(std::fs::read(t.path().join("slot-b")).unwrap(), vec![0u8; 8 << 20]);

        let mut req = b"install\n".to_vec();
        req.extend(bundle(t.path(), "2", &key));
        let answer = exchange(&agent, &listener, req);
        assert_eq!(answer, "ok installed planet-0002-b+3.conf; rebooting\n");
        assert_eq!(REBOOTS.with(|r| r.borrow().clone()), ["update to planet-0002-b+3.conf"]);
        assert_eq!(&std::fs::read(t.path().join("slot-b")).unwrap()[..300_000], &[7u8; 300_000][..]);
        assert!(t.path().join("esp/loader/entries/planet-0002-b+3.conf").exists());

        let answer = exchange(&agent, &listener, b"status\n".to_vec());
        assert!(answer.starts_with("ok {") && answer.contains("\"state\": \"installed\""), "{answer}");
        assert!(!t.path().join("state/incoming.planet").exists());
    }

    /// An HTTP server on loopback answering each request in turn with the next of `answers`
    /// (status line and headers made here), then closing; returns the URL.
    fn serve(answers: Vec<(u16, Vec<u8>, Option<u64>)>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/current.planet", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for (status, body, range_total) in answers {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).map(|n| n == 1).unwrap_or(false) {
                    req.push(b[0]);
                }
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                if let Some(t) = range_total {
                    head += &format!("Content-Range: bytes 0-{}/{t}\r\n", body.len() - 1);
                }
                let _ = c.write_all((head + "Connection: close\r\n\r\n").as_bytes());
                let _ = c.write_all(&body);
            }
        });
        url
    }

    /// The review's finding 1: the range request sees release 2, the full GET gets release 0.5.
    #[test]
    fn the_release_checked_is_the_release_installed() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = machine(t.path(), &key);
        let newer = bundle(t.path(), "2", &key);
        let older = bundle(t.path(), "0.5", &key);
        let url = serve(vec![(206, newer[..4096].to_vec(), Some(newer.len() as u64)), (200, older.clone(), None)]);
        let r = agent.install_from(false, |d, k, f, w| install::download(&url, d, k, f, w, &Vec::new));
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("not the bundle whose first 4 KiB were checked"), "{e}");
        assert_eq!(std::fs::read(t.path().join("slot-b")).unwrap(), vec![0u8; 8 << 20]);
        assert_eq!(std::fs::read_dir(t.path().join("esp/loader/entries")).unwrap().count(), 1);
        assert!(!t.path().join("state/incoming.planet").exists());

        // The same bundle both times installs.
        let url = serve(vec![(206, newer[..4096].to_vec(), Some(newer.len() as u64)), (200, newer.clone(), None)]);
        let entry = agent.install_from(false, |d, k, f, w| install::download(&url, d, k, f, w, &Vec::new)).unwrap();
        assert_eq!(entry.unwrap().file_name(), "planet-0002-b+3.conf");
    }

    /// Finding 20: a client that stalls in the middle of a bundle holds nothing for long: another
    /// install is refused at once (not queued behind it), and the stalled one ends at its deadline.
    #[test]
    fn a_stalled_client_blocks_nothing() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = machine(t.path(), &key);
        let listener = listen(&t.path().join("run")).unwrap();
        let path = listener.local_addr().unwrap().as_pathname().unwrap().to_path_buf();
        let b2 = bundle(t.path(), "2", &key);
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(b"install\n").unwrap();
        c.write_all(&b2[..5000]).unwrap(); // a valid prelude, then nothing
        let (conn, _) = listener.accept().unwrap();
        std::thread::scope(|scope| {
            let started = Instant::now();
            let server = scope.spawn(|| agent.handle_within(conn, Duration::from_secs(5), |_| Duration::from_secs(2)));
            std::thread::sleep(Duration::from_millis(500));
            let url = serve(vec![(206, b2[..4096].to_vec(), Some(b2.len() as u64)), (200, b2.clone(), None)]);
            let other = Instant::now();
            let e = agent.install_from(false, |d, k, f, w| install::download(&url, d, k, f, w, &Vec::new)).unwrap_err();
            assert!(e.to_string().contains("another update is in progress"), "{e}");
            assert!(other.elapsed() < Duration::from_secs(1), "{:?}", other.elapsed());
            server.join().unwrap().unwrap();
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        });
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("error ") && answer.contains("took too long"), "{answer}");
        assert!(
            !t.path().join("state/incoming.planet").exists() && !t.path().join("state/incoming.planet.tmp").exists()
        );
        // The lock is free again.
        let mut req = b"install\n".to_vec();
        req.extend(b2);
        assert_eq!(exchange(&agent, &listener, req), "ok installed planet-0002-b+3.conf; rebooting\n");
    }

    /// Finding 20: connections are served side by side: a client that never sends its request
    /// line does not hold up a `status` request; a flood of them is turned away, not queued.
    #[test]
    fn a_silent_client_does_not_hold_up_others() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = std::sync::Arc::new(machine(t.path(), &key));
        agent.set_status("idle", "");
        let listener = listen(&t.path().join("run")).unwrap();
        let path = t.path().join("run").join(SOCKET_NAME);
        let a = agent.clone();
        std::thread::spawn(move || a.serve(listener));
        let silent: Vec<UnixStream> = (0..MAX_CONNECTIONS - 1).map(|_| UnixStream::connect(&path).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let ask = |req: &str| {
            let started = Instant::now();
            let mut c = UnixStream::connect(&path).unwrap();
            // A client turned away may be answered and hung up on before it has written its
            // request: the write then fails with EPIPE, but the answer is still there to read.
            let _ = c.write_all(req.as_bytes());
            let mut answer = String::new();
            let _ = BufReader::new(c).read_line(&mut answer);
            (answer, started.elapsed())
        };
        let (answer, took) = ask("status\n");
        assert!(answer.starts_with("ok {"), "{answer}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // Fill the slot the status request had with a silent client. The server frees that slot
        // a moment after answering, so a client racing it may be turned away while the slot is
        // still taken: go on until every slot holds a silent client and one more is turned away.
        // Then the next client is told so at once.
        let mut busy = Vec::new();
        for attempt in 0.. {
            assert!(attempt < 100, "no client was turned away with {} silent ones in", silent.len() + busy.len());
            let c = UnixStream::connect(&path).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut line = String::new();
            match BufReader::new(&c).read_line(&mut line) {
                Ok(n) if n > 0 => {
                    assert!(line.starts_with("error too many requests at once"), "{line}");
                    if silent.len() + busy.len() >= MAX_CONNECTIONS {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => busy.push(c),
            }
            assert!(
                silent.len() + busy.len() <= MAX_CONNECTIONS,
                "{} silent clients were all let in",
                silent.len() + busy.len()
            );
        }
        let (answer, took) = ask("status\n");
        assert!(answer.starts_with("error too many requests at once"), "{answer}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop((silent, busy));
    }

    /// Finding 20: what `install-url` answers does not tell a closed port from an open one.
    #[test]
    fn install_url_does_not_scan_ports() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = machine(t.path(), &key);
        let listener = listen(&t.path().join("run")).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: closed
        let not_found = serve(vec![(404, b"nope".to_vec(), None)]);
        let not_a_bundle = serve(vec![(200, b"<html>hello</html>".to_vec(), None)]);
        let mut answers = Vec::new();
        for url in [format!("http://{closed}/x"), not_found, not_a_bundle] {
            let a = exchange(&agent, &listener, format!("install-url {url}\n").into_bytes());
            answers.push(a.replace(&url, "URL"));
        }
        assert_eq!(answers[0], "error no bundle signed by a trusted key at URL (details on the console)\n");
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        // A bundle that was found says why it is refused.
        let b1 = bundle(t.path(), "1", &key);
        let url = serve(vec![(206, b1[..4096].to_vec(), Some(b1.len() as u64))]);
        let a = exchange(&agent, &listener, format!("install-url {url}\n").into_bytes());
        assert_eq!(a, "ok nothing to do (same or older release)\n");
    }

    /// `check-url` reads the first 4 KiB only, writes nothing, and answers what an install
    /// would decide: a wanted bundle's release and size, a refused signed bundle's reason, and
    /// the install-url's one fixed answer when there is no signed bundle at all.
    #[test]
    fn check_url_judges_a_bundle_on_its_prelude_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let agent = machine(t.path(), &key);
        let listener = listen(&t.path().join("run")).unwrap();
        let slot_before = std::fs::read(t.path().join("slot-b")).unwrap();
        let b2 = bundle(t.path(), "2", &key);
        let url = serve(vec![(206, b2[..4096].to_vec(), Some(b2.len() as u64))]);
        let a = exchange(&agent, &listener, format!("check-url {url}\n").into_bytes());
        assert_eq!(a, format!("ok release 2, {} bytes\n", b2.len()));
        // Release 1 is the running one: refused, and the reason says so.
        let b1 = bundle(t.path(), "1", &key);
        let url = serve(vec![(206, b1[..4096].to_vec(), Some(b1.len() as u64))]);
        let a = exchange(&agent, &listener, format!("check-url {url}\n").into_bytes());
        assert!(a.starts_with("error ") && a.contains("release 1"), "{a}");
        // Signed by another key: the fixed answer.
        let other = bundle(t.path(), "3", &SecretKey::from_seed([4; 32], [4; 8]));
        let url = serve(vec![(206, other[..4096].to_vec(), Some(other.len() as u64))]);
        let a = exchange(&agent, &listener, format!("check-url {url}\n").into_bytes());
        assert_eq!(a.replace(&url, "URL"), "error no bundle signed by a trusted key at URL (details on the console)\n");
        assert_eq!(std::fs::read(t.path().join("slot-b")).unwrap(), slot_before, "the slot was written");
        assert!(!t.path().join("state/incoming.planet").exists());
        assert!(std::fs::read_dir(t.path().join("esp/loader/entries")).unwrap().count() == 1);
    }

    /// Finding 8: a downgrade only by an explicit socket request; `allow_downgrade` from
    /// cloud-init data is ignored.
    #[test]
    fn a_downgrade_needs_an_explicit_socket_request() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let mut agent = machine(t.path(), &key);
        agent.cfg.allow_downgrade = true; // as if user-data said so
        let listener = listen(&t.path().join("run")).unwrap();
        let old = bundle(t.path(), "0.5", &key);
        let mut req = b"install\n".to_vec();
        req.extend(&old);
        assert_eq!(exchange(&agent, &listener, req), "ok nothing to do (same or older release)\n");
        let mut req = b"install --allow-downgrade\n".to_vec();
        req.extend(&old);
        assert_eq!(exchange(&agent, &listener, req), "ok installed planet-0002-b+3.conf; rebooting\n");
    }

    /// Finding 8: an expired bundle is refused with the date; a key revoked by a newer key's
    /// bundle stays refused; an older key cannot revoke a newer one.
    #[test]
    fn expired_bundles_and_revoked_keys_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (SecretKey::from_seed([1; 32], [1; 8]), SecretKey::from_seed([2; 32], [2; 8]));
        let mut agent = machine(t.path(), &old);
        agent.key = Some(planet_bundle::KeyRing::parse(&(old.public().to_text() + &new.public().to_text())).unwrap());
        let listener = listen(&t.path().join("run")).unwrap();
        let make = |release: &str, key: &SecretKey, claims: planet_bundle::Claims| {
            let p = t.path().join("part");
            std::fs::write(&p, b"x").unwrap();
            let out = t.path().join(format!("{release}-{}.planet", key.key_id_hex()));
            let sections: [(&str, &Path); 3] = [("rootfs", &p), ("vmlinuz", &p), ("initramfs", &p)];
            planet_bundle::write_bundle_with(&out, release, 1, "6.1", &sections, key, &claims).unwrap();
            let mut req = b"install\n".to_vec();
            req.extend(std::fs::read(out).unwrap());
            req
        };
        let expired = planet_bundle::Claims { expires: Some(1_700_000_000), revokes: vec![], head: None };
        let a = exchange(&agent, &listener, make("2", &new, expired));
        assert!(a.starts_with("error the bundle of release 2 expired at 2023-11-14 22:13:20 UTC"), "{a}");

        // The old key tries to revoke the new one: ignored (and release 1 is not wanted anyway).
        let coup = planet_bundle::Claims { expires: None, revokes: vec![new.key_id_hex()], head: None };
        let a = exchange(&agent, &listener, make("1", &old, coup));
        assert_eq!(a, "ok nothing to do (same or older release)\n");
        assert!(!t.path().join("state/revoked-keys").exists());

        // The new key revokes the old one, in a bundle that is not even installed.
        let revoke = planet_bundle::Claims { expires: None, revokes: vec![old.key_id_hex()], head: None };
        let a = exchange(&agent, &listener, make("1", &new, revoke));
        assert_eq!(a, "ok nothing to do (same or older release)\n");
        let revoked = std::fs::read_to_string(t.path().join("state/revoked-keys")).unwrap();
        assert_eq!(revoked, format!("{}\n", old.key_id_hex()));
        let a = exchange(&agent, &listener, make("3", &old, planet_bundle::Claims::default()));
        assert!(a.starts_with("error signed by another key") && a.contains(&new.key_id_hex()), "{a}");
        let a = exchange(&agent, &listener, make("3", &new, planet_bundle::Claims::default()));
        assert_eq!(a, "ok installed planet-0002-b+3.conf; rebooting\n");
    }

    /// `fail-trial`: only on trial, only a counted entry, only with a slot to fall back to; then
    /// the entry has no tries left, a reboot is asked for and nothing blesses it any more.
    #[test]
    fn a_trial_is_failed_on_request() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let mut agent = machine(t.path(), &key);
        let listener = listen(&t.path().join("run")).unwrap();
        let entries = t.path().join("esp/loader/entries");
        let ask = |agent: &Agent| exchange(agent, &listener, b"fail-trial etcd \x1b[2J is  unhealthy\n".to_vec());

        assert_eq!(ask(&agent), "error release 1 is not on trial\n");

        // On trial (as the agent of that boot would be) but the entry is not counted.
        agent.trial.store(true, std::sync::atomic::Ordering::SeqCst);
        agent.entry = EntryName::parse("planet-0001-a.conf");
        let a = ask(&agent);
        assert!(a.starts_with("error the running entry planet-0001-a.conf has no boot counter"), "{a}");

        // Counted, but nothing else to boot.
        std::fs::rename(entries.join("planet-0001-a.conf"), entries.join("planet-0002-a+2-1.conf")).unwrap();
        agent.entry = EntryName::parse("planet-0002-a+2-1.conf");
        assert_eq!(ask(&agent), "error the other slot has no bootable entry to fall back to\n");
        assert!(REBOOTS.with(|r| r.borrow().is_empty()));

        let old = planet_config::bootentry::entry_conf("Planet 0.9", "0.9", 'b', "planet.slot=b");
        std::fs::write(entries.join("planet-0001-b.conf"), old).unwrap();
        assert_eq!(ask(&agent), "ok trial ended; rebooting into the previous release\n");
        assert!(entries.join("planet-0002-a+0-1.conf").exists() && !entries.join("planet-0002-a+2-1.conf").exists());
        assert_eq!(REBOOTS.with(|r| r.borrow().clone()), ["update trial failed"]);
        let status = std::fs::read_to_string(t.path().join("run/status.json")).unwrap();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["state"], "trial-failed");
        assert_eq!(status["message"], "etcd [2J is unhealthy");

        // Once ended, the trial stays ended: no second request, no blessing, no trial loop.
        assert_eq!(ask(&agent), "error release 1 is not on trial\n");
        agent.bless();
        assert!(entries.join("planet-0002-a+0-1.conf").exists());
        let agent = std::sync::Arc::new(agent);
        let (done, finished) = std::sync::mpsc::channel();
        let a = agent.clone();
        std::thread::spawn(move || {
            a.run_loop();
            let _ = done.send(());
        });
        assert!(finished.recv_timeout(Duration::from_secs(5)).is_ok(), "the trial loop went on");
    }

    /// `rollback-to`: the other slot's entry of that release becomes the newest, counted; a
    /// release not there, running, failed here, or without its boot files is refused.
    #[test]
    fn the_other_slots_release_is_brought_back_on_request() {
        let t = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32], [9; 8]);
        let mut agent = machine(t.path(), &key);
        // Release 2 runs in slot b (blessed); slot a still holds release 1.
        agent.running_slot = 'b';
        agent.release = "2".into();
        agent.target = Some(Target { slot: 'a', dev: t.path().join("slot-b"), bytes: 8 << 20, running_dev: None });
        let entries = t.path().join("esp/loader/entries");
        let new = planet_config::bootentry::entry_conf("Planet 2", "2", 'b', "planet.slot=b");
        std::fs::write(entries.join("planet-0002-b.conf"), new).unwrap();
        let listener = listen(&t.path().join("run")).unwrap();
        let ask =
            |agent: &Agent, release: &str| exchange(agent, &listener, format!("rollback-to {release}\n").into_bytes());

        let a = ask(&agent, "1");
        assert!(a.starts_with("error the entry planet-0001-a.conf names /planet-a/vmlinuz, which is missing"), "{a}");
        std::fs::create_dir_all(t.path().join("esp/planet-a")).unwrap();
        for f in ["vmlinuz", "initramfs.img"] {
            std::fs::write(t.path().join("esp/planet-a").join(f), b"boot").unwrap();
        }
        assert_eq!(ask(&agent, "3"), "error no entry of release 3 in slot a (it was replaced or failed)\n");
        assert_eq!(ask(&agent, "2"), "error release 2 is already running\n");

        std::fs::write(t.path().join("state/failed"), "1\n").unwrap();
        let a = ask(&agent, "1");
        assert!(a.starts_with("error release 1 already failed its trial on this machine"), "{a}");
        agent.set_status("idle", "");
        let status = std::fs::read_to_string(t.path().join("run/status.json")).unwrap();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["failed"], serde_json::json!(["1"]));
        std::fs::remove_file(t.path().join("state/failed")).unwrap();

        agent.trial.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(ask(&agent, "1"), "error release 2 is still on trial; updates wait until it is blessed\n");
        agent.trial.store(false, std::sync::atomic::Ordering::SeqCst);
        {
            let _installing = agent.busy.lock().unwrap();
            let e = agent.rollback_to("1").unwrap_err();
            assert_eq!(e.to_string(), "another update is in progress");
        }
        assert!(REBOOTS.with(|r| r.borrow().is_empty()));

        assert_eq!(ask(&agent, "1"), "ok rollback to 1 in planet-0003-a+3.conf; rebooting\n");
        assert!(entries.join("planet-0003-a+3.conf").exists() && !entries.join("planet-0001-a.conf").exists());
        assert!(entries.join("planet-0002-b.conf").exists());
        assert_eq!(REBOOTS.with(|r| r.borrow().clone()), ["update to planet-0003-a+3.conf"]);
        let status = std::fs::read_to_string(t.path().join("run/status.json")).unwrap();
        assert!(status.contains("\"state\": \"rollback\"") && status.contains("\"failed\": []"), "{status}");

        // A bad entry of the release is not brought back.
        std::fs::rename(entries.join("planet-0003-a+3.conf"), entries.join("planet-0003-a+0-3.conf")).unwrap();
        assert_eq!(ask(&agent, "1"), "error no entry of release 1 in slot a (it was replaced or failed)\n");
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("status\n"), Ok(Request::Status));
        assert_eq!(parse_request("install\n"), Ok(Request::Install { allow_downgrade: false }));
        assert_eq!(
            parse_request("install-url http://10.0.0.1/u.planet\n"),
            Ok(Request::InstallUrl { url: "http://10.0.0.1/u.planet".into(), allow_downgrade: false })
        );
        assert_eq!(
            parse_request("install-url --allow-downgrade http://10.0.0.1/u.planet\n"),
            Ok(Request::InstallUrl { url: "http://10.0.0.1/u.planet".into(), allow_downgrade: true })
        );
        assert_eq!(parse_request("install --allow-downgrade\n"), Ok(Request::Install { allow_downgrade: true }));
        assert!(parse_request("install --force\n").is_err());
        assert!(parse_request("install-url --allow-downgrade\n").is_err());
        assert!(parse_request("install-url \n").is_err());
        assert_eq!(
            parse_request("check-url http://10.0.0.1:6442/planet-2.planet\n"),
            Ok(Request::CheckUrl { url: "http://10.0.0.1:6442/planet-2.planet".into(), allow_downgrade: false })
        );
        assert!(parse_request("check-url\n").is_err());
        assert!(parse_request("reboot\n").unwrap_err().contains("unknown request"));
        assert_eq!(
            parse_request("fail-trial  node not Ready\tafter 5m\n"),
            Ok(Request::FailTrial { reason: "node not Ready after 5m".into() })
        );
        let Ok(Request::FailTrial { reason }) = parse_request(&format!("fail-trial {}\n", "é".repeat(300))) else {
            panic!("a long reason is cut, not refused")
        };
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
        assert!(parse_request("fail-trial\n").unwrap_err().contains("fail-trial REASON"));
        assert_eq!(parse_request("rollback-to 1.2.0\n"), Ok(Request::RollbackTo { release: "1.2.0".into() }));
        assert!(parse_request("rollback-to\n").is_err());
        assert!(parse_request("rollback-to 1 2\n").is_err());
        assert!(parse_request("rollback-to ../1\n").is_err());
    }
}
