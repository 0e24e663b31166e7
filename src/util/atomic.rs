//! Outputs appear only when complete: written under a temporary name beside the destination
//! and renamed into place, removed again if anything fails first.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A file being written at a temporary path; dropped without `commit`, it is deleted.
pub struct PendingFile {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    pub fn new(dest: &Path) -> Result<PendingFile> {
        let name = dest.file_name().with_context(|| format!("output path {} has no file name", dest.display()))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            anyhow::bail!("the output directory {} does not exist; create it first", dir.display());
        }
        let temp = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&temp);
        Ok(PendingFile { temp, dest: dest.to_path_buf(), committed: false })
    }

    pub fn path(&self) -> &Path {
        &self.temp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs the file and renames it to its final name.
    pub fn commit(mut self) -> Result<()> {
        let f = std::fs::File::open(&self.temp).with_context(|| format!("opening {}", self.temp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", self.temp.display()))?;
        std::fs::rename(&self.temp, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.temp.display(), self.dest.display()))?;
        self.committed = true;
        Ok(())
    }
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
