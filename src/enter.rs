//! `planet-image enter`: a shell, or one command, inside the Planet container of a VM that
//! `planet-image run` started — over a virtio-serial port, so no network port is opened on the
//! machine and nothing depends on the guest's networking; it works under TCG as under KVM.
//!
//! `run` backs the port with a Unix socket in a private per-user directory (0700):
//! `${XDG_RUNTIME_DIR}/planet-image/vms/NAME/enter.sock`, or `/tmp/planet-image-UID/vms/…`
//! without XDG_RUNTIME_DIR (or wherever `run --enter-socket` says). Next to the socket,
//! `SOCKET.run` is flocked by `run` for the VM's life (so names are unique and `enter` can tell
//! a stale socket) and `SOCKET.lock` by the `enter` session using the channel: the port carries
//! one session at a time, and a second client would otherwise just hang.
//!
//! The protocol is planet-init's own ([`protocol`], the same source file), so both ends agree
//! by construction. The terminal is put in raw mode only in tty mode and restored on every way
//! out (return, error, SIGTERM/SIGHUP/SIGINT/SIGQUIT while raw).

#[path = "../host/src/enter/protocol.rs"]
pub mod protocol;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocol::{Decoder, Frame, Hello, DATA_CHUNK, VERSION};

use crate::util::sys;

/// The virtio-serial port's name (planet-init looks for it).
pub const PORT_NAME: &str = "org.planet-image.enter";
const CAP: usize = 256 * 1024;
/// Longest Unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the VMs' sockets live: `$XDG_RUNTIME_DIR/planet-image/vms`, else
/// `/tmp/planet-image-UID/vms`.
pub fn vms_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("planet-image/vms"),
        None => PathBuf::from(format!("/tmp/planet-image-{}", sys::getuid())).join("vms"),
    }
}

/// A VM name: letters, digits, `.`, `_`, `-`; not starting with a dot; at most 64 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        bail!("{name:?} is not a VM name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'");
    }
    Ok(())
}

/// The default VM name from an image path: its file stem, other characters replaced by `-`.
pub fn default_name(image: &Path) -> String {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut n: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '-' })
        .collect();
    n = n.trim_start_matches('.').chars().take(60).collect();
    if n.is_empty() {
        "vm".into()
    } else {
        n
    }
}

fn sibling(socket: &Path, suffix: &str) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `dir` with mode 0700 if missing; an existing one must be a directory of ours that
/// nobody else can enter (without XDG_RUNTIME_DIR these live in /tmp, where anyone could have
/// made them first).
fn private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let uid = sys::getuid();
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        bail!(
            "{} is not a private directory of this user (it must be a directory owned by uid {uid} with mode 0700); \
             remove it or set XDG_RUNTIME_DIR",
            dir.display()
        );
    }
    Ok(())
}

/// The per-user directories down to a VM's: `planet-image/`, `vms/`, `vms/NAME/`, each private.
fn private_vm_dir(vm_dir: &Path) -> Result<()> {
    let vms = vms_dir();
    if let Some(base) = vms.parent() {
        if let Some(top) = base.parent() {
            std::fs::create_dir_all(top).with_context(|| format!("creating {}", top.display()))?;
        }
        private_dir(base)?;
    }
    private_dir(&vms)?;
    private_dir(vm_dir)
}

