//! Running external tools. Every failure names the program, its arguments and the tail of its
//! stderr, so an operator can rerun the exact command.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output, Stdio};

/// How many bytes of a failed tool's stderr to quote.
const STDERR_TAIL: usize = 2000;

pub trait CommandExt {
    /// Runs to completion with captured output; an error unless it exits 0.
    fn run_checked(&mut self) -> Result<Output>;
    /// The command line as an operator would type it.
    fn display(&self) -> String;
}

impl CommandExt for Command {
    fn run_checked(&mut self) -> Result<Output> {
        let shown = self.display();
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running `{shown}` (is {} installed?)", program_name(self)))?;
        // A signal aimed at planet-image alone stops the tool too.
        let registered = super::interrupt::register_child(child.id());
        let out = child.wait_with_output().with_context(|| format!("running `{shown}`"));
        drop(registered);
        let out = out?;
        super::interrupt::check()?;
        check_status(&shown, &out.status, &out.stderr)?;
        Ok(out)
    }

    fn display(&self) -> String {
        let mut s = self.get_program().to_string_lossy().into_owned();
        for a in self.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Turns a non-zero exit into an error quoting the end of stderr.
pub fn check_status(shown: &str, status: &std::process::ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let tail = if text.len() > STDERR_TAIL {
        let mut start = text.len() - STDERR_TAIL;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        &text[start..]
    } else {
        text
    };
    bail!("`{shown}` failed ({status}): {tail}")
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails with an install hint when a required tool is missing.
pub fn require_tool(program: &str, debian_package: &str) -> Result<()> {
    if on_path(program) {
        Ok(())
    } else {
        bail!("`{program}` was not found on PATH; install it with `apt-get install {debian_package}`")
    }
}
