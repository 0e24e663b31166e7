//! Small helpers every stage uses: running external tools, writing outputs atomically,
//! progress reporting, digests and scratch directories.

pub mod atomic;
pub mod command;
pub mod digest;
pub mod interrupt;
pub mod progress;
pub mod sparse;
#[allow(unsafe_code)]
pub mod sys;
pub mod tar_header;

use anyhow::{Context, Result};

/// A new scratch directory under $TMPDIR, removed when dropped (also on an early `?` return).
pub fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .with_context(|| format!("could not create a scratch directory in {}", std::env::temp_dir().display()))
}
