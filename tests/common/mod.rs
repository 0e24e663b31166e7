//! Shared test helpers: paths to the binary, the package cache and fixtures built by
//! `scripts/test`, running tools nobody here wrote, and booting images.
#![allow(dead_code)]

pub mod bundles;
pub mod cluster;
pub mod hub;
pub mod metadata;
pub mod moto;
pub mod wordpress;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_planet-image"))
}

/// The package cache `scripts/test` fetched into.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("PLANET_IMAGE_CACHE").map(PathBuf::from).unwrap_or_else(|| repo().join("target/cache"))
}

/// Fixtures (demo rootfs etc.) built by `scripts/test`.
pub fn fixture(name: &str) -> PathBuf {
    let dir =
        std::env::var_os("PLANET_TEST_FIXTURES").map(PathBuf::from).unwrap_or_else(|| repo().join("target/fixtures"));
    let p = dir.join(name);
    assert!(p.exists(), "fixture {} is missing: run scripts/test, which builds it", p.display());
    p
}

/// A planet-image command with the test cache.
pub fn planet_image() -> Command {
    let mut c = Command::new(bin());
    c.env("PLANET_IMAGE_CACHE", cache_dir());
    c
}

/// Runs and returns output; panics with stderr when it fails.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&ok(cmd).stdout).into_owned()
}

/// A scratch directory removed at the end of the test.
pub struct Scratch(pub PathBuf, Option<tempfile::TempDir>);

