//! `planet-image enter`, guest side: a shell or one command inside the running Planet
//! container, reached from the host without any network port.
//!
//! `planet-image run` gives every VM a virtio-serial port named [`PORT_NAME`], backed on the
//! host by a Unix socket in a private directory. planet-init finds the port through sysfs
//! (`/sys/class/virtio-ports/vport*/name`; there is no udev, so the `/dev` node is made from
//! the `dev` file when devtmpfs has none) and serves it from one thread, one session at a time:
//! a HELLO asks for a command (or the login shell), with or without a terminal; the command runs
//! in the container through the helper in [`exec`]; its output, its exit status or an error go
//! back, framed as [`protocol`] describes. No network is involved, so it works before, without
//! and regardless of the machine's networking, with KVM or TCG alike.
//!
//! Whatever arrives on the port — garbage, truncated or oversized frames, a client that
//! vanishes mid-session — ends at most that session: lengths are checked before anything is
//! allocated, buffers are bounded, the command of an abandoned session is hung up, and the
//! next session is found by its magic. Nothing here may panic: PID 1's panic halts the machine.

pub mod exec;
pub mod protocol;

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use exec::{container_init, helper_main, run_in_container, HELPER_FLAG};
use exec::{Helper, Report, Stdio, STATUS_FAILED};
use protocol::{encode_data, Decoder, Frame, Hello, ProtocolError, DATA_CHUNK, VERSION};

use crate::event;
use crate::sys::fd::{self, poll_one, read as read_fd, set_nonblocking, write as write_fd};

/// The virtio-serial port's name; `planet-image run` creates it.
pub const PORT_NAME: &str = "org.planet-image.enter";
/// Bytes buffered in either direction before the other side is made to wait.
const CAP: usize = 256 * 1024;
/// How long output is still collected after the command exited (a background process may
/// hold its pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long a hung-up command gets before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(5);

/// Finds the port's device node, creating it from sysfs when /dev lacks it.
pub fn find_port(sysfs: &Path, dev: &Path) -> Result<PathBuf, String> {
    let dir = sysfs.join("class/virtio-ports");
    let entries =
        std::fs::read_dir(&dir).map_err(|_| format!("no virtio-serial ports ({} is missing)", dir.display()))?;
    for e in entries.flatten() {
        let Ok(name) = std::fs::read_to_string(e.path().join("name")) else { continue };
        if name.trim() != PORT_NAME {
            continue;
        }
        let node = dev.join(e.file_name());
        if std::fs::symlink_metadata(&node).is_err() {
            let devno = std::fs::read_to_string(e.path().join("dev")).unwrap_or_default();
            let (major, minor) = devno
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or_else(|| format!("{} has no device number", e.path().display()))?;
            let c = crate::sys::cstr(&node).map_err(|e| e.to_string())?;
            fd::mknod_char(&c, 0o600, major, minor).map_err(|e| format!("creating {}: {e}", node.display()))?;
        }
        return Ok(node);
    }
    Err(format!("no virtio-serial port named {PORT_NAME}"))
}

/// Serves `planet-image enter` from a thread of its own, or says on the console why not
/// (`planet-init: enter unavailable reason=…`: no such port outside `planet-image run`).
pub fn start(sysfs: &Path, dev: &Path) {
    let (sysfs, dev) = (sysfs.to_path_buf(), dev.to_path_buf());
    if let Err(e) = std::thread::Builder::new().name("enter".into()).spawn(move || run_server(&sysfs, &dev)) {
        event!("enter unavailable", reason = format!("starting its thread: {e}"));
    }
}

