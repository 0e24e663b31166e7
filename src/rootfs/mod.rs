//! Rootfs input: a directory or a tarball (plain, gzip, zstd, xz), possibly a Planet release
//! (a top-level `rootfs/`). Every reader yields one stream of checked entries, re-emitted as a
//! canonical tar that the squashfs stage consumes; nothing is extracted to disk.

mod dir_input;
mod entry;
mod guard;
mod tar_gate;
mod tar_input;
pub mod tar_writer;

pub use entry::{Entry, EntryKind};
pub use guard::RootfsError;

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What the rootfs stage learned about its input.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RootfsSummary {
    /// The input's path as given.
    pub source: String,
    /// `directory`, `tar`, `tar.gz`, `tar.zst` or `tar.xz`.
    pub format: String,
    /// SHA-256 of the input file; for a directory, of the canonical tar stream.
    pub sha256: String,
    /// Whether a Planet release (`rootfs/` at the top level) was recognised.
    pub planet_release: bool,
    /// Whether the root carries a Planet launcher (`usr/bin/planet`).
    pub has_planet_launcher: bool,
    pub entries: u64,
    pub file_bytes: u64,
    /// The apps added to the slot (`--app`), in the order the master applies them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<planet_config::app::SlotApp>,
}

/// Where the entries of a rootfs come from.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    Directory(PathBuf),
    Tar { path: PathBuf, compression: Compression },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    fn format_name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
            Compression::Xz => "tar.xz",
        }
    }
}

impl RootfsSource {
    /// Recognises the input by what it is, sniffing compression from magic bytes (names lie).
    pub fn detect(path: &Path) -> Result<RootfsSource> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!("reading the rootfs {}: pass a directory or a .tar[.gz|.zst|.xz]", path.display())
        })?;
        if meta.is_dir() {
            return Ok(RootfsSource::Directory(path.to_path_buf()));
        }
        let mut magic = [0u8; 6];
        let mut f = std::fs::File::open(path).with_context(|| format!("opening the rootfs {}", path.display()))?;
        let n = read_up_to(&mut f, &mut magic)?;
        let compression = match &magic[..n] {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Compression::Xz,
            _ => Compression::None,
        };
        Ok(RootfsSource::Tar { path: path.to_path_buf(), compression })
    }

    /// The input's path as given.
    pub fn path(&self) -> &Path {
        match self {
            RootfsSource::Directory(path) | RootfsSource::Tar { path, .. } => path,
        }
    }

    /// Streams the rootfs, then the app packages `apps` (each checked against its index), as
    /// a canonical tar into `out`, checking every entry.
    pub fn stream_canonical_tar<W: Write>(&self, out: W, apps: &[PathBuf]) -> Result<RootfsSummary> {
        let mut sink = guard::CheckedSink::new(out);
        let mut summary = RootfsSummary::default();
        match self {
            RootfsSource::Directory(dir) => {
                summary.source = dir.display().to_string();
                summary.format = "directory".into();
                dir_input::walk(dir, &mut sink)?;
            }
            RootfsSource::Tar { path, compression } => {
                summary.source = path.display().to_string();
                summary.format = compression.format_name().into();
                let file =
                    std::fs::File::open(path).with_context(|| format!("opening the rootfs {}", path.display()))?;
                let mut hashing =
                    crate::util::digest::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, file));
                {
                    let decoded: Box<dyn Read + '_> = match compression {
                        Compression::None => Box::new(&mut hashing),
                        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut hashing)),
                        Compression::Zstd => Box::new(zstd::Decoder::new(&mut hashing)?),
                        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(&mut hashing)),
                    };
                    tar_input::read_tar(decoded, &mut sink)
                        .with_context(|| format!("reading the rootfs tarball {}", path.display()))?;
                }
                // Hash whatever trails the archive too, so the digest covers the whole file.
                std::io::copy(&mut hashing, &mut std::io::sink())?;
                summary.sha256 = hashing.finish().0;
            }
        }
        summary.apps = add_apps(&mut sink, apps)?;
        let stats = sink.stats();
        summary.planet_release = stats.planet_release;
        summary.has_planet_launcher = stats.has_planet_launcher;
        summary.entries = stats.entries;
        summary.file_bytes = stats.file_bytes;
        let stream_digest = sink.finish()?;
        if summary.sha256.is_empty() {
            summary.sha256 = stream_digest;
        }
        Ok(summary)
    }
}

/// Each package under `usr/share/planet/apps/NAME/`, then the list of them in order.
fn add_apps<W: Write>(sink: &mut guard::CheckedSink<W>, apps: &[PathBuf]) -> Result<Vec<planet_config::app::SlotApp>> {
    use planet_config::app::SLOT_APPS_INDEX;
    let mut added: Vec<planet_config::app::SlotApp> = Vec::new();
    for path in apps {
        let app = crate::app::add_to_slot(path, sink)?;
        if let Some(first) = added.iter().find(|a| a.name == app.name) {
            anyhow::bail!(
                "two apps are named {:?} ({} {} and {}); give each --app once",
                app.name,
                first.version,
                app.version,
                path.display()
            );
        }
        added.push(app);
    }
    if !added.is_empty() {
        let list = serde_json::to_vec_pretty(&added)?;
        let entry = Entry {
            path: SLOT_APPS_INDEX.to_string(),
            kind: EntryKind::File { size: list.len() as u64 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        };
        crate::app::SlotSink::add(sink, entry, &mut &list[..])?;
    }
    Ok(added)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}