impl Scratch {
    /// A new directory `NAME-…` under a random name (a test binary's tests run in parallel
    /// processes, and a run may follow one that was killed), removed when dropped unless
    /// PLANET_TEST_KEEP is set; then its path is printed and it stays for a look.
    pub fn new(name: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        // 0755 as a plain mkdir would make it: some tests hand files in it to other users.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir_in(&base)
            .unwrap();
        if std::env::var_os("PLANET_TEST_KEEP").is_some() {
            let kept = dir.keep();
            eprintln!("PLANET_TEST_KEEP: {name} keeps {}", kept.display());
            return Scratch(kept, None);
        }
        Scratch(dir.path().to_path_buf(), Some(dir))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Builds an image; `extra` are more CLI arguments.
pub fn build(target: &str, rootfs: &Path, out: &Path, extra: &[&str]) -> Output {
    ok(planet_image()
        .args(["build", "--target", target, "--rootfs"])
        .arg(rootfs)
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// Makes an update bundle of release `release` from `rootfs`, signed with `key`.
pub fn make_bundle(rootfs: &Path, key: &Path, out: &Path, release: &str, extra: &[&str]) -> Output {
    ok(planet_image()
        .arg("bundle")
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--key")
        .arg(key)
        .args(["--release-version", release])
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// One partition from `sfdisk --json`.
#[derive(Debug, Clone)]
pub struct SfPart {
    pub name: String,
    pub type_guid: String,
    pub start: u64,
    pub size: u64,
}

pub fn sfdisk(image: &Path) -> (u64, Vec<SfPart>) {
    let text = stdout(Command::new("sfdisk").arg("--json").arg(image));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = &v["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| SfPart {
            name: p["name"].as_str().unwrap_or("").to_string(),
            type_guid: p["type"].as_str().unwrap().to_string(),
            start: p["start"].as_u64().unwrap(),
            size: p["size"].as_u64().unwrap(),
        })
        .collect();
    (t["sectorsize"].as_u64().unwrap_or(512), parts)
}

/// Copies one partition of a raw image out to its own file.
pub fn extract_partition(image: &Path, label: &str, out: &Path) {
    let (ss, parts) = sfdisk(image);
    let p = parts.iter().find(|p| p.name == label).unwrap_or_else(|| panic!("no partition {label}"));
    ok(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", out.display()))
        .arg(format!("bs={ss}"))
        .arg(format!("skip={}", p.start))
        .arg(format!("count={}", p.size))
        .arg("conv=sparse")
        .arg("status=none"));
}

/// A QEMU guest started through `planet-image run`, its console in a log file.
pub struct Guest {
    child: std::process::Child,
    pub log: PathBuf,
    pub monitor: PathBuf,
}

impl Guest {
    pub fn start(image: &Path, scratch: &Scratch, args: &[&str]) -> Guest {
        Guest::start_niced(image, scratch, args, 0)
    }

    /// [`Guest::start`] with this niceness for `planet-image run` and its QEMU: where several
    /// guests share the host's cores, the one the others wait for (a cluster's master) keeps
    /// the cores it needs.
    pub fn start_niced(image: &Path, scratch: &Scratch, args: &[&str], niceness: i32) -> Guest {
        let log = scratch.path(&format!("serial-{}.log", unique()));
        let monitor = scratch.path(&format!("monitor-{}.sock", unique()));
        let mut command = planet_image();
        planet_image::util::sys::niceness_on_exec(&mut command, niceness);
        let child = command
            .arg("run")
            .arg(image)
            .arg("--serial-log")
            .arg(&log)
            .arg("--monitor")
            .arg(&monitor)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("starting planet-image run");
        Guest { child, log, monitor }
    }

    /// The console so far, with terminal colour sequences removed.
    pub fn console(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()))
    }

    /// Waits until the console contains `needle`; panics with the console on timeout or exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let text = self.console();
            if text.contains(needle) {
                return text;
            }
            // A guest whose kernel panicked prints nothing more: say so now, not at the timeout.
            if text.contains("Kernel panic - not syncing") {
                panic!("the guest's kernel panicked before printing {needle:?}; console:\n{text}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the guest exited ({status}) before printing {needle:?}; console:\n{text}");
            }
            if start.elapsed() > timeout {
                panic!("no {needle:?} on the console within {timeout:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends a human-monitor command (e.g. `system_powerdown`).
    pub fn monitor(&self, command: &str) {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor).expect("connecting to the QEMU monitor");
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Waits for QEMU to exit; returns whether it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // planet-image run and its QEMU share a process group of their own: stop both.
        // A negative pid signals that group only.
        let _ = planet_image::util::sys::kill(-(self.child.id() as i32), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Removes CSI escape sequences (`ESC [ … letter`), e.g. systemd's colours.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes a tarball with python3's tarfile module (a writer nobody here wrote), from a
/// list of entries given as a Python literal.
pub fn python_tar(out: &Path, entries_py: &str) {
    let script = format!(
        r#"
import tarfile, io, sys
def add(t, name, type=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="", dev=(0,0), pax=None):
    ti = tarfile.TarInfo(name); ti.type = type; ti.mode = mode; ti.uid = uid; ti.gid = gid; ti.mtime = 1700000000
    ti.uname = "root" if uid == 0 else "u%d" % uid; ti.gname = "root" if gid == 0 else "g%d" % gid
    if link: ti.linkname = link
    if type in (tarfile.CHRTYPE, tarfile.BLKTYPE): ti.devmajor, ti.devminor = dev
    if pax: ti.pax_headers = pax
    ti.size = len(data) if type == tarfile.REGTYPE else 0
    t.addfile(ti, io.BytesIO(data) if type == tarfile.REGTYPE else None)
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
{entries_py}
"#
    );
    ok(Command::new("python3").arg("-c").arg(script).arg(out));
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; returns the body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Retries `f` every half second until it returns Some, for at most `limit`.
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

pub fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// etcd v3 range over a prefix, through its JSON gateway.
pub fn etcd_range(port: u16, prefix: &str) -> Option<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let body = format!(r#"{{"key":"{}","range_end":"{}"}}"#, b64(prefix), b64(std::str::from_utf8(&end).unwrap()));
    http(port, "POST", "/v3/kv/range", &body).ok()
}

pub fn etcd_put(port: u16, key: &str, value: &str) -> Option<String> {
    let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key), b64(value));
    http(port, "POST", "/v3/kv/put", &body).ok().filter(|r| r.contains("revision"))
}

/// Reads a request or response head up to its blank line (`None` at end of stream), and gives
/// a case-insensitive header lookup over it.
pub fn read_head(r: &mut impl std::io::BufRead) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(Some(head));
        }
    }
}

/// The value of header `name` in a head read by `read_head`.
pub fn head_field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `planet-image enter SOCKET -- ARGS…` with `input` on stdin: exit code, stdout, stderr.
pub fn enter_input(sock: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    // A loaded CI machine may take a while to start the command in the guest.
    enter_waiting(sock, args, input, 300)
}

/// [`enter_input`] giving the guest `wait` seconds to answer (a machine that may be rebooting).
pub fn enter_waiting(sock: &Path, args: &[&str], input: &str, wait: u32) -> (i32, String, String) {
    use std::io::Write;
    let mut child = planet_image()
        .arg("enter")
        .arg(sock)
        .args(["--wait", &wait.to_string()])
        .arg("--")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running planet-image enter");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    // Written from a thread: a command that answers before reading all its input must not
    // deadlock against a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("waiting for planet-image enter");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `planet-image enter SOCKET -- ARGS…` with no input: exit code, stdout, stderr.
pub fn enter(sock: &Path, args: &[&str]) -> (i32, String, String) {
    enter_input(sock, args, "")
}

/// Runs `args` in the container and returns stdout; panics with both streams and the console.
pub fn enter_ok(guest: &Guest, sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = enter(sock, args);
    assert_eq!(code, 0, "{args:?} exited {code}\nstdout: {out}\nstderr: {err}\nconsole:\n{}", tail(&guest.console()));
    out
}

/// The last 150 lines of a console, for failure messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

/// An image of the Planet Kubernetes release with room to grow: the built image's state
/// partition is small, and etcd, docker and the kubelet want a few GiB; planet-init grows the
/// state to the disk at first boot. `extra` are more `build` arguments.
pub fn kube_disk(s: &Scratch, extra: &[&str]) -> PathBuf {
    let image = s.path("planet.qcow2");
    build("qcow2", &fixture("planet-release.tar.gz"), &image, extra);
    ok(Command::new("qemu-img").args(["resize", "-q"]).arg(&image).arg("+6G"));
    image
}

/// `planet-image seed ARGS… -o SCRATCH/NAME`, with `join_token` (if any) passed the only way
/// seed takes it: a mode-0600 file, never the command line. Returns the seed's path.
pub fn nocloud_seed(s: &Scratch, name: &str, args: &[&str], join_token: Option<&str>) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let out = s.path(name);
    let mut cmd = planet_image();
    cmd.arg("seed").args(args).arg("-o").arg(&out).env("SOURCE_DATE_EPOCH", "1700000000");
    if let Some(token) = join_token {
        let file = s.path(&format!("{name}.token"));
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file).unwrap();
        writeln!(f, "{token}").unwrap();
        cmd.arg("--join-token-file").arg(&file);
    }
    let summary = stdout(&mut cmd);
    if let Some(token) = join_token {
        assert!(summary.contains(r#""join_token": "set""#) && !summary.contains(token), "{summary}");
    }
    out
}
