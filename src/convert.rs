//! Converting the raw disk into the formats platforms take: qcow2 (through `qemu-img`, the
//! standard) and the GCE image archive (written here: a gzip'd tar, GNU "oldgnu" format,
//! holding one sparse member `disk.raw`, as `images.insert` expects).

use crate::util::command::CommandExt;
use crate::util::sparse::{data_extents, Extent, NoHoleMap};
use crate::util::tar_header::{put_bytes, put_number, seal, BLOCK};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const GIB: u64 = 1 << 30;

/// `qemu-img convert` raw → qcow2.
pub fn qcow2(raw: &Path, out: &Path) -> Result<()> {
    std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .run_checked()?;
    Ok(())
}

/// Writes `raw` (whose size must be a whole number of GiB) as a gzip'd GNU tar with one sparse
/// member `disk.raw`.
pub fn gce_archive(raw: &Path, out: &Path, mtime: u64) -> Result<()> {
    let mut src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let size = src.metadata()?.len();
    if size % GIB != 0 {
        bail!("a GCE disk must be a whole number of GiB; {} is {size} bytes", raw.display());
    }
    // Extents rounded out to 512 bytes, as tar stores them.
    let mut extents: Vec<(u64, u64)> = Vec::new();
    // Where holes cannot be mapped this fails, as it always has, rather than archive every zero.
    let mapped = data_extents(&src, size, NoHoleMap::Fail).context("finding data in the raw image")?;
    for Extent { offset: off, len } in mapped {
        let start = off / BLOCK as u64 * BLOCK as u64;
        let end = (off + len).div_ceil(BLOCK as u64) * BLOCK as u64;
        match extents.last_mut() {
            Some(last) if last.0 + last.1 >= start => last.1 = end.max(last.0 + last.1) - last.0,
            _ => extents.push((start, end - start)),
        }
    }
    // GNU tar marks the file's end with an empty extent when it ends in a hole.
    if extents.last().map(|(o, l)| o + l) != Some(size) {
        extents.push((size, 0));
    }
    let stored: u64 = extents.iter().map(|e| e.1).sum();
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(1 << 20, file), flate2::Compression::new(6));

    let mut header = [0u8; BLOCK];
    put_bytes(&mut header[0..100], b"disk.raw");
    put_number(&mut header[100..108], 0o644);
    put_number(&mut header[108..116], 0);
    put_number(&mut header[116..124], 0);
    put_number(&mut header[124..136], stored);
    put_number(&mut header[136..148], mtime);
    header[156] = b'S';
    header[257..265].copy_from_slice(b"ustar  \0");
    put_bytes(&mut header[265..297], b"root");
    put_bytes(&mut header[297..329], b"root");
    for (i, (off, len)) in extents.iter().take(4).enumerate() {
        put_number(&mut header[386 + i * 24..386 + i * 24 + 12], *off);
        put_number(&mut header[386 + i * 24 + 12..386 + i * 24 + 24], *len);
    }
    header[482] = u8::from(extents.len() > 4);
    put_number(&mut header[483..495], size);
    seal(&mut header);
    gz.write_all(&header)?;
    // Extension blocks: 21 extents each, chained by their last byte.
    let rest: Vec<&(u64, u64)> = extents.iter().skip(4).collect();
    for (n, chunk) in rest.chunks(21).enumerate() {
        let mut ext = [0u8; BLOCK];
        for (i, (off, len)) in chunk.iter().enumerate() {
            put_number(&mut ext[i * 24..i * 24 + 12], *off);
            put_number(&mut ext[i * 24 + 12..i * 24 + 24], *len);
        }
        ext[504] = u8::from((n + 1) * 21 < rest.len());
        gz.write_all(&ext)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for (off, len) in &extents {
        src.seek(SeekFrom::Start(*off))?;
        let mut left = *len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n]).with_context(|| format!("reading {}", raw.display()))?;
            gz.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    let pad = (BLOCK - (stored % BLOCK as u64) as usize) % BLOCK;
    gz.write_all(&vec![0u8; pad + 2 * BLOCK])?;
    let mut inner = gz.finish().context("finishing the gzip stream")?;
    inner.flush()?;
    inner.get_ref().sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn gnu_tar_lists_and_extracts_the_sparse_member() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let raw = dir.join("in.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(GIB).unwrap();
        let mut f = f;
        // More than four extents, to exercise the extension blocks.
        for i in 0..9u64 {
            f.seek(SeekFrom::Start(i * 64 * 1024 * 1024 + 4096)).unwrap();
            f.write_all(&[i as u8 + 1; 3000]).unwrap();
        }
        f.seek(SeekFrom::Start(GIB - 512)).unwrap();
        f.write_all(&[0xEE; 512]).unwrap();
        drop(f);
        let out = dir.join("image.tar.gz");
        gce_archive(&raw, &out, 1_700_000_000).unwrap();
        let list = Command::new("tar").arg("-tvzf").arg(&out).output().unwrap();
        assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
        let text = String::from_utf8_lossy(&list.stdout);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" 1073741824 ") && text.trim_end().ends_with("disk.raw"), "{text}");
        // GNU tar lists sparse members like regular files; Python's reader tells them apart.
        let py =
            "import tarfile,sys\nm=tarfile.open(sys.argv[1]).getmembers()\nprint(len(m), m[0].name, m[0].issparse())";
        let sparse = Command::new("python3").args(["-c", py]).arg(&out).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&sparse.stdout).trim(), "1 disk.raw True");
        let x = dir.join("x");
        std::fs::create_dir_all(&x).unwrap();
        let st = Command::new("tar").arg("-xzSf").arg(&out).arg("-C").arg(&x).status().unwrap();
        assert!(st.success());
        let a = std::fs::read(&raw).unwrap();
        let b = std::fs::read(x.join("disk.raw")).unwrap();
        assert!(a == b, "extracted disk differs from the input");
    }

    #[test]
    fn refuses_a_size_that_is_not_whole_gib() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("odd.raw");
        File::create(&raw).unwrap().set_len(GIB + 512).unwrap();
        let e = gce_archive(&raw, &dir.path().join("o.tar.gz"), 0).unwrap_err();
        assert!(e.to_string().contains("whole number of GiB"), "{e:#}");
    }
}