fn run_server(sysfs: &Path, dev: &Path) {
    // virtio_console was loaded by coldplug; its ports appear asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let path = loop {
        match find_port(sysfs, dev) {
            Ok(p) => break p,
            Err(why) if Instant::now() >= deadline => {
                event!("enter unavailable", reason = why);
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    for attempt in 1..=5 {
        let c = match crate::sys::cstr(&path) {
            Ok(c) => c,
            Err(e) => {
                event!("enter unavailable", reason = e);
                return;
            }
        };
        match fd::open(&c, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY) {
            Err(e) => event!("enter port failed", port = path.display(), error = e),
            Ok(fd) => {
                if attempt == 1 {
                    event!("enter ready", port = path.display());
                }
                let e = serve(fd.as_raw_fd(), &container_init);
                event!("enter port failed", port = path.display(), error = e);
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    event!("enter unavailable", reason = "the port keeps failing");
}

/// Serves sessions on `port` (non-blocking) until reading it fails for good. `target` names
/// the container's init or says why there is none.
pub fn serve(port: RawFd, target: &dyn Fn() -> Result<libc::pid_t, String>) -> std::io::Error {
    serve_with(port, target, c"/proc/self/exe")
}

/// [`serve`] with another planet-init binary for the helper (tests).
fn serve_with(port: RawFd, target: &dyn Fn() -> Result<libc::pid_t, String>, exe: &CStr) -> std::io::Error {
    let mut dec = Decoder::new();
    let mut next: Option<Hello> = None;
    loop {
        let hello = match next.take() {
            Some(h) => h,
            None => match wait_hello(port, &mut dec) {
                Ok(h) => h,
                Err(e) => return e,
            },
        };
        next = session(port, &mut dec, hello, target, exe);
    }
}

/// Reads until a HELLO arrives; answers malformed ones.
fn wait_hello(port: RawFd, dec: &mut Decoder) -> std::io::Result<Hello> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(Frame::Hello(h))) => return Ok(h),
                // Not a session start: look for the next one.
                Ok(Some(_)) => dec.resync(),
                Ok(None) => break,
                Err(ProtocolError::BadHello { nonce, what, .. }) => {
                    let mut s = Out::new(port);
                    s.queue(&Frame::Welcome { version: VERSION, nonce });
                    s.queue(&Frame::Error { status: STATUS_FAILED, message: format!("malformed request: {what}") });
                    s.flush(Duration::from_secs(2));
                }
                Err(_) => {}
            }
        }
        poll_one(port, libc::POLLIN, Duration::from_secs(1));
        match read_fd(port, &mut buf) {
            // No client connected: a virtio port reads 0 (and polls as hung up) until one is.
            Ok(0) => {
                dec.reset();
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(n) => dec.push(buf.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Frames on their way to the client, written as the port takes them.
struct Out {
    port: RawFd,
    buf: Vec<u8>,
    sent: usize,
    /// The client went away (or the port failed).
    gone: bool,
    /// Since when the port has looked hung up without a break (see [`HUP_GRACE`]).
    hup_since: Option<Instant>,
}

/// How long the port must look hung up before the client counts as gone. virtio-serial tells
/// the guest that the host side connected on its control queue and delivers the client's bytes
/// on the data queue, in no fixed order: a session that follows another at once can see its
/// HELLO while the port still polls as hung up from the last client's goodbye.
const HUP_GRACE: Duration = Duration::from_secs(3);

impl Out {
    fn new(port: RawFd) -> Out {
        Out { port, buf: Vec::new(), sent: 0, gone: false, hup_since: None }
    }
    fn queue(&mut self, f: &Frame) {
        f.encode(&mut self.buf);
    }
    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }
    fn write_some(&mut self) {
        match write_fd(self.port, self.buf.get(self.sent..).unwrap_or_default()) {
            Ok(n) => self.sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(_) => self.gone = true,
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent > CAP {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
    }
    /// Records whether the port looks hung up now; true once it has for [`HUP_GRACE`]. While
    /// it does, waits a little, since poll reports a hang-up at once and would spin.
    fn hung_up(&mut self, now: bool) -> bool {
        if !now {
            self.hup_since = None;
            return false;
        }
        let since = *self.hup_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= HUP_GRACE {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    }

    /// Writes what is queued, for at most `limit`.
    fn flush(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pending() > 0 && !self.gone && Instant::now() < deadline {
            let r = poll_one(self.port, libc::POLLOUT, Duration::from_millis(100));
            if r & (libc::POLLERR | libc::POLLNVAL) != 0 || self.hung_up(r & libc::POLLHUP != 0) {
                self.gone = true;
            } else if r & libc::POLLOUT != 0 {
                self.write_some();
            }
        }
    }
}

/// How a session ended.
enum End {
    Exited(i32, i32),
    Failed(u8, String),
    ClientGone,
    Protocol(String),
    /// A new HELLO arrived mid-session: its client replaced the old one.
    NextHello(Hello),
}

/// Runs one session; returns a HELLO that arrived during it, to be served next.
fn session(
    port: RawFd,
    dec: &mut Decoder,
    hello: Hello,
    target: &dyn Fn() -> Result<libc::pid_t, String>,
    exe: &CStr,
) -> Option<Hello> {
    let mut out = Out::new(port);
    out.queue(&Frame::Welcome { version: VERSION, nonce: hello.nonce });
    // At once: starting the command can take long on a loaded machine, and the client gives up
    // on a channel that does not answer.
    out.flush(Duration::from_secs(2));
    let what = hello.argv.first().map_or("login shell".into(), |a| String::from_utf8_lossy(a).into_owned());
    let end = if hello.version != VERSION {
        End::Failed(
            STATUS_FAILED,
            format!(
                "this planet-image speaks enter protocol version {}, the machine's planet-init version {VERSION}: \
                 use the planet-image the image was built with",
                hello.version
            ),
        )
    } else {
        match target() {
            Err(why) => End::Failed(STATUS_FAILED, why),
            Ok(pid) => {
                let stdio = if hello.tty {
                    let or = |v: u16, d: u16| if v == 0 { d } else { v };
                    Stdio::Tty(or(hello.rows, 24), or(hello.cols, 80))
                } else {
                    Stdio::Pipes
                };
                match Helper::spawn_exe(exe, pid, stdio, &hello.term, &hello.argv) {
                    Err(e) => End::Failed(STATUS_FAILED, format!("starting the command in the container: {e:#}")),
                    Ok(mut h) => {
                        event!("enter session", command = what, tty = hello.tty);
                        let end = relay(&mut out, dec, &mut h, hello.tty);
                        match &end {
                            End::ClientGone | End::Protocol(_) | End::NextHello(_) => {
                                let (code, _) = h.stop(libc::SIGHUP, HANGUP_GRACE);
                                event!("enter session hung up", command = what, status = code);
                            }
                            _ => {}
                        }
                        end
                    }
                }
            }
        }
    };
    match end {
        End::Exited(code, signal) => {
            out.queue(&Frame::Exit { code, signal });
            out.flush(Duration::from_secs(10));
            None
        }
        End::Failed(status, message) => {
            out.queue(&Frame::Error { status, message });
            out.flush(Duration::from_secs(5));
            None
        }
        End::Protocol(why) => {
            event!("enter protocol error", error = why);
            out.queue(&Frame::Error { status: STATUS_FAILED, message: format!("protocol error: {why}") });
            out.flush(Duration::from_secs(1));
            None
        }
        End::ClientGone => {
            dec.reset();
            None
        }
        End::NextHello(h) => Some(h),
    }
}

/// Moves bytes between the port and the command until it ends or the client goes.
fn relay(out: &mut Out, dec: &mut Decoder, h: &mut Helper, tty: bool) -> End {
    let mut to_child: Vec<u8> = Vec::new();
    let mut child_in = h.stdin.take();
    let mut child_out = h.stdout.take();
    let mut child_err = h.stderr.take();
    for fd in [&child_in, &child_out, &child_err].into_iter().flatten() {
        if let Err(e) = set_nonblocking(fd.as_raw_fd()) {
            return End::Failed(STATUS_FAILED, format!("setting up the command's pipes: {e}"));
        }
    }
    let mut stdin_eof = false;
    let mut ready = false;
    let mut winsize: Option<(u16, u16)> = None;
    let mut control_open = true;
    let mut failed: Option<(u8, String)> = None;
    let mut reported: Option<(i32, i32)> = None;
    let mut exited: Option<((i32, i32), Instant)> = None;
    let mut buf = [0u8; DATA_CHUNK];
    loop {
        // Frames read so far (the HELLO may have come with its first STDIN frames).
        loop {
            match dec.next_frame() {
                Ok(None) => break,
                // A terminal has no end of input: its EOF character (^D) stands for it.
                Ok(Some(Frame::Stdin(d))) if d.is_empty() && tty && !stdin_eof => {
                    stdin_eof = true;
                    to_child.push(0x04);
                }
                Ok(Some(Frame::Stdin(d))) if d.is_empty() => stdin_eof = true,
                Ok(Some(Frame::Stdin(d))) => {
                    // After end of input, or once the command closed its stdin, data is dropped.
                    if !stdin_eof && (child_in.is_some() || !ready) {
                        to_child.extend_from_slice(&d);
                    }
                }
                Ok(Some(Frame::Resize { rows, cols })) => {
                    winsize = Some((rows, cols));
                    if let (true, Some(m)) = (tty, &child_out) {
                        set_winsize(m.as_fd(), rows, cols);
                    }
                }
                Ok(Some(Frame::Hello(next))) => return End::NextHello(next),
                Ok(Some(f)) => {
                    return End::Protocol(format!("unexpected frame type 0x{:02x} from the client", f.kind()))
                }
                Err(e) => return End::Protocol(e.to_string()),
            }
        }
        while control_open {
            match h.report() {
                Ok(Some(Report::Ready(master))) => {
                    ready = true;
                    if let Some(m) = master.filter(|_| tty) {
                        let dup = match fd::dup_at_least(m.as_fd(), 3) {
                            Ok(dup) if set_nonblocking(m.as_raw_fd()).is_ok() => dup,
                            _ => return End::Failed(STATUS_FAILED, "setting up the terminal".into()),
                        };
                        if let Some((rows, cols)) = winsize {
                            set_winsize(m.as_fd(), rows, cols);
                        }
                        child_in = Some(dup);
                        child_out = Some(m);
                    }
                }
                Ok(Some(Report::Error { status, message })) => failed = Some((status, message)),
                Ok(Some(Report::Exit { code, signal })) => reported = Some((code, signal)),
                Ok(None) => break,
                Err(_) => control_open = false,
            }
        }
        if exited.is_none() {
            exited = h.try_reap().map(|s| (s, Instant::now()));
        }
        if let Some((status, at)) = exited {
            if failed.is_some() || (child_out.is_none() && child_err.is_none()) || at.elapsed() > DRAIN_GRACE {
                if let Some((code, message)) = failed {
                    return End::Failed(code, message);
                }
                let (code, signal) = reported.unwrap_or(status);
                return End::Exited(code, signal);
            }
        }
        if out.gone {
            return End::ClientGone;
        }

        // Poll: [port, pidfd?, control?, child_in?, child_out?, child_err?]
        let mut port_events = 0;
        if to_child.len() < CAP {
            port_events |= libc::POLLIN;
        }
        if out.pending() > 0 {
            port_events |= libc::POLLOUT;
        }
        let mut pfds = vec![libc::pollfd { fd: out.port, events: port_events, revents: 0 }];
        let mut slot = |fd: Option<RawFd>, events: libc::c_short| -> Option<usize> {
            let fd = fd?;
            pfds.push(libc::pollfd { fd, events, revents: 0 });
            Some(pfds.len() - 1)
        };
        // The helper's exit and reports are looked at on every round; these only wake it.
        slot(exited.is_none().then(|| h.pidfd.as_raw_fd()), libc::POLLIN);
        slot(control_open.then(|| h.control.as_raw_fd()), libc::POLLIN);
        let i_in = slot(child_in.as_ref().filter(|_| !to_child.is_empty()).map(|f| f.as_raw_fd()), libc::POLLOUT);
        let room = out.pending() < CAP;
        let i_out = slot(child_out.as_ref().filter(|_| room).map(|f| f.as_raw_fd()), libc::POLLIN);
        let i_err = slot(child_err.as_ref().filter(|_| room).map(|f| f.as_raw_fd()), libc::POLLIN);
        let _ = fd::poll(&mut pfds, 250);
        let rev = |i: Option<usize>| i.and_then(|i| pfds.get(i)).map_or(0, |p| p.revents);

        let port_rev = rev(Some(0));
        if port_rev & (libc::POLLERR | libc::POLLNVAL) != 0 || out.hung_up(port_rev & libc::POLLHUP != 0) {
            return End::ClientGone;
        }
        if port_rev & libc::POLLIN != 0 {
            match read_fd(out.port, &mut buf) {
                // No host side connected right now; gone only if it stays so (see HUP_GRACE).
                Ok(0) => {
                    if out.hung_up(true) {
                        return End::ClientGone;
                    }
                }
                Ok(n) => dec.push(buf.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(_) => return End::ClientGone,
            }
        }
        if port_rev & libc::POLLOUT != 0 {
            out.write_some();
        }
        if rev(i_in) != 0 {
            if let Some(fd) = &child_in {
                match write_fd(fd.as_raw_fd(), &to_child) {
                    Ok(n) => {
                        to_child.drain(..n.min(to_child.len()));
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                    // The command closed its input: the rest is not wanted.
                    Err(_) => {
                        to_child.clear();
                        if !tty {
                            child_in = None;
                        }
                    }
                }
            }
        }
        if stdin_eof && !tty && to_child.is_empty() && ready {
            child_in = None;
        }
        for (i, fd, stderr) in [(i_out, &mut child_out, false), (i_err, &mut child_err, true)] {
            if rev(i) == 0 {
                continue;
            }
            if let Some(f) = fd.as_ref() {
                match read_fd(f.as_raw_fd(), &mut buf) {
                    Ok(0) => *fd = None,
                    Ok(n) => encode_data(stderr, buf.get(..n).unwrap_or_default(), &mut out.buf),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                    // EIO: the terminal's last user closed it.
                    Err(_) => *fd = None,
                }
            }
        }
        if tty && child_out.is_none() {
            child_in = None;
        }
    }
}

fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) {
    if rows > 0 && cols > 0 {
        crate::sys::ioctl::set_window_size(fd, rows, cols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::MAGIC;

    fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        crate::sys::net::socketpair(libc::SOCK_STREAM).unwrap()
    }

    fn hello(nonce: u8) -> Hello {
        Hello {
            version: VERSION,
            nonce: [nonce; 8],
            tty: false,
            rows: 0,
            cols: 0,
            term: String::new(),
            argv: vec![b"true".to_vec()],
        }
    }

    /// Reads frames from the client end until `n` arrived (or 5 s passed).
    fn read_frames(fd: RawFd, n: usize) -> Vec<Frame> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while got.len() < n && Instant::now() < deadline {
            poll_one(fd, libc::POLLIN, Duration::from_millis(100));
            if let Ok(k) = read_fd(fd, &mut buf) {
                d.push(&buf[..k]);
            }
            while let Ok(Some(f)) = d.next_frame() {
                got.push(f);
            }
        }
        got
    }

    #[test]
    fn the_server_survives_garbage_and_answers_each_hello_when_no_container_runs() {
        let (server, client) = pair();
        set_nonblocking(server.as_raw_fd()).unwrap();
        let sfd = server.as_raw_fd();
        let t = std::thread::spawn(move || {
            let _keep = server;
            serve(sfd, &|| Err("the Planet container is not running".into()))
        });
        let c = client.as_raw_fd();
        // Garbage, a truncated frame after a magic, an oversized length, then a real hello.
        let mut wire = b"\x00\xffnoise".to_vec();
        wire.extend_from_slice(&MAGIC);
        wire.extend_from_slice(&[protocol::T_STDIN, 0xff, 0xff, 0xff, 0xff]);
        wire.extend_from_slice(&Frame::Hello(hello(1)).to_bytes());
        write_fd(c, &wire).unwrap();
        let got = read_frames(c, 2);
        assert_eq!(
            got,
            [
                Frame::Welcome { version: VERSION, nonce: [1; 8] },
                Frame::Error { status: 255, message: "the Planet container is not running".into() }
            ]
        );
        // A malformed hello is answered too, with its nonce.
        let mut bad = Frame::Hello(hello(2)).to_bytes();
        let len = bad.len();
        bad[len - 6] = 9; // argc beyond the payload: a length now points past the end
        write_fd(c, &bad).unwrap();
        let got = read_frames(c, 2);
        assert_eq!(got.first(), Some(&Frame::Welcome { version: VERSION, nonce: [2; 8] }));
        assert!(matches!(got.get(1), Some(Frame::Error { message, .. }) if message.starts_with("malformed request")));
        // Another protocol version is refused by name.
        write_fd(c, &Frame::Hello(Hello { version: 9, ..hello(3) }).to_bytes()).unwrap();
        let got = read_frames(c, 2);
        assert!(matches!(got.get(1), Some(Frame::Error { message, .. }) if message.contains("version 9")));
        drop(client);
        // The server keeps waiting for the next client (a virtio port reads 0 meanwhile).
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished());
    }

    /// Frames until an EXIT or ERROR (or 20 s), with STDOUT data joined.
    fn session_frames(fd: RawFd) -> (Vec<Frame>, Vec<u8>) {
        let mut d = Decoder::new();
        let (mut frames, mut out) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            poll_one(fd, libc::POLLIN, Duration::from_millis(100));
            if let Ok(k) = read_fd(fd, &mut buf) {
                d.push(&buf[..k]);
            }
            while let Ok(Some(f)) = d.next_frame() {
                match f {
                    Frame::Stdout(b) => out.extend_from_slice(&b),
                    f @ (Frame::Exit { .. } | Frame::Error { .. }) => {
                        frames.push(f);
                        return (frames, out);
                    }
                    f => frames.push(f),
                }
            }
        }
        (frames, out)
    }

    fn cmd(nonce: u8, argv: &[&str]) -> Hello {
        Hello { argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(), ..hello(nonce) }
    }

    /// Whole sessions with real helpers (this tree's planet-init, PLANET_INIT) in an unshare'd
    /// stand-in container; needs root. Skipped otherwise.
    #[test]
    fn sessions_relay_and_survive_garbage_and_a_new_hello_mid_session() {
        let Some((exe, _container, pid)) = exec::test_support::setup() else { return };
        let (server, client) = pair();
        set_nonblocking(server.as_raw_fd()).unwrap();
        let sfd = server.as_raw_fd();
        std::thread::spawn(move || {
            let _keep = server;
            serve_with(sfd, &move || Ok(pid), &exe)
        });
        let c = client.as_raw_fd();
        let welcome = |n: u8| Frame::Welcome { version: VERSION, nonce: [n; 8] };

        // stdin in, its end, stdout and stderr out, the exit status.
        let mut wire = Frame::Hello(cmd(1, &["sh", "-c", "cat; echo done; echo e >&2; exit 4"])).to_bytes();
        Frame::Stdin(b"abc".to_vec()).encode(&mut wire);
        Frame::Stdin(Vec::new()).encode(&mut wire);
        write_fd(c, &wire).unwrap();
        let (frames, out) = session_frames(c);
        assert_eq!(out, b"abcdone\n");
        assert_eq!(frames, [welcome(1), Frame::Stderr(b"e\n".to_vec()), Frame::Exit { code: 4, signal: 0 }]);

        // Garbage mid-session ends it with an error, and the command is hung up.
        write_fd(c, &Frame::Hello(cmd(2, &["sleep", "600"])).to_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        write_fd(c, b"\x7fgarbage").unwrap();
        let (frames, _) = session_frames(c);
        assert_eq!(frames.first(), Some(&welcome(2)));
        assert!(
            matches!(frames.last(), Some(Frame::Error { message, .. }) if message.contains("unknown frame type 0x7f")),
            "{frames:?}"
        );

        // A new HELLO mid-session replaces the session.
        write_fd(c, &Frame::Hello(cmd(3, &["sleep", "600"])).to_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        write_fd(c, &Frame::Hello(cmd(4, &["echo", "again"])).to_bytes()).unwrap();
        let (frames, out) = session_frames(c);
        assert_eq!(out, b"again\n");
        assert_eq!(frames, [welcome(3), welcome(4), Frame::Exit { code: 0, signal: 0 }]);
        std::thread::sleep(Duration::from_millis(500));
        let left = exec::test_support::cmdlines_in_pidns_of(pid);
        assert!(!left.iter().any(|c| c.starts_with("sleep 600")), "hung-up commands still run: {left:?}");

        // A terminal of the container's devpts, with the window size asked for.
        let h = Hello {
            tty: true,
            rows: 10,
            cols: 33,
            term: "vt100".into(),
            ..cmd(5, &["sh", "-c", "stty size; tty; echo $TERM; cat"])
        };
        write_fd(c, &Frame::Hello(h).to_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // The end of input ends `cat` on a terminal too.
        let mut wire = Frame::Stdin(b"typed\n".to_vec()).to_bytes();
        Frame::Stdin(Vec::new()).encode(&mut wire);
        write_fd(c, &wire).unwrap();
        let (frames, out) = session_frames(c);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("10 33\r\n/dev/pts/") && out.contains("vt100\r\n") && out.ends_with("typed\r\n"),
            "{out:?}"
        );
        assert_eq!(frames.last(), Some(&Frame::Exit { code: 0, signal: 0 }));
    }

    #[test]
    fn the_port_is_found_by_name_and_its_node_created() {
        let tmp = tempfile::tempdir().unwrap();
        let sysfs = tmp.path().join("sys");
        let dev = tmp.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        assert!(find_port(&sysfs, &dev).unwrap_err().contains("no virtio-serial ports"));
        for (port, name) in [("vport0p0", "org.qemu.guest_agent.0"), ("vport1p1", PORT_NAME)] {
            let d = sysfs.join("class/virtio-ports").join(port);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(d.join("dev"), "247:1\n").unwrap();
        }
        // The node exists already (devtmpfs): it is used as it is.
        std::fs::write(dev.join("vport1p1"), "").unwrap();
        assert_eq!(find_port(&sysfs, &dev).unwrap(), dev.join("vport1p1"));
        std::fs::remove_dir_all(sysfs.join("class/virtio-ports/vport1p1")).unwrap();
        assert_eq!(find_port(&sysfs, &dev).unwrap_err(), format!("no virtio-serial port named {PORT_NAME}"));
    }
}
