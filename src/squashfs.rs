//! The slot image: the canonical rootfs tar streamed into `tar2sqfs` (squashfs-tools-ng).
//!
//! Why squashfs-tools-ng rather than a writer of our own: libsquashfs already compresses blocks
//! on all cores, packs fragments, deduplicates, stores hard links, device nodes and xattrs from a
//! tar stream, runs without root, and its output order is deterministic. Our rootfs stage owns
//! what matters to us (input formats, path safety, Planet releases); the format work is theirs.
//! See docs/design.md.

use crate::rootfs::{RootfsSource, RootfsSummary};
use crate::util::command::{check_status, require_tool};
use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Read};
use std::path::Path;
use std::process::{Command, Stdio};

/// Block compression of the slot image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Compression {
    Zstd(u8),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(15)
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let level = match s.split_once(':') {
            Some(("zstd", l)) => l.parse::<u8>().map_err(|_| format!("bad zstd level {l:?}"))?,
            None if s == "zstd" => 15,
            _ => return Err(format!("unknown compression {s:?}: use zstd or zstd:LEVEL (1-22)")),
        };
        if !(1..=22).contains(&level) {
            return Err(format!("zstd level {level} is outside 1-22"));
        }
        Ok(Compression::Zstd(level))
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Writes the squashfs for `source` at `out` and returns what the rootfs stage saw.
pub fn build_slot_image(
    source: &RootfsSource,
    out: &Path,
    compression: Compression,
    epoch: u64,
) -> Result<RootfsSummary> {
    require_tool("tar2sqfs", "squashfs-tools-ng")?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Compression::Zstd(level) = compression;
    let mut cmd = Command::new("tar2sqfs");
    cmd.args(["--quiet", "--force", "--no-skip", "--compressor", "zstd"])
        .arg("--comp-extra")
        .arg(format!("level={level}"))
        .arg("--num-jobs")
        .arg(jobs.to_string())
        .arg("--defaults")
        .arg(format!("uid=0,gid=0,mode=0755,mtime={epoch}"))
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let shown = format!("tar2sqfs … {}", out.display());
    let mut child = cmd.spawn().context("starting tar2sqfs (install squashfs-tools-ng)")?;
    let stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let streamed = source.stream_canonical_tar(BufWriter::with_capacity(1 << 20, stdin));
    let status = child.wait().context("waiting for tar2sqfs")?;
    let err = err_reader.join().unwrap_or_default();
    let summary = match streamed {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(out);
            // A broken pipe only means tar2sqfs stopped first; its own error says why.
            return match check_status(&shown, &status, &err) {
                Err(tool) => Err(e.context(tool.to_string())),
                Ok(()) => Err(e),
            };
        }
    };
    check_status(&shown, &status, &err)?;
    if !out.is_file() {
        bail!("tar2sqfs reported success but wrote no {}", out.display());
    }
    Ok(summary)
}