fn flock(f: &File, exclusive: bool) -> std::io::Result<bool> {
    match sys::flock(f, if exclusive { libc::LOCK_EX } else { libc::LOCK_SH }) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

fn open_lock(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Whether a `planet-image run` holds the VM lock of `socket`.
fn vm_running(socket: &Path) -> bool {
    let Ok(f) = std::fs::File::open(sibling(socket, ".run")) else { return false };
    matches!(flock(&f, false), Ok(false))
}

/// Names of the VMs running now, for error messages.
fn running_vms() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(vms_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| vm_running(&e.path().join("enter.sock")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The host end of a VM's enter channel, held by `planet-image run` while the VM runs.
pub struct Channel {
    pub name: String,
    pub socket: PathBuf,
    /// `--enter-socket` was given: `enter` needs the path.
    by_path: bool,
    _run_lock: File,
}

impl Channel {
    /// Picks the socket (`--enter-socket`, or by `--name`, by default the image's stem; a
    /// default name already in use gets a `-2`, `-3`… suffix) and takes its VM lock.
    pub fn prepare(name: Option<&str>, socket: Option<&Path>, image: &Path) -> Result<Channel> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let candidates: Vec<(String, PathBuf)> = match (socket, name) {
            (Some(s), n) => {
                let s = std::path::absolute(s).with_context(|| format!("resolving {}", s.display()))?;
                vec![(n.map_or_else(|| s.display().to_string(), str::to_string), s)]
            }
            (None, Some(n)) => vec![(n.to_string(), vms_dir().join(n).join("enter.sock"))],
            (None, None) => {
                let base = default_name(image);
                (1..=100)
                    .map(|i| if i == 1 { base.clone() } else { format!("{base}-{i}") })
                    .map(|n| {
                        let p = vms_dir().join(&n).join("enter.sock");
                        (n, p)
                    })
                    .collect()
            }
        };
        let explicit = socket.is_some() || name.is_some();
        for (name, sock) in candidates {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "the enter socket path {} is longer than a Unix socket allows ({MAX_SOCKET_PATH} bytes); \
                     give a shorter one with --enter-socket",
                    sock.display()
                );
            }
            let dir = sock.parent().unwrap_or(Path::new("/"));
            if socket.is_some() {
                if !dir.is_dir() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
            } else {
                private_vm_dir(dir)?;
            }
            let Some(run_lock) = lock_run_file(&sibling(&sock, ".run"))? else {
                if explicit {
                    let pid = std::fs::read_to_string(sibling(&sock, ".run")).unwrap_or_default();
                    bail!(
                        "a VM using {} is already running (planet-image run, pid {}); give this one another \
                         --name or --enter-socket",
                        sock.display(),
                        pid.trim()
                    );
                }
                continue;
            };
            let _ = run_lock.set_len(0);
            let _ = (&run_lock).write_all(format!("{}\n", std::process::id()).as_bytes());
            // A socket left by a VM that was killed.
            if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(&sock).with_context(|| format!("removing the stale {}", sock.display()))?;
            }
            return Ok(Channel { name, socket: sock, by_path: socket.is_some(), _run_lock: run_lock });
        }
        bail!("100 VMs named after {} are running already; give this one a --name", image.display())
    }

    /// QEMU's arguments for the port and its socket (QEMU creates the socket, mode 0600 by
    /// the umask `run` gives it).
    pub fn qemu_args(&self) -> Vec<String> {
        let path = self.socket.display().to_string().replace(',', ",,");
        vec![
            "-device".into(),
            "virtio-serial-pci,id=enter-serial".into(),
            "-chardev".into(),
            format!("socket,id=enter,path={path},server=on,wait=off"),
            "-device".into(),
            format!("virtserialport,bus=enter-serial.0,chardev=enter,name={PORT_NAME}"),
        ]
    }

    /// How a user reaches this VM.
    pub fn enter_hint(&self) -> String {
        if self.by_path {
            format!("planet-image enter {}", self.socket.display())
        } else {
            format!("planet-image enter {}", self.name)
        }
    }
}

/// Takes the VM lock at `path`: `None` when another `run` holds it. A lock taken on a file that
/// its holder removed meanwhile (a VM that just ended) is taken again on the new file.
fn lock_run_file(path: &Path) -> Result<Option<File>> {
    for _ in 0..10 {
        let f = open_lock(path)?;
        if !flock(&f, true).with_context(|| format!("locking {}", path.display()))? {
            return Ok(None);
        }
        let same = match (f.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(Some(f));
        }
    }
    bail!("{} keeps being replaced while it is locked", path.display())
}

