//! The ESP as the update agent sees it: a mounted FAT directory holding `loader/entries/` and
//! each slot's `planet-SLOT/{vmlinuz,initramfs.img}`. Every change is made durable before the
//! next one starts (file fsync, rename, directory fsync), so a power cut leaves either the old
//! or the new state of each file — never an entry naming half-written files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use planet_config::bootentry::{self, EntryName};
use planet_config::contract;

/// One loader entry of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: EntryName,
    pub version: String,
    pub options: String,
}

pub struct Esp {
    pub root: PathBuf,
}

/// fsync of a directory, so a rename or unlink in it is on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Writes `name` in `dir` from `fill` through a temporary file (`NAME.tmp`, which systemd-boot
/// ignores), fsynced, then renamed and the directory fsynced; on failure nothing is left.
pub fn write_durably(dir: &Path, name: &str, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let dest = dir.join(name);
    let r = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        fill(&mut f)?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {name}", tmp.display()))?;
        sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

impl Esp {
    pub fn new(root: impl Into<PathBuf>) -> Esp {
        Esp { root: root.into() }
    }

    pub fn entries_dir(&self) -> PathBuf {
        self.root.join(contract::LOADER_ENTRIES_DIR)
    }

    pub fn slot_dir(&self, slot: char) -> PathBuf {
        self.root.join(contract::esp_slot_dir(slot))
    }

    /// The generation a new entry gets: one above every entry's on the ESP.
    pub fn next_generation(&self) -> Result<u32> {
        self.entries()?
            .iter()
            .map(|e| e.name.generation)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .context("the boot entries' generation numbers are used up")
    }

    /// Our entries (files that parse as `planet-GEN-SLOT…conf`), newest generation first.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let dir = self.entries_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let Some(name) = EntryName::parse(&e.file_name().to_string_lossy()) else { continue };
            let text = std::fs::read_to_string(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
            out.push(Entry {
                version: bootentry::entry_field(&text, "version").unwrap_or("unknown").to_string(),
                options: bootentry::entry_field(&text, "options").unwrap_or("").to_string(),
                name,
            });
        }
        out.sort_by(|a, b| bootentry::boot_order(&a.name, &b.name));
        Ok(out)
    }

    /// Deletes every entry of `slot` (first step of an install: nothing may boot the slot while
    /// it is rewritten).
    pub fn remove_entries_of(&self, slot: char) -> Result<Vec<EntryName>> {
        let mut removed = Vec::new();
        for e in self.entries()?.into_iter().filter(|e| e.name.slot == slot) {
            let p = self.entries_dir().join(e.name.file_name());
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(e.name);
        }
        sync_dir(&self.entries_dir())?;
        Ok(removed)
    }

    /// Adds an entry file (a `.tmp` name is ignored by systemd-boot until the rename).
    pub fn add_entry(&self, name: &EntryName, text: &str) -> Result<()> {
        write_durably(&self.entries_dir(), &name.file_name(), |f| {
            f.write_all(text.as_bytes()).context("writing the entry")
        })
    }

    /// Renames an entry (blessing), durably.
    pub fn rename_entry(&self, from: &EntryName, to: &EntryName) -> Result<()> {
        let dir = self.entries_dir();
        std::fs::rename(dir.join(from.file_name()), dir.join(to.file_name()))
            .with_context(|| format!("renaming {from} to {to}"))?;
        sync_dir(&dir)
    }

    /// Checks that the kernel and initramfs `name` points at are on the ESP and not empty: an
    /// entry brought back into use must not boot into missing files.
    pub fn check_boot_files(&self, name: &EntryName) -> Result<()> {
        let p = self.entries_dir().join(name.file_name());
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let files: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(k, _)| matches!(*k, "linux" | "initrd"))
            .map(|(_, v)| v.trim())
            .collect();
        if bootentry::entry_field(&text, "linux").is_none() {
            anyhow::bail!("the entry {name} names no kernel");
        }
        for f in files {
            let on_esp = self.root.join(f.trim_start_matches('/'));
            match std::fs::metadata(&on_esp) {
                Ok(m) if m.is_file() && m.len() > 0 => {}
                _ => anyhow::bail!("the entry {name} names {f}, which is missing or empty on the ESP"),
            }
        }
        Ok(())
    }

    /// Removes one entry, durably.
    pub fn remove_entry(&self, name: &EntryName) -> Result<()> {
        let p = self.entries_dir().join(name.file_name());
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        sync_dir(&self.entries_dir())
    }

    /// Free bytes on the filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        crate::sys::free_bytes(&self.root)
    }

    /// Deletes the slot's kernel and initramfs (and temporary files of an interrupted write).
    pub fn remove_slot_files(&self, slot: char) -> Result<()> {
        let dir = self.slot_dir(slot);
        let Ok(list) = std::fs::read_dir(&dir) else { return Ok(()) };
        for e in list.flatten() {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
        sync_dir(&dir)
    }

    /// Bytes the slot's directory takes now (all of it is replaced by an install).
    pub fn slot_files_bytes(&self, slot: char) -> u64 {
        std::fs::read_dir(self.slot_dir(slot))
            .map(|l| l.flatten().filter_map(|e| e.metadata().ok()).fold(0u64, |n, m| n.saturating_add(m.len())))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp_with(names: &[&str]) -> (tempfile::TempDir, Esp) {
        let t = tempfile::tempdir().unwrap();
        let esp = Esp::new(t.path());
        std::fs::create_dir_all(esp.entries_dir()).unwrap();
        for n in names {
            let slot = EntryName::parse(n).unwrap().slot;
            let text = bootentry::entry_conf("t", "1.0", slot, &format!("console=ttyS0 planet.slot={slot}"));
            std::fs::write(esp.entries_dir().join(n), text).unwrap();
        }
        std::fs::write(esp.entries_dir().join("unrelated.conf"), "title x\n").unwrap();
        (t, esp)
    }

    #[test]
    fn entries_are_listed_in_boot_order_and_foreign_files_ignored() {
        let (_t, esp) = esp_with(&["planet-0001-a.conf", "planet-0002-b+0-3.conf", "planet-0003-a+2-1.conf"]);
        let names: Vec<String> = esp.entries().unwrap().iter().map(|e| e.name.file_name()).collect();
        assert_eq!(names, ["planet-0003-a+2-1.conf", "planet-0001-a.conf", "planet-0002-b+0-3.conf"]);
        assert_eq!(esp.entries().unwrap()[0].version, "1.0");
        assert_eq!(esp.entries().unwrap()[0].options, "console=ttyS0 planet.slot=a");
    }

    #[test]
    fn removing_a_slot_leaves_the_other() {
        let (_t, esp) = esp_with(&["planet-0001-a.conf", "planet-0002-b+0-3.conf"]);
        let removed = esp.remove_entries_of('b').unwrap();
        assert_eq!(removed.len(), 1);
        let left: Vec<String> = esp.entries().unwrap().iter().map(|e| e.name.file_name()).collect();
        assert_eq!(left, ["planet-0001-a.conf"]);
        assert!(esp.entries_dir().join("unrelated.conf").exists());
    }

    #[test]
    fn adding_and_blessing_entries() {
        let (_t, esp) = esp_with(&["planet-0001-a.conf"]);
        let n = EntryName::counted(2, 'b', 3);
        esp.add_entry(&n, &bootentry::entry_conf("t", "2", 'b', "planet.slot=b")).unwrap();
        assert!(!esp.entries_dir().join("planet-0002-b+3.conf.tmp").exists());
        assert_eq!(esp.entries().unwrap()[0].name, n);
        esp.rename_entry(&n, &n.blessed()).unwrap();
        assert_eq!(esp.entries().unwrap()[0].name.file_name(), "planet-0002-b.conf");
        esp.remove_entry(&n.blessed()).unwrap();
        assert_eq!(esp.entries().unwrap().len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let (_t, esp) = esp_with(&[]);
        let dir = esp.slot_dir('b');
        let r = write_durably(&dir, "vmlinuz", |_| anyhow::bail!("boom"));
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
