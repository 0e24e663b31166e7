//! The checks every rootfs entry passes before it reaches the image: paths are normalised,
//! nothing may climb out of the root (`..`) or be placed through a symlink, hard links must
//! name an earlier regular file, and a Planet release's `rootfs/` becomes the root.

use super::tar_writer::TarWriter;
use super::{Entry, EntryKind};
use crate::util::digest::HashWriter;
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};

/// Input errors callers and tests can tell apart; each names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("entry {entry:?} climbs out of the root with `..`; the rootfs must only hold paths inside it")]
    DotDot { entry: String },
    #[error("entry {entry:?} goes through the symlink {symlink:?}; a rootfs may not place files through links")]
    ThroughSymlink { entry: String, symlink: String },
    #[error("hard link {entry:?} points to {target:?}, which is not an earlier regular file in the rootfs")]
    BadHardLink { entry: String, target: String },
    #[error("entry {entry:?} appears twice in the rootfs")]
    Duplicate { entry: String },
    #[error("entry {entry:?} has a name that is not UTF-8")]
    NotUtf8 { entry: String },
    #[error("hard link {entry:?} points outside the release's rootfs/ ({target:?})")]
    LinkOutsideRelease { entry: String, target: String },
}

/// Normalises an archive path: strips leading `/` and `./`, drops `.` components, refuses `..`.
pub fn normalize(raw: &str) -> Result<String, RootfsError> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(RootfsError::DotDot { entry: raw.to_string() }),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub file_bytes: u64,
    pub planet_release: bool,
    pub has_planet_launcher: bool,
}

/// Until the first real entry we do not know whether the input is a Planet release.
enum Mode {
    Undecided,
    Plain,
    Release,
}

/// Top-level files met before the input's kind is known, kept until it is.
const MAX_BUFFERED: u64 = 64 << 20;

type Output<W> = TarWriter<Tee<W>>;

pub struct CheckedSink<W: Write> {
    out: Output<W>,
    seen: HashMap<String, Seen>,
    mode: Mode,
    buffered: Vec<(Entry, Vec<u8>)>,
    buffered_bytes: u64,
    skipped_outside_release: u64,
    stats: Stats,
}