impl Drop for Channel {
    /// The VM is gone: its socket, lock files and (when named) its empty directory go too.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(sibling(&self.socket, ".lock"));
        // While still holding it: whoever opened it meanwhile notices the replacement.
        let _ = std::fs::remove_file(sibling(&self.socket, ".run"));
        if !self.by_path {
            if let Some(dir) = self.socket.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// What `planet-image enter` was asked.
#[derive(Debug, Clone)]
pub struct EnterRequest {
    /// A VM name or a socket path.
    pub vm: String,
    /// The command; empty: the container's login shell.
    pub command: Vec<OsString>,
    /// `Some(true)`: a terminal even when not on one; `Some(false)`: never; `None`: when stdin
    /// and stdout are terminals.
    pub tty: Option<bool>,
    /// How long to wait for the machine to answer.
    pub wait: Duration,
}

/// Resolves `vm` to (a name for messages, the socket).
fn resolve(vm: &str) -> Result<(String, PathBuf)> {
    let as_path = Path::new(vm);
    if vm.contains('/') || std::fs::symlink_metadata(as_path).is_ok_and(|m| m.file_type().is_socket()) {
        return Ok((vm.to_string(), as_path.to_path_buf()));
    }
    check_name(vm)?;
    Ok((vm.to_string(), vms_dir().join(vm).join("enter.sock")))
}

fn not_running(name: &str, socket: &Path, why: &str) -> anyhow::Error {
    if name.contains('/') {
        return anyhow::anyhow!(
            "no VM is running on {name} ({why} {}): start one with `planet-image run IMAGE --enter-socket {name}`",
            socket.display()
        );
    }
    let running = running_vms();
    let list = if running.is_empty() { "none".to_string() } else { running.join(", ") };
    anyhow::anyhow!(
        "VM {name} is not running ({why} {}). Start it with `planet-image run IMAGE --name {name}` \
         (a VM is named after its image file by default). Running VMs: {list}",
        socket.display()
    )
}

/// Signals that end a terminal session (the command in the VM is then hung up).
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT];

/// The terminal in raw mode; restored when dropped.
struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    fn enable(fd: RawFd) -> Result<RawTerminal> {
        let saved = sys::terminal_settings(fd).context("reading the terminal's settings")?;
        sys::set_terminal_settings(fd, &sys::raw_mode(saved)).context("putting the terminal in raw mode")?;
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // The settings read in enable().
        let _ = sys::set_terminal_settings(self.fd, &self.saved);
    }
}

fn isatty(fd: RawFd) -> bool {
    sys::isatty(fd)
}

fn window_size() -> (u16, u16) {
    for fd in [0, 1, 2] {
        if let Ok((rows, cols)) = sys::window_size(fd) {
            if rows > 0 {
                return (rows, cols);
            }
        }
    }
    (0, 0)
}

/// Runs the session; the command's exit status, or what the machine said when it could not
/// run it (126, 127, 255 with the message on stderr).
pub fn run(req: &EnterRequest) -> Result<i32> {
    let (name, socket) = resolve(&req.vm)?;
    let lock_path = sibling(&socket, ".lock");
    let lock = match std::fs::symlink_metadata(&socket) {
        Ok(_) => open_lock(&lock_path)?,
        Err(_) => return Err(not_running(&name, &socket, "there is no enter socket")),
    };
    if !flock(&lock, true).with_context(|| format!("locking {}", lock_path.display()))? {
        bail!(
            "another `planet-image enter` session is using VM {name}: its channel carries one session at a \
             time; wait for that one to end"
        );
    }
    let stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(not_running(&name, &socket, "nothing listens on"));
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
    };

    let tty = req.tty.unwrap_or_else(|| isatty(0) && isatty(1));
    let (rows, cols) = if tty { window_size() } else { (0, 0) };
    let term = if tty { std::env::var("TERM").unwrap_or_default() } else { String::new() };
    let term = if term.len() <= protocol::MAX_TERM && term.bytes().all(|b| b.is_ascii_graphic()) {
        term
    } else {
        "xterm".into()
    };
    let hello = Hello {
        version: VERSION,
        nonce: rand::random(),
        tty,
        rows,
        cols,
        term,
        argv: req.command.iter().map(|a| a.clone().into_vec()).collect(),
    };
    hello.check().map_err(|why| anyhow::anyhow!("cannot send this command: {why}"))?;
    stream.set_nonblocking(true)?;
    let mut s = Session { stream, name: name.clone(), out: Frame::Hello(hello.clone()).to_bytes(), sent: 0 };

    // Only our WELCOME counts: anything before it is from an earlier session.
    let mut dec = Decoder::new();
    let deadline = Instant::now() + req.wait;
    loop {
        match dec.next_frame() {
            Ok(Some(Frame::Welcome { nonce, .. })) if nonce == hello.nonce => break,
            Ok(Some(_)) | Err(_) => continue,
            Ok(None) => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "VM {name} did not answer on its enter channel within {} s: it may still be booting (planet-init \
                 serves `enter` from just before it starts the container; --wait SECONDS waits longer), or its \
                 planet-init has no `enter`",
                req.wait.as_secs()
            );
        }
        if !s.pump(&mut dec, Duration::from_millis(200))? {
            bail!("VM {name} closed its enter channel before answering (the machine may be shutting down)");
        }
    }

    let raw = if tty && isatty(0) { Some(RawTerminal::enable(0)?) } else { None };
    if tty {
        // Recorded without SA_RESTART: poll returns to look at them.
        let mut signals = STOP_SIGNALS.to_vec();
        signals.push(libc::SIGWINCH);
        let _ = sys::catch_signals(&signals, false);
    }
    let outcome = s.relay(&mut dec);
    // The terminal back to normal before anything is printed.
    drop(raw);
    match outcome? {
        Outcome::Exit(code) => Ok(code),
        Outcome::Refused(status, message) => {
            eprintln!("planet-image: error: VM {name}: {message}");
            Ok(status.into())
        }
        Outcome::Signal(sig) => {
            eprintln!("planet-image: stopped by signal {sig}; the command in VM {name} is hung up");
            Ok(128 + sig)
        }
    }
}

