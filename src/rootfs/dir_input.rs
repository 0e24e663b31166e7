//! Walks a directory tree in sorted order, reading owners, modes, xattrs, device numbers and
//! hard links from the filesystem as they are.

use super::guard::CheckedSink;
use super::{Entry, EntryKind};
use crate::util::sys;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub fn walk<W: Write>(root: &Path, sink: &mut CheckedSink<W>) -> Result<()> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    visit(root, root, "", sink, &mut links)
}

/// `path` names the entry in messages; `at` is how it is reached: below the root, through the
/// already-opened parent directory (`/proc/self/fd/N/NAME`), so a directory swapped for a
/// symlink after it was checked cannot lead the walk elsewhere.
fn visit<W: Write>(
    path: &Path,
    at: &Path,
    rel: &str,
    sink: &mut CheckedSink<W>,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<()> {
    let meta = std::fs::symlink_metadata(at).with_context(|| format!("reading {}", path.display()))?;
    let ft = meta.file_type();
    let mut kind = if ft.is_dir() {
        EntryKind::Directory
    } else if ft.is_symlink() {
        let t = std::fs::read_link(at).with_context(|| format!("reading the link {}", path.display()))?;
        EntryKind::Symlink {
            target: t.to_str().with_context(|| format!("link target of {} is not UTF-8", path.display()))?.to_string(),
        }
    } else if ft.is_file() {
        EntryKind::File { size: meta.len() }
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else {
            EntryKind::BlockDevice { major, minor }
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        eprintln!("planet-image: skipping socket {}", path.display());
        return Ok(());
    };
    if let EntryKind::File { .. } = kind {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            match links.get(&key) {
                Some(first) => kind = EntryKind::HardLink { target: first.clone() },
                None => {
                    links.insert(key, rel.to_string());
                }
            }
        }
    }
    let entry = Entry {
        path: rel.to_string(),
        kind: kind.clone(),
        mode: meta.mode() & 0o7777,
        uid: u64::from(meta.uid()),
        gid: u64::from(meta.gid()),
        mtime: meta.mtime().max(0) as u64,
        xattrs: read_xattrs(at).with_context(|| format!("reading extended attributes of {}", path.display()))?,
    };
    match kind {
        EntryKind::File { .. } => {
            let mut f = open_same_file(at, &meta).with_context(|| path.display().to_string())?;
            sink.push(entry, &mut f)?;
        }
        EntryKind::Directory => {
            sink.push(entry, &mut std::io::empty())?;
            let dir = open_same_dir(at, &meta).with_context(|| path.display().to_string())?;
            let pinned = std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
            let base = if pinned.is_dir() { pinned } else { at.to_path_buf() };
            let mut children: Vec<_> = std::fs::read_dir(&base)
                .with_context(|| format!("listing {}", path.display()))?
                .map(|d| d.map(|d| d.file_name()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("listing {}", path.display()))?;
            children.sort();
            for name in children {
                let name_str = name.to_str().with_context(|| format!("a name in {} is not UTF-8", path.display()))?;
                let child_rel = if rel.is_empty() { name_str.to_string() } else { format!("{rel}/{name_str}") };
                visit(&path.join(&name), &base.join(&name), &child_rel, sink, links)?;
            }
        }
        _ => sink.push(entry, &mut std::io::empty())?,
    }
    Ok(())
}

/// Opens the regular file `path` that `meta` (its `lstat`) describes, without following a
/// symlink and without blocking on a FIFO: a file swapped for a link or another file between
/// the two (say `/etc/shadow` by someone who can write the input tree) is refused, not read.
fn open_same_file(path: &Path, meta: &std::fs::Metadata) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .context("opening it (is it readable by this user, and still a file?)")?;
    let now = f.metadata().context("reading it")?;
    if !now.is_file() || (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        anyhow::bail!("it changed while the rootfs was read (replaced by another file or a link); build again");
    }
    Ok(f)
}

/// Opens the directory `path` that `meta` (its `lstat`) describes, not following a symlink.
fn open_same_dir(path: &Path, meta: &std::fs::Metadata) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(path)
        .context("opening the directory (replaced by a link while the rootfs was read?)")?;
    let now = d.metadata().context("reading the directory")?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        anyhow::bail!("the directory changed while the rootfs was read; build again");
    }
    Ok(d)
}

/// Extended attributes of `path` itself (not a symlink's target), sorted by name.
fn read_xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // An empty buffer asks for the length.
    let len = match sys::llistxattr(&c, &mut []) {
        Ok(len) => len,
        Err(err) if err.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names = vec![0u8; len];
    let len = sys::llistxattr(&c, &mut names)?;
    names.truncate(len);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name)?;
        let vlen = sys::lgetxattr(&c, &cname, &mut [])?;
        let mut value = vec![0u8; vlen];
        let vlen = sys::lgetxattr(&c, &cname, &mut value)?;
        value.truncate(vlen);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_swapped_for_a_link_or_another_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("passwd");
        std::fs::write(&f, "mine").unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "not yours").unwrap();
        let meta = std::fs::symlink_metadata(&f).unwrap();
        open_same_file(&f, &meta).unwrap();
        // Swapped for a symlink after the lstat.
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&secret, &f).unwrap();
        assert!(open_same_file(&f, &meta).is_err());
        // Swapped for a hard link to another file.
        std::fs::remove_file(&f).unwrap();
        std::fs::hard_link(&secret, &f).unwrap();
        let e = format!("{:#}", open_same_file(&f, &meta).unwrap_err());
        assert!(e.contains("changed"), "{e}");
        // Swapped for a FIFO: refused at once, not a blocked build.
        std::fs::remove_file(&f).unwrap();
        let c = std::ffi::CString::new(f.as_os_str().as_bytes()).unwrap();
        crate::util::sys::mkfifo(&c, 0o600).unwrap();
        assert!(open_same_file(&f, &meta).is_err());
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_refused_and_walks_name_real_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("etc");
        std::fs::create_dir(&d).unwrap();
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let meta = std::fs::symlink_metadata(&d).unwrap();
        open_same_dir(&d, &meta).unwrap();
        std::fs::remove_dir(&d).unwrap();
        std::os::unix::fs::symlink(&other, &d).unwrap();
        assert!(open_same_dir(&d, &meta).is_err());
        // A walk through pinned parents reads everything, and names real paths in errors.
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "h\n").unwrap();
        let mut sink = CheckedSink::new(Vec::new());
        walk(&root, &mut sink).unwrap();
        assert_eq!(sink.stats().entries, 3);
        let mut sink = CheckedSink::new(Vec::new());
        let e = format!("{:#}", walk(&root.join("missing"), &mut sink).unwrap_err());
        assert!(e.contains("root/missing"), "{e}");
    }
}