/// Copies the canonical stream to its consumer while hashing it.
pub struct Tee<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        HashWriter(&mut self.hasher).write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> CheckedSink<W> {
    pub fn new(inner: W) -> CheckedSink<W> {
        CheckedSink {
            out: TarWriter::new(Tee { inner, hasher: Sha256::new() }),
            seen: HashMap::new(),
            mode: Mode::Undecided,
            buffered: Vec::new(),
            buffered_bytes: 0,
            skipped_outside_release: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes one entry as the input names it (`raw_path`, and for links `raw_target` inside
    /// `entry.kind`), checks it and writes it on.
    pub fn push(&mut self, mut entry: Entry, data: &mut dyn Read) -> Result<()> {
        crate::util::interrupt::check()?;
        let path = normalize(&entry.path)?;
        if let EntryKind::HardLink { target } = &entry.kind {
            let t = normalize(target)
                .map_err(|_| RootfsError::BadHardLink { entry: entry.path.clone(), target: target.clone() })?;
            entry.kind = EntryKind::HardLink { target: t };
        }
        entry.path = path;

        if matches!(self.mode, Mode::Undecided) {
            let top = entry.path.split('/').next().unwrap_or("");
            if entry.path.is_empty() {
                // The root entry itself: keep it until we know which root it describes.
                return self.buffer(entry, data);
            } else if top == "rootfs" {
                self.mode = Mode::Release;
                self.stats.planet_release = true;
                let skipped = self.buffered.len() as u64;
                self.skipped_outside_release += skipped;
                self.buffered.clear();
            } else if !entry.path.contains('/') && !matches!(entry.kind, EntryKind::Directory) {
                return self.buffer(entry, data);
            } else {
                self.mode = Mode::Plain;
                self.flush_buffered()?;
            }
        }

        if matches!(self.mode, Mode::Release) {
            match strip_release_prefix(&entry.path) {
                Some(inner) => entry.path = inner,
                None => {
                    self.skipped_outside_release += 1;
                    std::io::copy(data, &mut std::io::sink())?;
                    return Ok(());
                }
            }
            if let EntryKind::HardLink { target } = &entry.kind {
                let inner = strip_release_prefix(target).ok_or_else(|| RootfsError::LinkOutsideRelease {
                    entry: entry.path.clone(),
                    target: target.clone(),
                })?;
                entry.kind = EntryKind::HardLink { target: inner };
            }
        }
        self.write_checked(entry, data)
    }

    fn buffer(&mut self, entry: Entry, data: &mut dyn Read) -> Result<()> {
        let mut bytes = Vec::new();
        if let EntryKind::File { size } = entry.kind {
            self.buffered_bytes = self.buffered_bytes.saturating_add(size);
            if self.buffered_bytes > MAX_BUFFERED {
                // Too much at the top level for a release's side files: it is a plain rootfs.
                self.mode = Mode::Plain;
                self.flush_buffered()?;
                return self.write_checked(entry, data);
            }
            data.take(size).read_to_end(&mut bytes)?;
        }
        self.buffered.push((entry, bytes));
        Ok(())
    }

    fn flush_buffered(&mut self) -> Result<()> {
        for (entry, bytes) in std::mem::take(&mut self.buffered) {
            self.write_checked(entry, &mut &bytes[..])?;
        }
        Ok(())
    }

    fn write_checked(&mut self, entry: Entry, data: &mut dyn Read) -> Result<()> {
        let path = entry.path.clone();
        // No component of the path may be a symlink met earlier.
        let mut prefix_end = 0;
        while let Some(pos) = path[prefix_end..].find('/') {
            let prefix = &path[..prefix_end + pos];
            if self.seen.get(prefix) == Some(&Seen::Symlink) {
                return Err(RootfsError::ThroughSymlink { entry: path.clone(), symlink: prefix.to_string() }.into());
            }
            prefix_end += pos + 1;
        }
        if let EntryKind::HardLink { target } = &entry.kind {
            if self.seen.get(target) != Some(&Seen::File) {
                return Err(RootfsError::BadHardLink { entry: path, target: target.clone() }.into());
            }
        }
        let kind = match entry.kind {
            EntryKind::File { .. } | EntryKind::HardLink { .. } => Seen::File,
            EntryKind::Directory => Seen::Directory,
            EntryKind::Symlink { .. } => Seen::Symlink,
            _ => Seen::Other,
        };
        if let Some(prev) = self.seen.get(&path) {
            if *prev == Seen::Directory && kind == Seen::Directory {
                // Re-declared directories (common in layered tarballs): the first one stands.
                return Ok(());
            }
            return Err(RootfsError::Duplicate { entry: path }.into());
        }
        self.seen.insert(path.clone(), kind);
        if path == "usr/bin/planet" {
            self.stats.has_planet_launcher = true;
        }
        self.stats.entries += 1;
        if let EntryKind::File { size } = entry.kind {
            self.stats.file_bytes =
                self.stats.file_bytes.checked_add(size).ok_or_else(|| {
                    anyhow::anyhow!("entry {path:?} of {size} bytes takes the rootfs past 2^64 bytes")
                })?;
        }
        self.out.write_entry(&entry, data).map_err(|e| e.context(format!("writing entry {path:?}")))
    }

    /// Ends the input: entries added after it (apps) are not part of a release's `rootfs/`.
    fn end_of_input(&mut self) -> Result<()> {
        if matches!(self.mode, Mode::Undecided) {
            self.mode = Mode::Plain;
            self.flush_buffered()?;
        }
        Ok(())
    }

    /// Ends the stream; returns the SHA-256 of the canonical tar.
    pub fn finish(mut self) -> Result<String> {
        self.end_of_input()?;
        if self.skipped_outside_release > 0 {
            eprintln!(
                "planet-image: Planet release recognised; {} entries outside rootfs/ were left out",
                self.skipped_outside_release
            );
        }
        let tee = self.out.finish()?;
        Ok(hex::encode(tee.hasher.finalize()))
    }
}

/// Entries the builder adds after the input (the apps), with their final paths: checked like
/// the input's (a path the rootfs already holds is refused as a duplicate).
impl<W: Write> crate::app::SlotSink for CheckedSink<W> {
    fn add(&mut self, mut entry: Entry, data: &mut dyn Read) -> Result<()> {
        self.end_of_input()?;
        entry.path = normalize(&entry.path)?;
        let path = entry.path.clone();
        self.write_checked(entry, data).map_err(|e| match e.downcast_ref::<RootfsError>() {
            Some(RootfsError::Duplicate { .. }) => {
                anyhow::anyhow!("the rootfs already holds {path:?}, where the builder puts the apps given with --app")
            }
            _ => e,
        })
    }
}

fn strip_release_prefix(path: &str) -> Option<String> {
    if path == "rootfs" {
        Some(String::new())
    } else {
        path.strip_prefix("rootfs/").map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: vec![] }
    }

    fn run(entries: Vec<Entry>) -> Result<(Vec<String>, Stats)> {
        let mut sink = CheckedSink::new(Vec::new());
        for entry in entries {
            let size = match entry.kind {
                EntryKind::File { size } => size as usize,
                _ => 0,
            };
            sink.push(entry, &mut &vec![b'x'; size][..])?;
        }
        let stats = sink.stats();
        let tar_bytes = sink.into_bytes_for_test()?;
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let names = ar.entries()?.map(|x| x.unwrap().path().unwrap().display().to_string()).collect();
        Ok((names, stats))
    }

    impl CheckedSink<Vec<u8>> {
        fn into_bytes_for_test(mut self) -> Result<Vec<u8>> {
            if matches!(self.mode, Mode::Undecided) {
                self.mode = Mode::Plain;
                self.flush_buffered()?;
            }
            Ok(self.out.finish()?.inner)
        }
    }

    #[test]
    fn dotdot_is_refused_with_the_entry_name() {
        let err = run(vec![e("../etc/passwd", EntryKind::File { size: 1 })]).unwrap_err();
        assert!(err.to_string().contains("../etc/passwd"), "{err}");
    }

    #[test]
    fn placing_through_a_symlink_is_refused() {
        let err = run(vec![
            e("evil", EntryKind::Symlink { target: "/etc".into() }),
            e("evil/passwd", EntryKind::File { size: 1 }),
        ])
        .unwrap_err();
        assert!(matches!(err.downcast_ref::<RootfsError>(), Some(RootfsError::ThroughSymlink { .. })), "{err}");
    }

    #[test]
    fn hard_link_must_name_an_earlier_file() {
        let err = run(vec![e("a", EntryKind::HardLink { target: "missing".into() })]).unwrap_err();
        assert!(err.to_string().contains("missing"));
        let ok = run(vec![
            e("bin", EntryKind::Directory),
            e("bin/a", EntryKind::File { size: 2 }),
            e("bin/b", EntryKind::HardLink { target: "./bin/a".into() }),
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn release_rootfs_becomes_the_root() {
        let (names, stats) = run(vec![
            e("VERSION", EntryKind::File { size: 3 }),
            e("rootfs", EntryKind::Directory),
            e("rootfs/usr", EntryKind::Directory),
            e("rootfs/usr/bin", EntryKind::Directory),
            e("rootfs/usr/bin/planet", EntryKind::File { size: 4 }),
            e("orbit.manifest.json", EntryKind::File { size: 2 }),
        ])
        .unwrap();
        assert!(stats.planet_release && stats.has_planet_launcher);
        assert_eq!(names, vec!["./", "usr/", "usr/bin/", "usr/bin/planet"]);
    }

    #[test]
    fn plain_rootfs_keeps_top_level_files() {
        let (names, stats) = run(vec![
            e("./", EntryKind::Directory),
            e("vmlinuz", EntryKind::Symlink { target: "boot/vmlinuz".into() }),
            e("etc", EntryKind::Directory),
            e("etc/hostname", EntryKind::File { size: 3 }),
        ])
        .unwrap();
        assert!(!stats.planet_release);
        assert_eq!(names, vec!["./", "vmlinuz", "etc/", "etc/hostname"]);
    }

    /// Sizes come from the archive: sums of absurd ones are errors, never overflow panics.
    #[test]
    fn huge_sizes_do_not_overflow() {
        let mut sink = CheckedSink::new(Vec::new());
        sink.push(e("./", EntryKind::Directory), &mut std::io::empty()).unwrap();
        sink.push(e("a", EntryKind::File { size: u64::MAX - 1 }), &mut std::io::empty()).unwrap_err();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sink.push(e("b", EntryKind::File { size: u64::MAX - 1 }), &mut std::io::empty())
        }));
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }

    #[test]
    fn duplicates_are_refused() {
        let err = run(vec![e("a", EntryKind::File { size: 1 }), e("a", EntryKind::File { size: 1 })]).unwrap_err();
        assert!(err.to_string().contains("twice"));
    }
}
