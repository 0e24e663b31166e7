//! Making a chunked bundle on a machine from the bytes it already has, fetching only the rest.
//!
//! The machine fetches the bundle's prelude, header and chunk indexes (one range at the start
//! of the file), checks them against its keys, then makes the bundle file chunk by chunk: a
//! chunk already in the partial file from an earlier attempt stays, a chunk found in local data
//! (the running slot, the running kernel and initramfs) is copied from there, and the rest are
//! fetched by range, adjacent ones in one request. Every chunk is checked against the signed
//! index before it is written, wherever it came from. The finished file is then verified whole,
//! like any downloaded bundle, and only then takes its final name: what gets installed is
//! byte for byte the bundle the builder signed.
//!
//! The partial file (`DEST.partial`) survives a broken connection or a power cut; the next
//! attempt keeps every chunk in it that still matches the index, so nothing verified is
//! fetched twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::chunks::{self, ChunkList, ChunkParams, ChunkStore, Transfer};
use crate::{header_bytes_needed, parse_header, read_prelude_ring, Header, KeyRing, Prelude, PRELUDE_LEN};

/// Where the bundle's bytes are fetched from (an HTTP server answering range requests, say).
pub trait RangeSource {
    /// The bundle's bytes `[offset, offset + len)`, as a stream: chunks are checked and written
    /// as they arrive, so a connection that breaks loses at most the chunk it was in.
    fn open_range(&mut self, offset: u64, len: u64) -> Result<Box<dyn Read + '_>>;
}

/// Adjacent missing chunks are fetched in requests of at most this many bytes.
const MAX_REQUEST: u64 = 8 << 20;

/// Local data whose chunks may be in the new bundle: a file, or its `len` bytes from `offset`
/// (a slot partition holds a squashfs followed by whatever was there before; an earlier bundle
/// holds its sections at their offsets).
#[derive(Clone, Debug)]
pub struct LocalData {
    pub path: PathBuf,
    pub offset: u64,
    pub len: Option<u64>,
}

impl LocalData {
    /// The whole of `path`, or its first `len` bytes.
    pub fn file(path: impl Into<PathBuf>, len: Option<u64>) -> LocalData {
        LocalData { path: path.into(), offset: 0, len }
    }
}

/// Where each chunk went from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assembly {
    /// Bytes fetched in all (the prelude, header and indexes included) and the requests made.
    pub fetched_bytes: u64,
    pub requests: u64,
    pub fetched_chunks: u64,
    /// Chunks copied from local data.
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// Chunks already in the partial file from an earlier attempt.
    pub resumed_chunks: u64,
    pub resumed_bytes: u64,
    /// The bundle's size.
    pub total_bytes: u64,
}

/// A remote that counts what it is asked for.
struct Counted<'a> {
    inner: &'a mut dyn RangeSource,
    bytes: u64,
    requests: u64,
}

impl Counted<'_> {
    /// Fetches `[offset, offset + len)` and hands each piece of `piece` bytes to `each` as it
    /// arrives.
    fn fetch(
        &mut self,
        offset: u64,
        pieces: impl IntoIterator<Item = usize>,
        mut each: impl FnMut(usize, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let pieces: Vec<usize> = pieces.into_iter().collect();
        let len: u64 = pieces.iter().map(|p| *p as u64).sum();
        let what = || format!("fetching bytes {}..{} of the bundle", offset, offset + len);
        self.requests += 1;
        let mut r = self.inner.open_range(offset, len).with_context(what)?;
        let mut buf = Vec::new();
        for (i, p) in pieces.into_iter().enumerate() {
            buf.resize(p, 0);
            r.read_exact(&mut buf).with_context(what)?;
            self.bytes += p as u64;
            each(i, &buf)?;
        }
        Ok(())
    }

    /// The bytes `[offset, offset + len)`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        self.fetch(offset, [len], |_, bytes| {
            buf.copy_from_slice(bytes);
            Ok(())
        })
    }
}

/// What the start of a chunked bundle says, checked.
pub struct Head {
    pub prelude: Prelude,
    pub header: Header,
    /// The prelude, header and index sections as they are in the file: `[0, data_start)`.
    pub bytes: Vec<u8>,
    /// Each data section's chunks, in the header's order.
    pub indexes: Vec<(String, ChunkList)>,
}