/// How a session ended.
enum Outcome {
    Exit(i32),
    /// The machine could not run the command: the status to exit with, and why.
    Refused(u8, String),
    /// A signal told us to stop.
    Signal(i32),
}

struct Session {
    stream: UnixStream,
    name: String,
    /// Frames not yet written.
    out: Vec<u8>,
    sent: usize,
}

impl Session {
    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    fn write_some(&mut self) -> Result<()> {
        use std::io::ErrorKind::{Interrupted, WouldBlock};
        match (&self.stream).write(self.out.get(self.sent..).unwrap_or_default()) {
            Ok(n) => self.sent += n,
            Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => {}
            Err(e) => return Err(e).with_context(|| format!("writing to VM {}'s enter channel", self.name)),
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// One round of writing and reading the socket; false when the machine closed it.
    fn pump(&mut self, dec: &mut Decoder, wait: Duration) -> Result<bool> {
        let mut events = libc::POLLIN;
        if self.pending() > 0 {
            events |= libc::POLLOUT;
        }
        let mut p = [libc::pollfd { fd: self.stream.as_raw_fd(), events, revents: 0 }];
        let _ = sys::poll(&mut p, wait.as_millis() as libc::c_int);
        let [p] = p;
        if p.revents & libc::POLLOUT != 0 {
            self.write_some()?;
        }
        if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            return self.read_some(dec);
        }
        Ok(true)
    }

    fn read_some(&mut self, dec: &mut Decoder) -> Result<bool> {
        use std::io::Read;
        let mut buf = [0u8; DATA_CHUNK];
        match (&self.stream).read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                dec.push(buf.get(..n).unwrap_or_default());
                Ok(true)
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => Ok(true),
            Err(e) => Err(e).with_context(|| format!("reading VM {}'s enter channel", self.name)),
        }
    }

