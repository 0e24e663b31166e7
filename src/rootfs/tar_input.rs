//! Reads a tar archive (ustar, pax or GNU) entry by entry into the checked sink.

use super::guard::{CheckedSink, RootfsError};
use super::{Entry, EntryKind};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use tar::EntryType;

/// The most a rootfs's GNU sparse files may leave out in holes, all together: the holes cost
/// nothing in the archive but are streamed as zeros, so an exabyte-sized sparse entry would
/// keep a build busy forever. Real root filesystems have next to none.
pub const MAX_SPARSE_HOLES: u64 = 1 << 30;

pub fn read_tar<R: Read, W: Write>(input: R, sink: &mut CheckedSink<W>) -> Result<()> {
    let mut archive = tar::Archive::new(super::tar_gate::TarGate::new(input));
    let mut count = 0u64;
    let mut holes = 0u64;
    for item in archive.entries().context("reading the tar stream")? {
        let mut item = item
            .with_context(|| format!("reading the tar header after entry #{count} (corrupt or truncated archive?)"))?;
        count += 1;
        let raw_path = String::from_utf8(item.path_bytes().into_owned())
            .map_err(|e| RootfsError::NotUtf8 { entry: String::from_utf8_lossy(e.as_bytes()).into_owned() })?;
        let header = item.header().clone();
        let ty = header.entry_type();
        if ty == EntryType::GNUSparse {
            // The crate has checked the map: the stored data is part of the expanded size.
            let stored = header.entry_size().unwrap_or(0);
            holes = item.size().saturating_sub(stored).saturating_add(holes);
            if holes > MAX_SPARSE_HOLES {
                bail!(
                    "entry {raw_path:?} is a sparse file of {} bytes with {stored} stored: more than {} GiB of holes \
                     in the rootfs's sparse files is refused",
                    item.size(),
                    MAX_SPARSE_HOLES >> 30
                );
            }
        }
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File { size: item.size() },
            EntryType::Directory => EntryKind::Directory,
            EntryType::Symlink => EntryKind::Symlink { target: link_of(&mut item, &raw_path)? },
            EntryType::Link => EntryKind::HardLink { target: link_of(&mut item, &raw_path)? },
            EntryType::Char | EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if ty == EntryType::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                }
            }
            EntryType::Fifo => EntryKind::Fifo,
            // Extension headers the tar crate has already folded into the next entry.
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => bail!("entry {raw_path:?} has an unsupported tar type {:?}", other.as_byte() as char),
        };
        let mut xattrs = Vec::new();
        if let Some(exts) = item.pax_extensions().with_context(|| format!("reading pax headers of {raw_path:?}"))? {
            for ext in exts {
                let ext = ext.with_context(|| format!("reading pax headers of {raw_path:?}"))?;
                if let Ok(key) = ext.key() {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        xattrs.sort();
        let entry = Entry {
            path: raw_path.clone(),
            kind,
            mode: header.mode().with_context(|| format!("reading the mode of {raw_path:?}"))? & 0o7777,
            uid: header.uid().with_context(|| format!("reading the owner of {raw_path:?}"))?,
            gid: header.gid().with_context(|| format!("reading the group of {raw_path:?}"))?,
            mtime: header.mtime().unwrap_or(0),
            xattrs,
        };
        sink.push(entry, &mut item)?;
    }
    if count == 0 {
        bail!("the archive holds no entries (empty or not a tar file)");
    }
    Ok(())
}

fn link_of<R: Read>(item: &mut tar::Entry<'_, R>, raw_path: &str) -> Result<String> {
    let bytes = item.link_name_bytes().with_context(|| format!("link entry {raw_path:?} has no target"))?;
    String::from_utf8(bytes.into_owned()).map_err(|_| RootfsError::NotUtf8 { entry: raw_path.to_string() }.into())
}