/// Fetches and checks the prelude (against `ring`), the header (against the signed digest) and
/// the chunk indexes (against the header). A bundle that is not chunked is an error saying so.
pub fn fetch_head(remote: &mut dyn RangeSource, ring: &KeyRing) -> Result<Head> {
    let mut counted = Counted { inner: remote, bytes: 0, requests: 0 };
    fetch_head_counted(&mut counted, ring)
}

fn fetch_head_counted(remote: &mut Counted<'_>, ring: &KeyRing) -> Result<Head> {
    // The prelude and the header's length, then the header, then the indexes: three small
    // requests, and not a byte fetched that the estimate does not count.
    let mut bytes = vec![0; PRELUDE_LEN as usize + 4];
    remote.read(0, &mut bytes)?;
    let prelude = read_prelude_ring(&bytes, ring)?;
    ensure!(
        prelude.head.is_some(),
        "the bundle of release {} is not chunked (made without chunk indexes): it can only be downloaded whole",
        prelude.release
    );
    let needed = header_bytes_needed(&bytes[PRELUDE_LEN as usize..])? as u64;
    grow(remote, &mut bytes, PRELUDE_LEN + needed, prelude.total_bytes)?;
    let header = parse_header(&bytes[PRELUDE_LEN as usize..], &prelude)?;
    let data_start = header
        .sections
        .iter()
        .filter(|s| !s.name.starts_with(chunks::INDEX_PREFIX))
        .map(|s| s.offset)
        .min()
        .context("the bundle has no data sections")?;
    let index_end = header
        .sections
        .iter()
        .filter(|s| s.name.starts_with(chunks::INDEX_PREFIX))
        .map(|s| s.offset + s.size)
        .max()
        .unwrap_or(data_start);
    ensure!(index_end <= data_start, "bad bundle header: a chunk index lies after the data it indexes");
    grow(remote, &mut bytes, data_start, prelude.total_bytes)?;
    bytes.truncate(data_start as usize);
    let mut indexes = Vec::new();
    for s in header.sections.iter().filter(|s| !s.name.starts_with(chunks::INDEX_PREFIX)) {
        let ix = header.section(&chunks::index_section(&s.name))?;
        let list = chunks::read_index(&header, &s.name, &bytes[ix.offset as usize..(ix.offset + ix.size) as usize])?;
        indexes.push((s.name.clone(), list));
    }
    Ok(Head { prelude, header, bytes, indexes })
}

/// Makes `bytes` hold the file's first `len` bytes, fetching what is missing.
fn grow(remote: &mut Counted<'_>, bytes: &mut Vec<u8>, len: u64, total: u64) -> Result<()> {
    ensure!(len <= total, "bad bundle header: it points past the end of the bundle ({total} bytes)");
    // The header and the indexes: a few MiB for the largest rootfs; anything far beyond is
    // refused before it is allocated.
    ensure!(len <= 64 << 20, "bad bundle header: its chunk indexes end {len} bytes into the file");
    let have = bytes.len() as u64;
    if have < len {
        bytes.resize(len as usize, 0);
        remote.read(have, &mut bytes[have as usize..])?;
    }
    Ok(())
}

/// Where a chunk can be read locally.
#[derive(Clone, Copy)]
struct LocalChunk {
    source: usize,
    offset: u64,
    len: u32,
}

/// The chunks of local data, by digest.
struct LocalChunks {
    files: Vec<File>,
    by_digest: HashMap<[u8; 32], LocalChunk>,
}

impl LocalChunks {
    /// What cannot be read is left out: local data only saves downloads.
    fn scan(local: &[LocalData], params: ChunkParams) -> LocalChunks {
        let mut files = Vec::new();
        let mut by_digest = HashMap::new();
        for l in local {
            let f = match File::open(&l.path) {
                Ok(f) => f,
                Err(_) => continue,
            };
            if (&f).seek(SeekFrom::Start(l.offset)).is_err() {
                continue;
            }
            let mut r = (&f).take(l.len.unwrap_or(u64::MAX));
            let Ok(list) = ChunkList::of_reader(&mut r, params) else { continue };
            let mut offset = l.offset;
            for c in &list.chunks {
                by_digest.entry(c.sha256).or_insert(LocalChunk { source: files.len(), offset, len: c.len });
                offset += u64::from(c.len);
            }
            files.push(f);
        }
        LocalChunks { files, by_digest }
    }

