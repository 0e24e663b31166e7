//! SHA-256 over files and byte ranges, streamed, for manifests and reproducibility.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    sha256_range(&mut f, 0, len).with_context(|| format!("hashing {}", path.display()))
}

/// Digest of `len` bytes starting at `offset`.
pub fn sha256_range<R: Read + Seek>(r: &mut R, offset: u64, len: u64) -> Result<String> {
    r.seek(SeekFrom::Start(offset))?;
    let mut h = Sha256::new();
    let copied = std::io::copy(&mut r.take(len), &mut HashWriter(&mut h))?;
    anyhow::ensure!(copied == len, "short read: {copied} of {len} bytes");
    Ok(hex::encode(h.finalize()))
}

/// A `Write` that feeds a hasher, so digests can be taken while data streams elsewhere.
pub struct HashWriter<'a>(pub &'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Read` adapter that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
