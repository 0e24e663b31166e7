//! Local update requests: a Unix socket in the directory bind-mounted into the container at
//! `/var/lib/planet-update`, so tooling in the cluster can hand the machine a bundle.
//!
//! One request per connection, a line, answered with one line `ok …` or `error …`:
//! * `status` — the status file's JSON;
//! * `install-url http://IP[:PORT]/PATH` — fetch and install that bundle;
//! * `install` — the bundle's bytes follow the line, to the end of the stream.
//!
//! An install that succeeds answers `ok installed ENTRY; rebooting` and the machine reboots.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{install, Agent};
use crate::event;

pub const SOCKET_NAME: &str = "update.sock";

/// Binds the socket (root only: the container's root may use it).
pub fn listen(dir: &Path) -> Result<UnixListener> {
    let path = dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    InstallUrl(String),
    Install,
}

pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    match line.split_once(' ') {
        None if line == "status" => Ok(Request::Status),
        None if line == "install" => Ok(Request::Install),
        Some(("install-url", url)) if !url.trim().is_empty() => Ok(Request::InstallUrl(url.trim().to_string())),
        _ => Err(format!(
            "unknown request {line:?}: expected status, install-url URL, or install followed by the bundle"
        )),
    }
}

impl Agent {
    pub(super) fn serve(&self, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if let Err(e) = self.handle(conn) {
                event!("update request failed", error = format!("{e:#}"));
            }
            if super::reboot_requested().is_some() {
                return;
            }
        }
    }

    fn handle(&self, conn: UnixStream) -> Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut w = conn.try_clone()?;
        let mut r = BufReader::new(conn);
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
            Request::InstallUrl(url) => {
                self.install_from(|dest, key, free, wanted| install::download(&url, dest, key, free, wanted))
            }
            Request::Install => {
                self.install_from(|dest, key, free, wanted| install::receive(&mut r, None, dest, key, free, wanted))
            }
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
    use std::path::PathBuf;
    use std::sync::Mutex;

    static REBOOTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn record_reboot(why: &str) {
        REBOOTS.lock().unwrap().push(why.to_string());
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
        let target = Target { slot: 'b', dev: t.join("slot-b"), bytes: 8 << 20 };
        Agent::for_tests(paths, Some(key.public()), target, "1", record_reboot)
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
            let mut answer = String::new();
            c.read_to_string(&mut answer).unwrap();
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
        assert_eq!(REBOOTS.lock().unwrap().as_slice(), ["update to planet-0002-b+3.conf"]);
        assert_eq!(&std::fs::read(t.path().join("slot-b")).unwrap()[..300_000], &[7u8; 300_000][..]);
        assert!(t.path().join("esp/loader/entries/planet-0002-b+3.conf").exists());

        let answer = exchange(&agent, &listener, b"status\n".to_vec());
        assert!(answer.starts_with("ok {") && answer.contains("\"state\": \"installed\""), "{answer}");
        assert!(!t.path().join("state/incoming.planet").exists());
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request("status\n"), Ok(Request::Status));
        assert_eq!(parse_request("install\n"), Ok(Request::Install));
        assert_eq!(
            parse_request("install-url http://10.0.0.1/u.planet\n"),
            Ok(Request::InstallUrl("http://10.0.0.1/u.planet".into()))
        );
        assert!(parse_request("install-url \n").is_err());
        assert!(parse_request("reboot\n").unwrap_err().contains("unknown request"));
    }
}
