//! A file's sparse map: the byte ranges that hold data, from `lseek` SEEK_DATA/SEEK_HOLE, so
//! holes in a raw disk image are never read (the GCE archive, the EBS upload, their digests).

use anyhow::{Context, Result};
use std::fs::File;

/// A byte range of the file that holds data (everything else is a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// What [`data_extents`] does on a filesystem that cannot tell data from holes (SEEK_DATA
/// fails with EINVAL or EOPNOTSUPP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHoleMap {
    /// Report the rest of the file as data: correct for a reader that checks what it reads
    /// (the EBS upload skips zero blocks), only slower.
    AllData,
    /// Fail, as for any other error.
    Fail,
}

/// The data extents of the first `size` bytes of `file`, in order.
pub fn data_extents(file: &File, size: u64, no_hole_map: NoHoleMap) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let data = match super::sys::seek_data(file, pos) {
            Ok(data) => data,
            Err(err) => match err.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole up to the end
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if no_hole_map == NoHoleMap::AllData => {
                    out.push(Extent { offset: pos, len: size - pos });
                    break;
                }
                _ => return Err(err).context("seeking to the next data range (SEEK_DATA)"),
            },
        };
        let hole = super::sys::seek_hole(file, data).context("seeking to the next hole (SEEK_HOLE)")?;
        let hole = hole.min(size);
        if hole > data {
            out.push(Extent { offset: data, len: hole - data });
        }
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holes_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options().create(true).truncate(true).read(true).write(true).open(dir.path().join("d")).unwrap();
        let mib = 1u64 << 20;
        f.set_len(16 * mib).unwrap();
        f.write_all_at(b"data", 8 * mib).unwrap();
        for mode in [NoHoleMap::AllData, NoHoleMap::Fail] {
            let ext = data_extents(&f, 16 * mib, mode).unwrap();
            // Filesystems map data in blocks of their own size; the written bytes are inside one.
            assert!(ext.iter().any(|e| e.offset <= 8 * mib && e.offset + e.len >= 8 * mib + 4), "{ext:?}");
            assert!(ext.iter().map(|e| e.len).sum::<u64>() < 16 * mib, "{ext:?}");
        }
    }
}
