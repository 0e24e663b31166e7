//! Outputs appear only when complete: written under a temporary name beside the destination
//! and renamed into place, removed again if anything fails first (or a signal comes: see
//! [`super::interrupt`]).

use super::interrupt::{self, Registered};
use anyhow::{Context, Result};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file being written at a temporary path; dropped without `commit`, it is deleted.
pub struct PendingFile {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
    _registered: Registered,
}

impl PendingFile {
    pub fn new(dest: &Path) -> Result<PendingFile> {
        let name = dest.file_name().with_context(|| format!("output path {} has no file name", dest.display()))?;
        let dir = parent_dir(dest);
        if !dir.is_dir() {
            anyhow::bail!("the output directory {} does not exist; create it first", dir.display());
        }
        let temp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let _registered = interrupt::register_path(&temp);
        Ok(PendingFile { temp, dest: dest.to_path_buf(), committed: false, _registered })
    }

    /// Like [`PendingFile::new`], for outputs holding secrets: the temporary file is created
    /// here, new and mode 0600 (whatever the umask), so the secret is never readable by
    /// others, not even while it is written. Write to it without recreating it.
    pub fn new_private(dest: &Path) -> Result<PendingFile> {
        let p = PendingFile::new(dest)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p.temp)
            .with_context(|| format!("creating {}", p.temp.display()))?;
        Ok(p)
    }

    pub fn path(&self) -> &Path {
        &self.temp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs the file, renames it to its final name and syncs the directory, so the new name
    /// survives a power cut.
    pub fn commit(mut self) -> Result<()> {
        let f = std::fs::File::open(&self.temp).with_context(|| format!("opening {}", self.temp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", self.temp.display()))?;
        std::fs::rename(&self.temp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.temp.display(), self.dest.display()))?;
        self.committed = true;
        sync_dir(&parent_dir(&self.dest))
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsync of a directory: makes the renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    let pending = PendingFile::new(dest)?;
    std::fs::write(pending.path(), bytes).with_context(|| format!("writing {}", pending.path().display()))?;
    pending.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_outputs_are_0600_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("secret.img");
        let old = crate::util::sys::umask(0o022);
        let p = PendingFile::new_private(&dest);
        crate::util::sys::umask(old);
        let p = p.unwrap();
        std::fs::OpenOptions::new().write(true).open(p.path()).unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_uncommitted_output_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let p = PendingFile::new(&tmp.path().join("out")).unwrap();
        std::fs::write(p.path(), "x").unwrap();
        drop(p);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
