//! The data of a raw image as EBS blocks: the file's sparse map (`lseek` SEEK_DATA/SEEK_HOLE),
//! so holes are never read, cut into 512 KiB blocks; all-zero blocks are left out.

use anyhow::{Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub use crate::util::sparse::Extent;
use crate::util::sparse::NoHoleMap;

/// The EBS direct APIs' block size.
pub const BLOCK_SIZE: u64 = 512 * 1024;
const GIB: u64 = 1 << 30;

/// The data extents of `file`. A filesystem without SEEK_DATA support reports the whole file as
/// data, which is still correct (zero blocks are skipped after reading).
pub fn data_extents(file: &File, size: u64) -> Result<Vec<Extent>> {
    crate::util::sparse::data_extents(file, size, NoHoleMap::AllData)
}

/// The indices of the 512 KiB blocks that overlap data extents, ascending, each once.
pub fn candidate_blocks(extents: &[Extent]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in extents.iter().filter(|e| e.len > 0) {
        let first = e.offset / BLOCK_SIZE;
        let last = (e.offset + e.len - 1) / BLOCK_SIZE;
        for i in first..=last {
            if out.last().map_or(true, |&l| l < i) {
                out.push(i);
            }
        }
    }
    out
}

/// Reads block `index` (zero-padded past the end of the file). `None` when it is all zero.
pub fn read_block(file: &File, size: u64, index: u64) -> Result<Option<Vec<u8>>> {
    let offset = index * BLOCK_SIZE;
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let len = BLOCK_SIZE.min(size.saturating_sub(offset)) as usize;
    file.read_exact_at(&mut buf[..len], offset).with_context(|| format!("reading block {index} (offset {offset})"))?;
    Ok(if is_zero(&buf) { None } else { Some(buf) })
}

/// Whether `buf` is all zero (memcmp against a zero block: fast in debug builds too).
pub fn is_zero(buf: &[u8]) -> bool {
    static ZERO: [u8; BLOCK_SIZE as usize] = [0; BLOCK_SIZE as usize];
    buf.chunks(ZERO.len()).all(|c| c == &ZERO[..c.len()])
}

/// The SHA-256 of a block, binary.
pub fn block_digest(block: &[u8]) -> [u8; 32] {
    Sha256::digest(block).into()
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The LINEAR aggregate checksum CompleteSnapshot takes: the SHA-256 of the concatenated
/// binary SHA-256 digests of every block written, in block-index order, base64-encoded.
pub fn linear_aggregate(blocks: &[(u64, [u8; 32])]) -> String {
    let mut sorted: Vec<&(u64, [u8; 32])> = blocks.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut h = Sha256::new();
    for (_, d) in sorted {
        h.update(d);
    }
    base64(&h.finalize())
}

/// The snapshot's size in GiB: the image rounded up, or `requested` when it is at least that.
pub fn volume_size_gib(image_size: u64, requested: Option<u64>) -> Result<u64> {
    let needed = image_size.div_ceil(GIB).max(1);
    match requested {
        None => Ok(needed),
        Some(r) if r >= needed => Ok(r),
        Some(r) => anyhow::bail!(
            "--volume-size {r} GiB is smaller than the image ({image_size} bytes needs {needed} GiB); \
             pass at least {needed} or leave it out"
        ),
    }
}

/// A digest of the image's content that reads only its data extents: sha256 over the size and,
/// per extent, its offset, length and bytes. Used when no manifest gives the raw digest.
pub fn sparse_digest(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    for e in data_extents(&file, size)? {
        h.update(e.offset.to_le_bytes());
        h.update(e.len.to_le_bytes());
        let mut done = 0;
        while done < e.len {
            let n = (e.len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], e.offset + done)
                .with_context(|| format!("reading {}", path.display()))?;
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn candidate_blocks_cover_extents_once() {
        let e = [
            Extent { offset: 0, len: 10 },
            Extent { offset: 100, len: 10 },
            Extent { offset: BLOCK_SIZE - 1, len: 2 },
            Extent { offset: 5 * BLOCK_SIZE, len: BLOCK_SIZE },
        ];
        assert_eq!(candidate_blocks(&e), vec![0, 1, 5]);
    }

    #[test]
    fn sparse_file_blocks_skip_holes_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p).unwrap();
        let size = 64 * BLOCK_SIZE + 1000;
        f.set_len(size).unwrap();
        f.write_all_at(b"hello", 3 * BLOCK_SIZE + 7).unwrap();
        f.write_all_at(&vec![0u8; BLOCK_SIZE as usize], 10 * BLOCK_SIZE).unwrap(); // written zeros
        f.write_all_at(b"tail", size - 4).unwrap();
        (&f).flush().unwrap();
        let ext = data_extents(&f, size).unwrap();
        let cands = candidate_blocks(&ext);
        assert!(cands.contains(&3) && cands.contains(&64));
        assert!(!cands.contains(&20), "a hole is not a candidate: {cands:?}");
        let nonzero: Vec<u64> = cands.iter().copied().filter(|&i| read_block(&f, size, i).unwrap().is_some()).collect();
        assert_eq!(nonzero, vec![3, 64]);
        let last = read_block(&f, size, 64).unwrap().unwrap();
        assert_eq!(last.len(), BLOCK_SIZE as usize);
        assert_eq!(&last[996..1000], b"tail");
        assert!(last[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn linear_aggregate_is_sha256_of_digests_in_index_order() {
        let a = block_digest(b"a");
        let b = block_digest(b"b");
        let mut cat = Vec::new();
        cat.extend_from_slice(&a);
        cat.extend_from_slice(&b);
        let expected = base64(&Sha256::digest(&cat));
        assert_eq!(linear_aggregate(&[(7, b), (2, a)]), expected);
        assert_eq!(linear_aggregate(&[(2, a), (7, b)]), expected);
        // Known value: sha256 of nothing, for no blocks.
        assert_eq!(linear_aggregate(&[]), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }

    #[test]
    fn volume_size_rounds_up_and_checks_requests() {
        assert_eq!(volume_size_gib(1, None).unwrap(), 1);
        assert_eq!(volume_size_gib(GIB, None).unwrap(), 1);
        assert_eq!(volume_size_gib(GIB + 1, None).unwrap(), 2);
        assert_eq!(volume_size_gib(GIB + 1, Some(8)).unwrap(), 8);
        assert!(volume_size_gib(3 * GIB, Some(2)).unwrap_err().to_string().contains("at least 3"));
    }
}
