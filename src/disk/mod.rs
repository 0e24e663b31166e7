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
            Content::File(p) => copy_file_data(p, &mut f, offset, limit),
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

/// Copies the file at `path` to `dst` at `offset`, reading only its data extents: a sparse
/// content file (the state filesystem is a few MiB of metadata in hundreds of MiB) would
/// otherwise have every hole read as zeros by the kernel, which the profile of a build showed
/// as a fifth of its CPU time. Returns the file's length.
fn copy_file_data(path: &Path, dst: &mut File, offset: u64, limit: u64) -> Result<u64> {
    use crate::util::sparse::{data_extents, NoHoleMap};
    let mut src = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = src.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len();
    anyhow::ensure!(len <= limit, "{} ({len} bytes) does not fit its partition ({limit} bytes)", path.display());
    for e in data_extents(&src, len, NoHoleMap::AllData)? {
        src.seek(SeekFrom::Start(e.offset))?;
        copy_sparse(&mut (&mut src).take(e.len), dst, offset + e.offset, limit - e.offset)?;
    }
    Ok(len)
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

/// The digests of a disk image: each partition's range, and the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDigests {
    /// sha256 of each partition's byte range, in the plan's order.
    pub partitions: Vec<String>,
    /// sha256 of the whole file.
    pub whole: String,
}

