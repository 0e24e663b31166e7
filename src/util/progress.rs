//! Progress on stderr: a bar on a terminal, plain lines otherwise (CI logs, pipes).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// One pipeline step being reported.
pub struct Step {
    bar: Option<ProgressBar>,
    name: String,
    started: Instant,
}

fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

impl Step {
    /// A step with a known total number of bytes (0 for unknown).
    pub fn start(name: &str, total_bytes: u64) -> Step {
        let bar = if interactive() {
            let bar = if total_bytes > 0 {
                let b = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {elapsed}")
                        .expect("static template")
                        .progress_chars("=> "),
                );
                b
            } else {
                let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg:24} {bytes} {elapsed}").expect("static template"),
                );
                b
            };
            b_set_msg(&bar, name);
            Some(bar)
        } else {
            eprintln!("planet-image: {name}");
            None
        };
        Step { bar, name: name.to_string(), started: Instant::now() }
    }

    pub fn set_position(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_position(bytes);
        }
    }

    pub fn finish(self, detail: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        match self.bar {
            Some(b) => {
                b.finish_and_clear();
                eprintln!("planet-image: {} done in {secs:.1}s {detail}", self.name);
            }
            None => eprintln!("planet-image: {} done in {secs:.1}s {detail}", self.name),
        }
    }
}

fn b_set_msg(bar: &ProgressBar, name: &str) {
    bar.set_message(name.to_string());
}
