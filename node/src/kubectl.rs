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
