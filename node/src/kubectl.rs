//! kubectl, as every planet-node command runs it: a kubeconfig, a bounded request time, and the
//! first line of its complaint as the error. Inputs that may hold secrets go on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

/// A failure reason short enough for one console line (the API server's readyz answer lists
/// every check).
pub fn first_words(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Runs kubectl and returns its trimmed stdout.
pub fn run(kubeconfig: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(kubeconfig, args, None)
}

/// Runs kubectl with `input` on its stdin (e.g. `apply -f -` of a Secret) and returns its
/// trimmed stdout.
pub fn run_with_input(kubeconfig: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg(format!("--kubeconfig={kubeconfig}"))
        .arg("--request-timeout=10s")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| format!("writing to kubectl: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("running kubectl: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(first_words(err.lines().next().unwrap_or("kubectl failed")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A loop's recurring error, printed once until it changes or the loop succeeds again: a watch
/// loop that fails at every event (the API server not up yet) does not fill the console with
/// the same line.
#[derive(Default)]
pub struct Complaint(Option<String>);

impl Complaint {
    /// Prints `planet-node: {what}: {error}` unless it is the error printed last; whether it
    /// printed.
    pub fn say(&mut self, what: &str, error: String) -> bool {
        if self.0.as_deref() == Some(error.as_str()) {
            return false;
        }
        println!("planet-node: {what}: {error}");
        self.0 = Some(error);
        true
    }

    /// The loop succeeded: the next error is news.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// Calls `sync` whenever the objects `kubectl get ARGS --watch` reports change, and at least
/// every `resync`, for ever. Listing everything every few seconds would cost a kubectl run each
/// time (seconds of CPU on an emulated machine); a watch costs nothing while nothing changes.
/// A burst of events makes one call. The watch is restarted when kubectl exits (the API server
/// ends watches after a while, or is not up yet), each time after `before_watch` returns (the
/// loops wait there for their API server: [`crate::api::wait_until_ready`]).
pub fn on_change(
    kubeconfig: &str,
    args: &[&str],
    resync: std::time::Duration,
    before_watch: impl Fn() + Send + 'static,
    mut sync: impl FnMut(),
) -> ! {
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::Duration;
    let (tx, rx) = mpsc::channel::<()>();
    let (kubeconfig, args): (String, Vec<String>) =
        (kubeconfig.to_string(), args.iter().map(|a| a.to_string()).collect());
    std::thread::spawn(move || loop {
        before_watch();
        let child = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={kubeconfig}"))
            .args(&args)
            .args(["--watch-only", "-o", "name"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            // The watch starts after the first list: whatever changed while it was down is
            // picked up by this call.
            if tx.send(()).is_err() {
                return;
            }
            if let Some(out) = child.stdout.take() {
                for _ in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
            }
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    loop {
        let _ = rx.recv_timeout(resync);
        // Let a burst settle, then drop what it queued.
        std::thread::sleep(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
        sync();
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// RFC 3339 UTC with microseconds, as the API's MicroTime fields want it.
pub fn micro_time(secs: u64) -> String {
    let (year, month, day) = planet_bundle::date_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_rfc3339_utc() {
        assert_eq!(micro_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(micro_time(951_782_400), "2000-02-29T00:00:00.000000Z");
        assert_eq!(micro_time(1_796_083_199), "2026-11-30T23:59:59.000000Z");
    }

    #[test]
    fn a_complaint_is_said_once_until_it_changes_or_clears() {
        let mut c = Complaint::default();
        assert!(c.say("routes", "API down".into()));
        assert!(!c.say("routes", "API down".into()));
        assert!(c.say("routes", "forbidden".into()));
        c.clear();
        assert!(c.say("routes", "forbidden".into()));
    }
}
