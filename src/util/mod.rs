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

use std::path::Path;

use anyhow::{Context, Result};

/// A private scratch directory for one command's intermediate files (the build's work
/// directory beside its output, the raw disk of an AMI built without `-o`): new, under a random
/// name in `base`, mode 0700 — a predictable name could be made in advance by another user, who
/// could then swap what is in it — and removed when dropped and when a signal stops the
/// process ([`interrupt`]).
pub struct ScratchDir {
    // Fields drop in order: the directory is removed before a signal stops covering it.
    dir: tempfile::TempDir,
    _registered: interrupt::Registered,
}

impl ScratchDir {
    /// A new directory `base/PREFIX…` (`base` is created if missing: an output's directory may
    /// not exist yet).
    pub fn new_in(base: &Path, prefix: &str) -> Result<ScratchDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)
            .with_context(|| format!("creating a scratch directory in {}", base.display()))?;
        let _registered = interrupt::register_path(dir.path());
        Ok(ScratchDir { dir, _registered })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A new scratch directory under $TMPDIR, removed when dropped (also on an early `?` return).
pub fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .with_context(|| format!("could not create a scratch directory in {}", std::env::temp_dir().display()))
}
