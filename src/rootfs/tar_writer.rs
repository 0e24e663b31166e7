//! A minimal POSIX (pax) tar writer: the canonical stream handed to the squashfs stage.
//! Written here rather than through the `tar` crate because that crate cannot emit pax
//! extended headers (needed for xattrs) and because every byte must be deterministic.

use super::{Entry, EntryKind};
use crate::util::tar_header::{fits_octal, put_bytes, put_octal, seal, BLOCK};
use anyhow::{bail, Result};
use std::io::{Read, Write};

pub struct TarWriter<W: Write> {
    out: W,
    /// Entries whose POSIX ACLs were left out (squashfs cannot store them).
    pub acls_dropped: u64,
}

/// xattrs squashfs has no place for: POSIX ACLs (systemd sets them on /var/log/journal).
/// mksquashfs drops them with a warning; tar2sqfs refuses the whole image. We drop them and
/// say so once.
fn storable_in_squashfs(name: &str) -> bool {
    !name.starts_with("system.posix_acl_")
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, acls_dropped: 0 }
    }

    /// Writes one entry; for regular files exactly `size` bytes are copied from `data`.
    pub fn write_entry(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()> {
        let mut name = if e.path.is_empty() { "./".to_string() } else { e.path.clone() };
        if matches!(e.kind, EntryKind::Directory) && !name.ends_with('/') {
            name.push('/');
        }
        let (typeflag, link, size, dev) = match &e.kind {
            EntryKind::File { size } => (b'0', "", *size, (0, 0)),
            EntryKind::HardLink { target } => (b'1', target.as_str(), 0, (0, 0)),
            EntryKind::Symlink { target } => (b'2', target.as_str(), 0, (0, 0)),
            EntryKind::CharDevice { major, minor } => (b'3', "", 0, (*major, *minor)),
            EntryKind::BlockDevice { major, minor } => (b'4', "", 0, (*major, *minor)),
            EntryKind::Directory => (b'5', "", 0, (0, 0)),
            EntryKind::Fifo => (b'6', "", 0, (0, 0)),
        };

        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if name.len() > 100 || !name.is_ascii() {
            pax.push(("path".into(), name.as_bytes().to_vec()));
        }
        if link.len() > 100 || !link.is_ascii() {
            pax.push(("linkpath".into(), link.as_bytes().to_vec()));
        }
        for (field, value, width) in [("uid", e.uid, 8), ("gid", e.gid, 8), ("size", size, 12), ("mtime", e.mtime, 12)]
        {
            if !fits_octal(value, width) {
                pax.push((field.into(), value.to_string().into_bytes()));
            }
        }
        let mut dropped = false;
        for (k, v) in &e.xattrs {
            if storable_in_squashfs(k) {
                pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
            } else {
                dropped = true;
            }
        }
        if dropped {
            if self.acls_dropped == 0 {
                eprintln!(
                    "planet-image: note: POSIX ACLs cannot be stored in squashfs and are left out \
                     (as mksquashfs does), first on /{}",
                    e.path
                );
            }
            self.acls_dropped += 1;
        }
        if !pax.is_empty() {
            let body = pax_body(&pax);
            let header = ustar_header("././@PaxHeader", b'x', "", body.len() as u64, 0o644, 0, 0, e.mtime, (0, 0));
            self.out.write_all(&header)?;
            self.write_padded(&mut &body[..], body.len() as u64)?;
        }
        let header = ustar_header(&name, typeflag, link, size, e.mode, e.uid, e.gid, e.mtime, dev);
        self.out.write_all(&header)?;
        if size > 0 {
            self.write_padded(data, size)?;
        }
        Ok(())
    }

    fn write_padded(&mut self, data: &mut dyn Read, size: u64) -> Result<()> {
        let copied = std::io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            bail!("file data ended after {copied} of {size} bytes (truncated input?)");
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// Ends the archive (two zero blocks) and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn pax_body(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        // The length prefix counts itself, so find the fixed point.
        let rest = 1 + k.len() + 1 + v.len() + 1;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

#[allow(clippy::too_many_arguments)]
fn ustar_header(
    name: &str,
    typeflag: u8,
    link: &str,
    size: u64,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    dev: (u32, u32),
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    // Values too large for their field travel in the entry's pax record; the field says 0.
    let put = |field: &mut [u8], v: u64| put_octal(field, if fits_octal(v, field.len()) { v } else { 0 });
    put_bytes(&mut h[0..100], name.as_bytes());
    put(&mut h[100..108], u64::from(mode & 0o7777));
    put(&mut h[108..116], uid);
    put(&mut h[116..124], gid);
    put(&mut h[124..136], size);
    put(&mut h[136..148], mtime);
    h[156] = typeflag;
    put_bytes(&mut h[157..257], link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if typeflag == b'3' || typeflag == b'4' {
        put(&mut h[329..337], u64::from(dev.0));
        put(&mut h[337..345], u64::from(dev.1));
    }
    seal(&mut h);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_length_counts_itself() {
        let body = pax_body(&[("path".into(), vec![b'a'; 95])]);
        let text = String::from_utf8(body.clone()).unwrap();
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, body.len());
    }

    #[test]
    fn round_trips_through_the_tar_crate() {
        let mut w = TarWriter::new(Vec::new());
        let long = format!("usr/{}/file", "d".repeat(120));
        let file = Entry {
            path: long.clone(),
            kind: EntryKind::File { size: 5 },
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: vec![
                ("system.posix_acl_default".into(), b"\x02\x00\x00\x00".to_vec()),
                ("user.test".into(), b"v\x00bin".to_vec()),
            ],
        };
        w.write_entry(&file, &mut &b"hello"[..]).unwrap();
        let dev = Entry {
            path: "dev/null".into(),
            kind: EntryKind::CharDevice { major: 1, minor: 3 },
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        };
        w.write_entry(&dev, &mut std::io::empty()).unwrap();
        assert_eq!(w.acls_dropped, 1);
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str().unwrap(), long);
        assert_eq!(first.header().mode().unwrap(), 0o4755);
        let ext: Vec<_> =
            first.pax_extensions().unwrap().unwrap().map(|e| e.unwrap().key().unwrap().to_string()).collect();
        assert!(ext.contains(&"SCHILY.xattr.user.test".to_string()));
        assert!(!ext.iter().any(|k| k.contains("posix_acl")), "{ext:?}");
        let mut s = String::new();
        first.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let second = entries.next().unwrap().unwrap();
        assert_eq!(second.header().device_major().unwrap(), Some(1));
        assert_eq!(second.header().device_minor().unwrap(), Some(3));
    }
}
