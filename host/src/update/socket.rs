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