    /// Relays until the command ends, the machine refuses it or a signal stops us.
    fn relay(&mut self, dec: &mut Decoder) -> Result<Outcome> {
        let mut stdin_open = true;
        let mut buf = [0u8; DATA_CHUNK];
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr();
        loop {
            // Frames already read (some may have come with the WELCOME).
            loop {
                let frame =
                    dec.next_frame().map_err(|e| anyhow::anyhow!("VM {} broke the enter protocol: {e}", self.name))?;
                match frame {
                    None => break,
                    Some(Frame::Stdout(d)) => {
                        stdout.write_all(&d).and_then(|_| stdout.flush()).context("writing to stdout")?;
                    }
                    Some(Frame::Stderr(d)) => {
                        stderr.write_all(&d).context("writing to stderr")?;
                    }
                    Some(Frame::Exit { code, .. }) => return Ok(Outcome::Exit(code)),
                    Some(Frame::Error { status, message }) => return Ok(Outcome::Refused(status, message)),
                    Some(Frame::Welcome { .. }) => {}
                    Some(other) => {
                        bail!("VM {} sent an unexpected frame type 0x{:02x}", self.name, other.kind())
                    }
                }
            }
            if let Some(sig) = STOP_SIGNALS.into_iter().find(|s| sys::take_caught(*s)) {
                return Ok(Outcome::Signal(sig));
            }
            if sys::take_caught(libc::SIGWINCH) {
                let (rows, cols) = window_size();
                Frame::Resize { rows, cols }.encode(&mut self.out);
            }

            let mut pfds = vec![libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events: libc::POLLIN | if self.pending() > 0 { libc::POLLOUT } else { 0 },
                revents: 0,
            }];
            if stdin_open && self.pending() < CAP {
                pfds.push(libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 });
            }
            if sys::poll(&mut pfds, 250).is_err() {
                continue; // EINTR: look at the signal flags
            }
            let sock = pfds.first().map_or(0, |p| p.revents);
            if sock & libc::POLLOUT != 0 {
                self.write_some()?;
            }
            if sock & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !self.read_some(dec)? {
                bail!(
                    "VM {} closed the enter channel before the command finished (the machine may have powered off)",
                    self.name
                );
            }
            let input = pfds.get(1).map_or(0, |p| p.revents);
            if input & libc::POLLNVAL != 0 {
                stdin_open = false;
                Frame::Stdin(Vec::new()).encode(&mut self.out);
            } else if input != 0 {
                match sys::read(0, &mut buf) {
                    Ok(n) if n > 0 => {
                        Frame::Stdin(buf.get(..n).unwrap_or_default().to_vec()).encode(&mut self.out);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => {
                        stdin_open = false;
                        Frame::Stdin(Vec::new()).encode(&mut self.out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_defaults_derived_from_the_image() {
        assert!(check_name("planet-1.dev_a").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_name(Path::new("/x/planet.qcow2")), "planet");
        assert_eq!(default_name(Path::new("my image (1).raw")), "my-image--1-");
        assert_eq!(default_name(Path::new("/x/.qcow2")), "qcow2");
        assert_eq!(default_name(Path::new("/")), "vm");
    }

    #[test]
    fn channels_take_the_next_free_default_name_and_refuse_a_taken_explicit_one() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("demo.qcow2");
        let sock = tmp.path().join("s/enter.sock");
        let a = Channel::prepare(None, Some(&sock), &image).unwrap();
        assert_eq!(a.socket, sock);
        let e = Channel::prepare(None, Some(&sock), &image).err().unwrap();
        assert!(e.to_string().contains("is already running"), "{e}");
        let args = a.qemu_args().join(" ");
        assert!(args.contains(&format!("path={},server=on,wait=off", sock.display())), "{args}");
        assert!(args.contains("name=org.planet-image.enter"), "{args}");
        drop(a);
        assert!(!sock.exists() && !sibling(&sock, ".run").exists(), "cleaned up");
        assert!(Channel::prepare(None, Some(&sock), &image).is_ok());
        let long = tmp.path().join("x".repeat(120));
        assert!(Channel::prepare(None, Some(&long), &image).err().unwrap().to_string().contains("longer than"));
    }

    #[test]
    fn per_user_directories_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("vms");
        private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        private_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&d).unwrap_err().to_string().contains("is not a private directory"));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        assert!(private_dir(&link).is_err(), "a symlink is not followed");
    }

    #[test]
    fn enter_explains_a_missing_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let req = EnterRequest {
            vm: tmp.path().join("nope.sock").display().to_string(),
            command: vec!["true".into()],
            tty: Some(false),
            wait: Duration::from_secs(1),
        };
        let e = run(&req).unwrap_err().to_string();
        assert!(e.contains("no VM is running on") && e.contains("planet-image run IMAGE --enter-socket"), "{e}");
    }
}
