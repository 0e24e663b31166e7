//! The slot image: the canonical rootfs tar streamed into `tar2sqfs` (squashfs-tools-ng).
//!
//! Why squashfs-tools-ng rather than a writer of our own: libsquashfs already compresses blocks
//! on all cores, packs fragments, deduplicates, stores hard links, device nodes and xattrs from a
//! tar stream, runs without root, and its output order is deterministic. Our rootfs stage owns
//! what matters to us (input formats, path safety, Planet releases); the format work is theirs.
//! See docs/design.md.
//!
//! `--compression none` is the one exception: libsquashfs has no way to store blocks
//! uncompressed on purpose (it only does so when compressing does not shrink a block), so an
//! uncompressed slot image comes from `sqfstar` (squashfs-tools) with `-noI -noD -noF -noX`.

use crate::util::command::{check_status, require_tool};
use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Block compression of the slot image. Its text (`zstd:15`, `none`) goes into manifests and the
/// input digest; `--compression` is parsed in cli.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Compression {
    Zstd(u8),
    /// Data, fragments, inodes and xattrs stored uncompressed (written by `sqfstar`).
    None,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::None => f.write_str("none"),
        }
    }
}

/// Writes the squashfs at `out` from the canonical tar stream that `feed` writes into the tool's
/// standard input, and returns what `feed` returned. The slot writer knows nothing of where the
/// entries come from: the rootfs stage checks them and hands over one stream (pipeline.rs joins
/// the two), so another writer — an in-process one — can take the same stream.
pub fn write_slot_image<T>(
    out: &Path,
    compression: Compression,
    epoch: u64,
    feed: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (mut cmd, tool) = match compression {
        Compression::Zstd(level) => {
            require_tool("tar2sqfs", "squashfs-tools-ng")?;
            let mut cmd = Command::new("tar2sqfs");
            cmd.args(["--quiet", "--force", "--no-skip", "--compressor", "zstd"])
                .arg("--comp-extra")
                .arg(format!("level={level}"))
                .arg("--num-jobs")
                .arg(jobs.to_string())
                .arg("--defaults")
                .arg(format!("uid=0,gid=0,mode=0755,mtime={epoch}"))
                .arg(out);
            (cmd, "tar2sqfs")
        }
        Compression::None => {
            require_tool("sqfstar", "squashfs-tools")?;
            // The superblock names zstd (the kernel's squashfs needs some known compressor
            // id), but every block is flagged uncompressed. -root-time is ignored by sqfstar
            // 4.5.1, so the root inode's mtime is set afterwards (patch_root_mtime).
            let mut cmd = Command::new("sqfstar");
            // sqfstar refuses SOURCE_DATE_EPOCH next to -mkfs-time, and would stamp every
            // file with it; the epoch is given explicitly instead.
            cmd.env_remove("SOURCE_DATE_EPOCH")
                .args(["-noI", "-noD", "-noF", "-noX", "-comp", "zstd", "-quiet", "-no-progress", "-force"])
                .args(["-root-mode", "0755", "-root-uid", "0", "-root-gid", "0"])
                .arg("-mkfs-time")
                .arg(epoch.to_string())
                .arg("-processors")
                .arg(jobs.to_string())
                .arg(out);
            let _ = std::fs::remove_file(out);
            (cmd, "sqfstar")
        }
    };
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let shown = format!("{tool} … {}", out.display());
    let mut child = cmd.spawn().with_context(|| format!("starting {tool}"))?;
    let stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let streamed = {
        let mut input = BufWriter::with_capacity(1 << 20, stdin);
        feed(&mut input).and_then(|fed| {
            input.flush().context("writing the rootfs stream")?;
            Ok(fed)
        })
    };
    let status = child.wait().with_context(|| format!("waiting for {tool}"))?;
    let err = err_reader.join().unwrap_or_default();
    let fed = match streamed {
        Ok(fed) => fed,
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
        bail!("{tool} reported success but wrote no {}", out.display());
    }
    if compression == Compression::None {
        patch_root_mtime(out, epoch)?;
    }
    Ok(fed)
}

/// Sets the root directory inode's mtime to `epoch` in an image whose inode table is stored
/// uncompressed, so `--compression none` builds are as reproducible as the zstd ones.
fn patch_root_mtime(image: &Path, epoch: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(image)?;
    let mut sb = [0u8; 96];
    f.read_exact(&mut sb).with_context(|| format!("reading the superblock of {}", image.display()))?;
    let offset = root_mtime_offset(&sb)?;
    let mtime = u32::try_from(epoch).context("the epoch does not fit squashfs's 32-bit mtime")?;
    // Each metadata block starts with a 2-byte header: bit 15 set means stored uncompressed.
    let mut header = [0u8; 2];
    f.seek(SeekFrom::Start(offset.block))?;
    f.read_exact(&mut header)?;
    if u16::from_le_bytes(header) & 0x8000 == 0 {
        bail!("the root inode of {} is in a compressed metadata block", image.display());
    }
    f.seek(SeekFrom::Start(offset.mtime))?;
    f.write_all(&mtime.to_le_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Where the root inode's metadata block and its mtime field are.
struct RootMtimeOffset {
    block: u64,
    mtime: u64,
}

fn root_mtime_offset(sb: &[u8; 96]) -> Result<RootMtimeOffset> {
    let u64_at = |at: usize| u64::from_le_bytes(sb[at..at + 8].try_into().expect("8 bytes"));
    if &sb[0..4] != b"hsqs" {
        bail!("not a squashfs superblock");
    }
    // root_inode_ref: block start relative to the inode table (bits 16..) and offset inside
    // the block's data (low 16 bits); the inode header is type, mode, uid, gid (u16 each), mtime.
    let root_ref = u64_at(32);
    let inode_table = u64_at(64);
    let block = inode_table + (root_ref >> 16);
    Ok(RootMtimeOffset { block, mtime: block + 2 + (root_ref & 0xffff) + 8 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_inode_mtime() {
        let mut sb = [0u8; 96];
        sb[0..4].copy_from_slice(b"hsqs");
        // Root inode in the metadata block 8194 bytes into the inode table, at offset 90.
        sb[32..40].copy_from_slice(&((8194u64 << 16) | 90).to_le_bytes());
        sb[64..72].copy_from_slice(&42_819_845u64.to_le_bytes());
        let o = root_mtime_offset(&sb).unwrap();
        assert_eq!(o.block, 42_819_845 + 8194);
        assert_eq!(o.mtime, 42_819_845 + 8194 + 2 + 90 + 8);
        sb[0] = b'x';
        assert!(root_mtime_offset(&sb).is_err());
    }
}
