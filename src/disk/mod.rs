//! Assembling the raw disk: a sparse file of the planned size, the GPT, and each partition's
//! bytes at its offset. All-zero runs are skipped (left as holes), so the image takes only the
//! space its data needs and later stages (EBS upload, qcow2) see the holes. Where each partition
//! goes is [`plan`]'s, worked out before any byte is written.

pub mod plan;

use anyhow::{Context, Result};
use plan::Plan;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const CHUNK: usize = 64 * 1024;

/// Where a partition's content comes from.
pub enum Content<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
    Empty,
}

/// Writes the whole disk to `out` (which must not exist yet or is truncated).
pub fn assemble(plan: &Plan, contents: &[(&str, Content<'_>)], out: &Path) -> Result<()> {
    let mut f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.set_len(plan.total_bytes()).with_context(|| format!("sizing {}", out.display()))?;
    plan.gpt()?.write_to(&mut f).with_context(|| format!("writing the GPT to {}", out.display()))?;
    for (label, content) in contents {
        let part = plan.partition(label);
        let offset = part.offset(plan.sector_size);
        let limit = part.size(plan.sector_size);
        let written = match content {
            Content::Bytes(b) => copy_sparse(&mut &b[..], &mut f, offset, limit),
            Content::File(p) => {
                let mut src = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                copy_sparse(&mut src, &mut f, offset, limit)
            }
            Content::Empty => Ok(0),
        }
        .with_context(|| format!("writing partition {label} into {}", out.display()))?;
        anyhow::ensure!(written <= limit, "partition {label} content is larger than its {limit} bytes");
    }
    f.sync_all().with_context(|| format!("syncing {}", out.display()))?;
    Ok(())
}

/// Writes `bytes` to a new file at `path`, leaving all-zero chunks as holes.
pub fn write_sparse(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes.len() as u64)?;
    copy_sparse(&mut &bytes[..], &mut f, 0, bytes.len() as u64)?;
    f.sync_all()?;
    Ok(())
}

/// Copies `src` to `dst` at `offset`, seeking over all-zero chunks. Errors if more than
/// `limit` bytes come.
fn copy_sparse<R: Read, W: Write + Seek>(src: &mut R, dst: &mut W, offset: u64, limit: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        anyhow::ensure!(pos + filled as u64 <= limit, "content does not fit its partition ({limit} bytes)");
        if buf[..filled].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(offset + pos))?;
            dst.write_all(&buf[..filled])?;
        }
        pos += filled as u64;
        if filled < CHUNK {
            break;
        }
    }
    Ok(pos)
}

/// Creates the empty ext4 state filesystem with `mkfs.ext4`, reproducibly: UUID and hash
/// seed derived from the inputs, timestamps fixed to SOURCE_DATE_EPOCH.
pub fn make_state_fs(path: &Path, size: u64, uuid: &str, label: &str, epoch: u64) -> Result<()> {
    use crate::util::command::{require_tool, CommandExt};
    require_tool("mkfs.ext4", "e2fsprogs")?;
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    drop(f);
    std::process::Command::new("mkfs.ext4")
        // 4 KiB blocks: mountable on 4Kn disks, and the same geometry however far it grows.
        .args(["-q", "-F", "-b", "4096", "-L", label, "-U", uuid, "-E"])
        .arg(format!("hash_seed={uuid},root_owner=0:0,nodiscard"))
        .arg(path)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .run_checked()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn zero_chunks_are_not_written() {
        let mut data = vec![0u8; CHUNK * 3];
        data[CHUNK + 5] = 1;
        // A destination pre-filled with 0xFF shows which ranges were written.
        let mut dst = Cursor::new(vec![0xFFu8; CHUNK * 4]);
        let n = copy_sparse(&mut &data[..], &mut dst, 512, (CHUNK * 3) as u64).unwrap();
        assert_eq!(n, (CHUNK * 3) as u64);
        let d = dst.into_inner();
        assert_eq!(d[512], 0xFF); // first chunk skipped
        assert_eq!(d[512 + CHUNK + 5], 1);
        assert_eq!(d[512 + 2 * CHUNK + 1], 0xFF);
    }

    #[test]
    fn oversized_content_is_refused() {
        let data = [1u8; 100];
        let mut dst = Cursor::new(vec![0u8; 1000]);
        assert!(copy_sparse(&mut &data[..], &mut dst, 0, 50).is_err());
    }
}