/// Hashes a disk image once: every partition's range and the whole file, in one pass over it.
/// Holes (from its sparse map) are hashed as the zeros they read as, without being read; the
/// whole-file digest runs on a thread of its own beside the partitions'.
pub fn digests(plan: &Plan, raw: &Path) -> Result<DiskDigests> {
    use crate::util::sparse::{data_extents, NoHoleMap};
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 1 << 20;
    /// What passes to the whole-file hasher: bytes read, or a run of zeros.
    enum Piece {
        Data(Vec<u8>),
        Zeros(u64),
    }
    fn feed_zeros(h: &mut Sha256, mut n: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..k]);
            n -= k as u64;
        }
    }

    let mut f = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let total = f.metadata()?.len();
    let extents = data_extents(&f, total, NoHoleMap::AllData)?;
    let ranges: Vec<(u64, u64)> = plan
        .partitions
        .iter()
        .map(|p| (p.offset(plan.sector_size), p.offset(plan.sector_size) + p.size(plan.sector_size)))
        .collect();
    let mut parts: Vec<Sha256> = ranges.iter().map(|_| Sha256::new()).collect();
    // Each piece of the file (start, data or zeros) also goes to the partitions it overlaps.
    let mut to_parts = |start: u64, data: Option<&[u8]>, len: u64| {
        for (i, (a, b)) in ranges.iter().enumerate() {
            let (from, to) = (start.max(*a), (start + len).min(*b));
            if from < to {
                match data {
                    Some(d) => parts[i].update(&d[(from - start) as usize..(to - start) as usize]),
                    None => feed_zeros(&mut parts[i], to - from),
                }
            }
        }
    };
    let whole = std::thread::scope(|s| -> Result<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(4);
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for piece in rx {
                match piece {
                    Piece::Data(d) => h.update(&d[..]),
                    Piece::Zeros(n) => feed_zeros(&mut h, n),
                }
            }
            hex::encode(h.finalize())
        });
        let mut pos = 0u64;
        let mut walk = || -> Result<()> {
            for e in extents.iter().chain(std::iter::once(&crate::util::sparse::Extent { offset: total, len: 0 })) {
                if e.offset > pos {
                    to_parts(pos, None, e.offset - pos);
                    let _ = tx.send(Piece::Zeros(e.offset - pos));
                    pos = e.offset;
                }
                let end = e.offset + e.len;
                f.seek(SeekFrom::Start(pos))?;
                while pos < end {
                    let n = (end - pos).min(BLOCK as u64) as usize;
                    let mut block = vec![0u8; n];
                    f.read_exact(&mut block)?;
                    to_parts(pos, Some(&block), n as u64);
                    let _ = tx.send(Piece::Data(block));
                    pos += n as u64;
                }
            }
            Ok(())
        };
        let walked = walk().with_context(|| format!("reading {}", raw.display()));
        drop(tx);
        let whole = hasher.join().map_err(|_| anyhow::anyhow!("the disk hasher panicked"))?;
        walked.map(|()| whole)
    })?;
    Ok(DiskDigests { partitions: parts.into_iter().map(|h| hex::encode(h.finalize())).collect(), whole })
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
    fn a_sparse_file_is_copied_by_its_data_extents() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let (src_path, dst_path) = (dir.path().join("src"), dir.path().join("dst"));
        let mib = 1u64 << 20;
        let src = File::create(&src_path).unwrap();
        src.set_len(8 * mib).unwrap();
        src.write_all_at(b"superblock", 1024).unwrap();
        src.write_all_at(&[7u8; 100_000], 5 * mib + 3).unwrap();
        drop(src);
        let mut dst = File::options().create(true).truncate(true).read(true).write(true).open(&dst_path).unwrap();
        dst.set_len(16 * mib).unwrap();
        let at = 4096;
        assert_eq!(copy_file_data(&src_path, &mut dst, at, 8 * mib).unwrap(), 8 * mib);
        let mut want = vec![0u8; 16 * mib as usize];
        want[(at + 1024) as usize..][..10].copy_from_slice(b"superblock");
        want[(at + 5 * mib + 3) as usize..][..100_000].fill(7);
        assert!(std::fs::read(&dst_path).unwrap() == want, "the copy differs from the file");
        // The holes stay holes in the destination too.
        let written: u64 = crate::util::sparse::data_extents(&dst, 16 * mib, crate::util::sparse::NoHoleMap::Fail)
            .unwrap()
            .iter()
            .map(|e| e.len)
            .sum();
        assert!(written < 2 * mib, "{written} bytes of data in the destination");
        // A file larger than its partition is refused before anything is written.
        let err = copy_file_data(&src_path, &mut dst, at, 8 * mib - 1).unwrap_err();
        assert!(format!("{err:#}").contains("does not fit its partition"), "{err:#}");
    }

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
    fn one_pass_digests_are_those_of_each_range_and_of_the_file() {
        use crate::util::digest::{sha256_file, sha256_range};
        let layout = crate::layout::Layout::load_profile(None, "default").unwrap();
        let plan = plan::plan(&layout, 3 << 20, 70 << 20, &"ab".repeat(32), 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // A sparse disk: the GPT, data across a partition's start and across the 1 MiB blocks
        // of the pass, data at the very end, holes everywhere else.
        let slot_a = plan.partition(planet_config::contract::SLOT_A_LABEL).offset(plan.sector_size);
        let mut f = File::create(&raw).unwrap();
        f.set_len(plan.total_bytes()).unwrap();
        plan.gpt().unwrap().write_to(&mut f).unwrap();
        for (at, len) in [(slot_a - 4096, 8192u64), (slot_a + (1 << 20) - 7, 3 << 20), (plan.total_bytes() - 100, 100)]
        {
            f.seek(SeekFrom::Start(at)).unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            f.write_all(&bytes).unwrap();
        }
        drop(f);
        let d = digests(&plan, &raw).unwrap();
        assert_eq!(d.whole, sha256_file(&raw).unwrap());
        let mut f = File::open(&raw).unwrap();
        assert_eq!(d.partitions.len(), plan.partitions.len());
        for (p, got) in plan.partitions.iter().zip(&d.partitions) {
            let want = sha256_range(&mut f, p.offset(plan.sector_size), p.size(plan.sector_size)).unwrap();
            assert_eq!(got, &want, "partition {}", p.label);
        }
    }

    #[test]
    fn oversized_content_is_refused() {
        let data = [1u8; 100];
        let mut dst = Cursor::new(vec![0u8; 1000]);
        assert!(copy_sparse(&mut &data[..], &mut dst, 0, 50).is_err());
    }
}
