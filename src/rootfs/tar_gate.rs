//! A reader in front of the `tar` crate that bounds what it would read whole into memory.
//!
//! tar 0.4 reads GNU long-name (`L`), long-link (`K`) and pax (`x`) extension entries whole
//! (`read_all`), however large their header says they are: a 2 GiB long name of `a`s gzips to
//! about 2 MB and runs the builder out of memory. This gate follows the archive's block
//! structure exactly as the crate does (the same header parsing, the pax `size` override, GNU
//! sparse extension blocks) and fails the read at the header of any such entry larger than
//! [`MAX_EXTENSION`], before the crate allocates anything for it.

use std::io::{self, Read};

/// The largest long-name, long-link or pax extension entry accepted (real ones are a path, or
/// a few xattrs: kilobytes).
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: usize = 512;

pub struct TarGate<R: Read> {
    inner: R,
    /// Bytes of entry data still to pass through before the next header block.
    data_left: u64,
    /// The current block being gathered (a header or a sparse extension block).
    block: [u8; BLOCK],
    filled: usize,
    /// Bytes of `block` already handed out.
    served: usize,
    /// What the block being gathered is.
    expect: Expect,
    /// The data of a recognised pax entry (exactly its size, as the crate reads it), gathered
    /// while it passes through, and how many bytes of it are still to come.
    pax: Option<(Vec<u8>, u64)>,
    /// The pax data that describes the next entry (the crate applies its `size`).
    pending_pax: Option<Vec<u8>>,
    /// Data of a GNU sparse entry, passed once its extension blocks are through.
    sparse_data: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Header,
    SparseExtension,
}

impl<R: Read> TarGate<R> {
    pub fn new(inner: R) -> TarGate<R> {
        TarGate {
            inner,
            data_left: 0,
            block: [0; BLOCK],
            filled: 0,
            served: 0,
            expect: Expect::Header,
            pax: None,
            pending_pax: None,
            sparse_data: 0,
        }
    }

    /// Looks at a complete header (or sparse extension) block and sets what follows it.
    fn inspect(&mut self) -> io::Result<()> {
        if self.expect == Expect::SparseExtension {
            // GnuExtSparseHeader: 21 sparse entries, then `isextended` at byte 504.
            if self.block[504] != 1 {
                self.expect = Expect::Header;
                self.data_left = self.sparse_data;
            }
            return Ok(());
        }
        if self.block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.block);
        let ty = header.entry_type();
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions();
        let is_extension_header = extension || ty.is_pax_global_extensions();
        // An unreadable size: the crate fails on this header too.
        let mut size = header.entry_size().unwrap_or(0);
        if !is_extension_header {
            if let Some(pax) = self.pending_pax.take() {
                if let Some(s) = pax_size(&pax) {
                    size = s;
                }
            }
        }
        if recognised && extension && size > MAX_EXTENSION {
            let what = if ty.is_pax_local_extensions() { "pax extended header" } else { "GNU long name or link" };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a {what} entry of {size} bytes (more than {} KiB) after {:?}: refused, it would be read whole into memory",
                    MAX_EXTENSION >> 10,
                    String::from_utf8_lossy(header.path_bytes().as_ref()).chars().take(100).collect::<String>()
                ),
            ));
        }
        if recognised && ty.is_pax_local_extensions() {
            // At most MAX_EXTENSION, checked above.
            self.pax = Some((Vec::with_capacity(size as usize), size));
        } else if !(recognised && extension) {
            // The entry the extensions described (or any other): they are used up.
            self.pending_pax = None;
        }
        let padded = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a tar entry size overflows"))?;
        if ty.is_gnu_sparse() && header.as_gnu().is_some_and(|g| g.is_extended()) {
            self.expect = Expect::SparseExtension;
            self.sparse_data = padded;
        } else {
            self.data_left = padded;
        }
        self.pax_done();
        Ok(())
    }

    /// Once a pax entry's data is through, it describes the next entry.
    fn pax_done(&mut self) {
        if self.pax.as_ref().is_some_and(|(_, left)| *left == 0) {
            self.pending_pax = self.pax.take().map(|(p, _)| p);
        }
    }
}

/// The pax `size` record, read as the tar crate reads it.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGate<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Hand out the rest of an inspected block first.
        if self.served < self.filled {
            let n = (self.filled - self.served).min(buf.len());
            buf[..n].copy_from_slice(&self.block[self.served..self.served + n]);
            self.served += n;
            return Ok(n);
        }
        if self.data_left > 0 {
            let want = buf.len().min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            self.data_left -= n as u64;
            if let Some((p, left)) = &mut self.pax {
                let take = (n as u64).min(*left) as usize;
                p.extend_from_slice(&buf[..take]);
                *left -= take as u64;
            }
            self.pax_done();
            return Ok(n);
        }
        // The next block: gather all of it, inspect, then serve it.
        self.filled = 0;
        self.served = 0;
        while self.filled < BLOCK {
            let n = self.inner.read(&mut self.block[self.filled..])?;
            if n == 0 {
                break;
            }
            self.filled += n;
        }
        if self.filled == BLOCK {
            self.inspect()?;
        }
        if self.filled == 0 {
            return Ok(0);
        }
        self.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(bytes: &[u8]) -> io::Result<Vec<(String, u64)>> {
        let mut a = tar::Archive::new(TarGate::new(bytes));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let n = io::copy(&mut e, &mut io::sink())?;
            out.push((name, n));
        }
        Ok(out)
    }

    #[test]
    fn archives_with_long_names_pax_and_sparse_files_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("usr/{}/file", "d".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"v"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/x", &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        assert_eq!(entries(&bytes).unwrap(), [(long, 5), ("etc/x".to_string(), 3)]);
        // Byte for byte what went in, whatever the read sizes.
        let mut out = Vec::new();
        let mut g = TarGate::new(&bytes[..]);
        let mut buf = [0u8; 7];
        loop {
            let n = g.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, bytes);
    }

    fn ext_header(ty: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn oversized_extension_entries_are_refused_at_their_header() {
        for ty in [b'L', b'K', b'x'] {
            // Only the header: the refusal comes before any of the data is read.
            let bytes = ext_header(ty, 1 << 40);
            let e = entries(&bytes).unwrap_err();
            assert!(e.to_string().contains("refused"), "{}: {e}", ty as char);
        }
        // At the limit it is fine (and then the archive is merely truncated).
        let mut bytes = ext_header(b'L', 600);
        bytes.extend_from_slice(&[b'a'; 1024]);
        assert!(!entries(&bytes).map_err(|e| e.to_string()).unwrap_err().contains("refused"));
    }
}