    /// The chunk's bytes when local data holds them intact.
    fn read(&self, digest: &[u8; 32], buf: &mut [u8]) -> bool {
        let Some(at) = self.by_digest.get(digest) else { return false };
        at.len as usize == buf.len()
            && self.files[at.source].read_exact_at(buf, at.offset).is_ok()
            && Sha256::digest(&*buf).as_slice() == digest
    }
}

/// The partial file's name for `dest`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Makes the chunked bundle `remote` serves at `dest`, from `local` data and the chunks of an
/// earlier attempt where it can, checking everything against `ring`; `progress` gets a line now
/// and then. On error `DEST.partial` keeps the chunks verified so far and `dest` is not made.
pub fn assemble(
    remote: &mut dyn RangeSource,
    ring: &KeyRing,
    local: &[LocalData],
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(Prelude, Header, Assembly)> {
    let mut remote = Counted { inner: remote, bytes: 0, requests: 0 };
    let head = fetch_head_counted(&mut remote, ring)?;
    let total = head.prelude.total_bytes;
    let params = head.indexes.first().map(|(_, l)| l.params).context("the bundle has no data sections")?;
    let locals = LocalChunks::scan(local, params);
    let partial = partial_path(dest);
    let file = open_partial(&partial, &head.bytes[..PRELUDE_LEN as usize], total)?;
    file.write_all_at(&head.bytes, 0).with_context(|| format!("writing {}", partial.display()))?;
    let mut a = Assembly { total_bytes: total, ..Assembly::default() };
    let mut buf = Vec::new();
    let mut written = head.bytes.len() as u64;
    for (name, list) in &head.indexes {
        let section = head.header.section(name)?;
        // The zero padding before the section.
        file.write_all_at(&vec![0; (section.offset - written) as usize], written)?;
        let mut missing: Vec<(u64, chunks::Chunk)> = Vec::new();
        let mut offset = section.offset;
        for c in &list.chunks {
            buf.resize(c.len as usize, 0);
            if file.read_exact_at(&mut buf, offset).is_ok() && Sha256::digest(&buf).as_slice() == c.sha256 {
                a.resumed_chunks += 1;
                a.resumed_bytes += u64::from(c.len);
            } else if locals.read(&c.sha256, &mut buf) {
                file.write_all_at(&buf, offset).with_context(|| format!("writing {}", partial.display()))?;
                a.reused_chunks += 1;
                a.reused_bytes += u64::from(c.len);
            } else {
                missing.push((offset, *c));
            }
            offset += u64::from(c.len);
        }
        for run in runs(&missing) {
            fetch_run(&mut remote, &file, run, name, section.offset)?;
            a.fetched_chunks += run.len() as u64;
            progress(&format!(
                "section {name}: fetched {} of {} bytes so far",
                remote.bytes,
                missing.iter().map(|(_, c)| u64::from(c.len)).sum::<u64>()
            ));
        }
        written = section.offset + section.size;
    }
    ensure!(written == total, "the sections end at {written}, the bundle at {total}");
    file.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
    a.fetched_bytes = remote.bytes;
    a.requests = remote.requests;
    // The whole file as any downloaded bundle: the signature over everything, every section.
    (&file).seek(SeekFrom::Start(0))?;
    let (prelude, header) = crate::verify_reader_ring(&mut std::io::BufReader::new(&file), total, ring)
        .with_context(|| format!("verifying the assembled {}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, dest).with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    Ok((prelude, header, a))
}

/// Opens the partial file: kept when it starts with this bundle's prelude and has its size
/// (an earlier attempt at the same bundle), else made anew.
fn open_partial(path: &Path, prelude: &[u8], total: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut first = vec![0; prelude.len()];
    let same = file.metadata()?.len() == total && file.read_exact_at(&mut first, 0).is_ok() && first == prelude;
    if !same {
        file.set_len(0)?;
        file.set_len(total).with_context(|| format!("making room for {total} bytes in {}", path.display()))?;
    }
    Ok(file)
}

/// Adjacent missing chunks, grouped into requests of at most `MAX_REQUEST` bytes (one chunk
/// is never split).
fn runs(missing: &[(u64, chunks::Chunk)]) -> Vec<&[(u64, chunks::Chunk)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=missing.len() {
        let end_of_run = i == missing.len() || {
            let (prev_at, prev) = missing[i - 1];
            let adjacent = prev_at + u64::from(prev.len) == missing[i].0;
            let bytes = missing[i].0 + u64::from(missing[i].1.len) - missing[start].0;
            !adjacent || bytes > MAX_REQUEST
        };
        if end_of_run {
            out.push(&missing[start..i]);
            start = i;
        }
    }
    out
}

/// Fetches a run of adjacent chunks, checks each against the index and writes it.
fn fetch_run(
    remote: &mut Counted<'_>,
    file: &File,
    run: &[(u64, chunks::Chunk)],
    section: &str,
    section_offset: u64,
) -> Result<()> {
    let (start, _) = run[0];
    remote.fetch(start, run.iter().map(|(_, c)| c.len as usize), |i, bytes| {
        let (offset, c) = &run[i];
        if Sha256::digest(bytes).as_slice() != c.sha256 {
            bail!(
                "section {section}: the chunk at bytes {}..{} of the section does not match the signed index: \
                 the server's copy is damaged or was altered; refused",
                offset - section_offset,
                offset - section_offset + u64::from(c.len)
            );
        }
        file.write_all_at(bytes, *offset)?;
        Ok(())
    })
}

/// What a machine holding `old`'s sections would fetch to make `new` (both bundle files; `new`
/// must be chunked, `old` need not be): the start of the file (prelude, header, indexes) plus
/// the chunks it does not hold. Nothing is verified: these are the operator's own files.
pub fn estimate(new: &Path, old: &Path) -> Result<(Transfer, u64)> {
    let (new_prelude, new_header) = crate::read_unverified(new)?;
    ensure!(new_prelude.head.is_some(), "{} is not a chunked bundle: a machine downloads all of it", new.display());
    let mut f = File::open(new).with_context(|| format!("opening {}", new.display()))?;
    let mut indexes = Vec::new();
    let mut start = new_prelude.total_bytes;
    for s in new_header.sections.iter().filter(|s| !s.name.starts_with(chunks::INDEX_PREFIX)) {
        let ix = new_header.section(&chunks::index_section(&s.name))?;
        let mut bytes = vec![0; ix.size as usize];
        f.seek(SeekFrom::Start(ix.offset))?;
        f.read_exact(&mut bytes).with_context(|| format!("reading {}", new.display()))?;
        indexes.push(chunks::read_index(&new_header, &s.name, &bytes)?);
        start = start.min(s.offset);
    }
    let params = indexes.first().map(|l| l.params).context("the bundle has no data sections")?;
    let (_, old_header) = crate::read_unverified(old)?;
    let mut g = File::open(old).with_context(|| format!("opening {}", old.display()))?;
    let mut store = ChunkStore::default();
    for s in old_header.sections.iter().filter(|s| !s.name.starts_with(chunks::INDEX_PREFIX)) {
        g.seek(SeekFrom::Start(s.offset))?;
        let list = ChunkList::of_reader(&mut (&mut g).take(s.size), params)
            .with_context(|| format!("reading {}", old.display()))?;
        store.add(&list);
    }
    let mut t = Transfer::default();
    for list in &indexes {
        t.add(store.plan(list));
    }
    Ok((t, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::tests::noise;
    use crate::{write_bundle_opts, SecretKey, WriteOptions};

    const PARAMS: ChunkParams = ChunkParams { min: 1024, avg: 4096, max: 16384 };

    struct Bundles {
        dir: tempfile::TempDir,
        key: SecretKey,
    }

    impl Bundles {
        fn new() -> Bundles {
            Bundles { dir: tempfile::tempdir().unwrap(), key: SecretKey::from_seed([7; 32], [1, 2, 3, 4, 5, 6, 7, 8]) }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A chunked bundle of `release` with these section contents.
        fn make(&self, release: &str, rootfs: &[u8], kernel: &[u8], initramfs: &[u8], chunked: bool) -> PathBuf {
            let mut sections = Vec::new();
            for (name, data) in [("rootfs", rootfs), ("vmlinuz", kernel), ("initramfs", initramfs)] {
                let p = self.path(&format!("{release}.{name}"));
                std::fs::write(&p, data).unwrap();
                sections.push((name, p));
            }
            let refs: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
            let out = self.path(&format!("{release}.planet"));
            let options = WriteOptions { chunks: chunked.then_some(PARAMS), ..WriteOptions::default() };
            write_bundle_opts(&out, release, 1, "6.1", &refs, &self.key, &options).unwrap();
            out
        }

        fn ring(&self) -> KeyRing {
            KeyRing::from(self.key.public())
        }
    }

    /// A bundle served from memory, counting bytes; it can break after a budget or serve
    /// altered bytes.
    struct Server {
        data: Vec<u8>,
        served: u64,
        budget: Option<u64>,
    }

    impl RangeSource for Server {
        fn open_range(&mut self, offset: u64, len: u64) -> Result<Box<dyn Read + '_>> {
            let end = offset + len;
            ensure!(end <= self.data.len() as u64, "416 range not satisfiable");
            Ok(Box::new(Body { server: self, at: offset as usize, end: end as usize }))
        }
    }

    /// A response body that breaks once the server's budget is spent.
    struct Body<'a> {
        server: &'a mut Server,
        at: usize,
        end: usize,
    }

    impl Read for Body<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.server.budget.map_or(u64::MAX, |b| b - self.server.served);
            if left == 0 && self.at < self.end {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"));
            }
            let n = buf.len().min(self.end - self.at).min(left.min(1 << 20) as usize);
            buf[..n].copy_from_slice(&self.server.data[self.at..self.at + n]);
            self.at += n;
            self.server.served += n as u64;
            Ok(n)
        }
    }

    fn release_pair(b: &Bundles) -> (Vec<u8>, Vec<u8>, PathBuf, PathBuf) {
        let old_rootfs = noise(600_000, 1);
        let mut new_rootfs = old_rootfs.clone();
        new_rootfs.splice(300_000..300_000, noise(20_000, 2));
        let kernel = noise(50_000, 3);
        let old = b.make("1", &old_rootfs, &kernel, &noise(30_000, 4), true);
        let new = b.make("2", &new_rootfs, &kernel, &noise(30_000, 6), true);
        (old_rootfs, kernel, old, new)
    }

    fn locals(b: &Bundles, rootfs: &[u8], kernel: &[u8]) -> Vec<LocalData> {
        let slot = b.path("slot-a");
        let mut dev = rootfs.to_vec();
        dev.extend_from_slice(&noise(10_000, 77)); // what the partition held after the squashfs
        std::fs::write(&slot, &dev).unwrap();
        std::fs::write(b.path("vmlinuz-running"), kernel).unwrap();
        vec![
            LocalData::file(slot, Some(rootfs.len() as u64)),
            LocalData::file(b.path("vmlinuz-running"), None),
            LocalData::file(b.path("no-such-initramfs"), None),
        ]
    }

    #[test]
    fn a_bundle_is_made_from_local_chunks_and_fetches_what_the_estimate_says() {
        let b = Bundles::new();
        let (old_rootfs, kernel, old, new) = release_pair(&b);
        let new_bytes = std::fs::read(&new).unwrap();
        let mut server = Server { data: new_bytes.clone(), served: 0, budget: None };
        let dest = b.path("downloaded.planet");
        let (prelude, header, a) =
            assemble(&mut server, &b.ring(), &locals(&b, &old_rootfs, &kernel), &dest, &mut |_| {}).unwrap();
        assert_eq!(prelude.release, "2");
        assert!(header.section("chunks-rootfs").is_ok());
        assert_eq!(std::fs::read(&dest).unwrap(), new_bytes, "the assembled bundle is the signed one");
        assert!(!partial_path(&dest).exists());
        assert_eq!(a.fetched_bytes, server.served);
        // The inserted 20 kB, the chunks around it and the new initramfs; the kernel is reused.
        let (t, start) = estimate(&new, &old).unwrap();
        assert_eq!(a.fetched_bytes, start + t.fetch_bytes, "{a:?} {t:?} start {start}");
        assert!(a.fetched_bytes < new_bytes.len() as u64 / 4, "{a:?}");
        assert!(a.reused_chunks > 0 && a.resumed_chunks == 0, "{a:?}");
    }

    #[test]
    fn a_broken_connection_resumes_without_fetching_verified_chunks_again() {
        let b = Bundles::new();
        let (old_rootfs, kernel, old, new) = release_pair(&b);
        let new_bytes = std::fs::read(&new).unwrap();
        let dest = b.path("downloaded.planet");
        let local = locals(&b, &old_rootfs, &kernel);
        let (_, start) = estimate(&new, &old).unwrap();
        let (_, header) = crate::read_unverified(&new).unwrap();
        let data_bytes: u64 = header.sections.iter().filter(|s| !s.name.starts_with("chunks-")).map(|s| s.size).sum();
        // Nothing local: everything comes from the server, which breaks part-way.
        let mut server = Server { data: new_bytes.clone(), served: 0, budget: Some(new_bytes.len() as u64 / 2) };
        let e = assemble(&mut server, &b.ring(), &[], &dest, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("connection reset"), "{e:#}");
        assert!(!dest.exists() && partial_path(&dest).exists());
        let first = server.served;
        let mut server = Server { data: new_bytes.clone(), served: 0, budget: None };
        let (_, _, a) = assemble(&mut server, &b.ring(), &local, &dest, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), new_bytes);
        // Every chunk the first attempt fetched was kept; the second fetched only the others.
        assert!(a.resumed_chunks > 0, "{a:?}");
        // (less the chunk the connection broke in)
        assert!(a.resumed_bytes <= first - start && a.resumed_bytes + 16384 > first - start, "{a:?} {first}");
        assert_eq!(server.served, start + data_bytes - a.resumed_bytes - a.reused_bytes, "{a:?}");
    }

    #[test]
    fn an_altered_chunk_is_refused_and_nothing_is_made() {
        let b = Bundles::new();
        let (old_rootfs, kernel, _, new) = release_pair(&b);
        let mut bytes = std::fs::read(&new).unwrap();
        let (_, header) = crate::read_unverified(&new).unwrap();
        let rootfs = header.section("rootfs").unwrap();
        bytes[(rootfs.offset + 310_000) as usize] ^= 1;
        let dest = b.path("downloaded.planet");
        let mut server = Server { data: bytes, served: 0, budget: None };
        let e = assemble(&mut server, &b.ring(), &locals(&b, &old_rootfs, &kernel), &dest, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("does not match the signed index"), "{e:#}");
        assert!(!dest.exists());
    }

    #[test]
    fn an_altered_header_or_index_or_a_foreign_key_is_refused_before_any_chunk() {
        let b = Bundles::new();
        let (_, _, _, new) = release_pair(&b);
        let good = std::fs::read(&new).unwrap();
        let (_, header) = crate::read_unverified(&new).unwrap();
        let ix = header.section("chunks-rootfs").unwrap();
        let mut altered_index = good.clone();
        altered_index[(ix.offset + 40) as usize] ^= 1;
        let mut altered_header = good.clone();
        let at = good[PRELUDE_LEN as usize..].windows(7).position(|w| w == b"\"kernel").unwrap();
        altered_header[PRELUDE_LEN as usize + at + 1] = b'K';
        for (data, want) in [(altered_index, "section chunks-rootfs"), (altered_header, "the header was altered")] {
            let mut server = Server { data, served: 0, budget: None };
            let e = assemble(&mut server, &b.ring(), &[], &b.path("x.planet"), &mut |_| {}).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{e:#}");
            let data_start = header.section("rootfs").unwrap().offset;
            assert!(server.served <= data_start, "fetched {} before refusing", server.served);
        }
        let other = KeyRing::from(SecretKey::from_seed([9; 32], [9; 8]).public());
        let mut server = Server { data: good, served: 0, budget: None };
        let e = assemble(&mut server, &other, &[], &b.path("x.planet"), &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("signed by another key"), "{e:#}");
        assert!(!b.path("x.planet").exists());
    }

    #[test]
    fn a_bundle_that_is_not_chunked_says_so() {
        let b = Bundles::new();
        let plain = b.make("1", &noise(40_000, 1), &noise(5000, 2), &noise(5000, 3), false);
        let mut server = Server { data: std::fs::read(&plain).unwrap(), served: 0, budget: None };
        let e = assemble(&mut server, &b.ring(), &[], &b.path("x.planet"), &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains("is not chunked"), "{e:#}");
        // And a chunked bundle verifies whole like any other.
        let (_, _, _, new) = release_pair(&b);
        crate::verify_file_ring(&new, &b.ring()).unwrap();
        crate::verify_file_ring(&plain, &b.ring()).unwrap();
    }

    #[test]
    fn adjacent_missing_chunks_share_a_request() {
        let c = |len| chunks::Chunk { len, sha256: [0; 32] };
        let missing = vec![(0, c(100)), (100, c(50)), (400, c(10)), (410, c(MAX_REQUEST as u32))];
        let r = runs(&missing);
        assert_eq!(r.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![2, 1, 1]);
        assert!(runs(&[]).is_empty());
    }
}
