//! Content-defined chunks of a bundle's sections, for delta updates.
//!
//! A machine moving from release N to N+1 already holds most of N+1's bytes: the running slot
//! is N's squashfs, and a release changes a few packages, Kubernetes or an app image. Cutting
//! the data where its *content* says so (a rolling hash over the last 64 bytes hits a pattern),
//! not at fixed offsets, keeps every boundary after an insertion where it was, so the chunks
//! after it are found again by digest. This is the idea of casync and FastCDC ("normalized
//! chunking": a stricter pattern before the average size, a looser one after it, so chunk sizes
//! cluster around the average); the code here is ours.
//!
//! The hash is a "gear" hash, `h = (h << 1) + GEAR[byte]`: bit k of `h` depends on the last
//! k + 1 bytes only, so the pattern is tested on the top bits, which see the last 64 bytes.
//! `GEAR` is fixed (a splitmix64 sequence from a fixed seed): a different table would cut
//! differently and nothing would be shared between a builder and a machine that disagree, so it
//! is part of the format ([`INDEX_MAGIC`] names its version).
//!
//! A chunk list's serialized form, the index (integers little-endian): magic `PLCHUNK1`, u32
//! minimum, average and maximum chunk size, u32 zero, u64 chunk count, then per chunk its u32
//! length and its 32-byte SHA-256. Offsets are the running sum of the lengths.

use std::collections::HashSet;
use std::io::Read;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::{hex, Header};

/// Index sections are named this followed by their data section's name.
pub const INDEX_PREFIX: &str = "chunks-";

/// The name of the section holding the chunk index of section `data`.
pub fn index_section(data: &str) -> String {
    format!("{INDEX_PREFIX}{data}")
}

/// The chunk index of section `data` from the bytes of its index section, checked against the
/// header's digest of them (authenticated when the header is: `Prelude::head`) and against the
/// data section's size.
pub fn read_index(header: &Header, data: &str, index: &[u8]) -> Result<ChunkList> {
    let name = index_section(data);
    let section = header.section(&name)?;
    let actual = hex(&Sha256::digest(index));
    ensure!(
        index.len() as u64 == section.size && actual == section.sha256,
        "section {name}: {} bytes with sha256 {actual}, the header says {} bytes with {}",
        index.len(),
        section.size,
        section.sha256
    );
    ChunkList::from_index(index, Some(header.section(data)?.size)).with_context(|| format!("section {name}"))
}

/// The index's first 8 bytes; the `1` is the chunking's version (the gear table and the rules).
pub const INDEX_MAGIC: &[u8; 8] = b"PLCHUNK1";
/// Bytes of the index before its entries.
pub const INDEX_HEADER_LEN: usize = 8 + 4 * 4 + 8;
/// Bytes of one index entry: length and SHA-256.
pub const INDEX_ENTRY_LEN: usize = 4 + 32;

/// Chunk sizes: no cut before `min` bytes, a cut at `max` whatever the content, and cuts
/// `avg` bytes apart on average in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkParams {
    /// What bundles use: 64 KiB on average. Smaller chunks find more of a changed squashfs
    /// again but make the index longer (36 bytes a chunk: 0.05 % of the data at 64 KiB) and
    /// cost a request each when missing.
    pub const DEFAULT: ChunkParams = ChunkParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };

    /// Powers of two with `64 <= min < avg < max <= 16 MiB`: the masks are made of the average's
    /// bits, and a window under 64 bytes would not fill the hash.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.avg.is_power_of_two()
                && self.min >= 64
                && self.min < self.avg
                && self.avg < self.max
                && self.max <= 16 << 20,
            "bad chunk sizes min={} avg={} max={}: need 64 <= min < avg < max <= 16 MiB, avg a power of two",
            self.min,
            self.avg,
            self.max
        );
        Ok(())
    }

    /// The masks tested before and after the average: one bit more and one bit fewer than the
    /// average's, taken from the top of the hash.
    fn masks(&self) -> (u64, u64) {
        let bits = self.avg.trailing_zeros();
        let top = |n: u32| !(u64::MAX >> n);
        (top(bits + 1), top(bits - 1))
    }
}

/// splitmix64, to fill the gear table at compile time.
const fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (state, z ^ (z >> 31))
}

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    // The seed spells "planet" in ASCII; any fixed value would do, but it must never change.
    let mut state = 0x0000_706c_616e_6574_u64;
    let mut i = 0;
    while i < 256 {
        let (next, value) = splitmix64(state);
        state = next;
        table[i] = value;
        i += 1;
    }
    table
}

static GEAR: [u64; 256] = gear_table();

/// Finds the cut points of a stream fed in pieces of any size; the cuts depend only on the
/// bytes, never on how they were split into pieces.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkParams,
    masks: (u64, u64),
    hash: u64,
    /// Bytes of the current chunk seen so far.
    len: u32,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Result<Chunker> {
        params.check()?;
        Ok(Chunker { params, masks: params.masks(), hash: 0, len: 0 })
    }

    /// Scans `data`, the stream's next bytes, and returns the index just past the first cut in
    /// it (the current chunk ends there and the next starts), or `None` when the current chunk
    /// goes on past `data`.
    pub fn next_cut(&mut self, data: &[u8]) -> Option<usize> {
        let ChunkParams { min, avg, max } = self.params;
        for (i, &b) in data.iter().enumerate() {
            self.hash = (self.hash << 1).wrapping_add(GEAR[b as usize]);
            self.len += 1;
            let cut = if self.len >= max {
                true
            } else if self.len < min {
                false
            } else {
                let mask = if self.len < avg { self.masks.0 } else { self.masks.1 };
                self.hash & mask == 0
            };
            if cut {
                self.hash = 0;
                self.len = 0;
                return Some(i + 1);
            }
        }
        None
    }
}

/// One chunk: its length and digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub len: u32,
    pub sha256: [u8; 32],
}

/// The chunks of a stream, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    pub params: ChunkParams,
    pub chunks: Vec<Chunk>,
}

impl ChunkList {
    /// Cuts and hashes everything `r` yields (streams: memory is one read buffer).
    pub fn of_reader(r: &mut impl Read, params: ChunkParams) -> Result<ChunkList> {
        let mut chunker = Chunker::new(params)?;
        let mut chunks = Vec::new();
        let mut digest = Sha256::new();
        let mut len = 0u32;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the data to chunk"),
            };
            let mut rest = &buf[..n];
            while let Some(at) = chunker.next_cut(rest) {
                digest.update(&rest[..at]);
                len += at as u32;
                chunks.push(Chunk { len, sha256: std::mem::take(&mut digest).finalize().into() });
                len = 0;
                rest = &rest[at..];
            }
            digest.update(rest);
            len += rest.len() as u32;
        }
        if len > 0 {
            chunks.push(Chunk { len, sha256: digest.finalize().into() });
        }
        Ok(ChunkList { params, chunks })
    }

    /// The chunks of `bytes`.
    pub fn of_bytes(bytes: &[u8], params: ChunkParams) -> Result<ChunkList> {
        ChunkList::of_reader(&mut &bytes[..], params)
    }

    /// The bytes the chunks cover.
    pub fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// The serialized index.
    pub fn to_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + INDEX_ENTRY_LEN * self.chunks.len());
        out.extend_from_slice(INDEX_MAGIC);
        for v in [self.params.min, self.params.avg, self.params.max, 0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.sha256);
        }
        out
    }

    /// Parses an index, checking that it is well formed: known magic, sane sizes, exactly the
    /// entries its count says, every chunk within the sizes (only the last may be shorter than
    /// the minimum) and, when given, the total it must cover.
    pub fn from_index(bytes: &[u8], expected_total: Option<u64>) -> Result<ChunkList> {
        ensure!(bytes.len() >= INDEX_HEADER_LEN, "bad chunk index: {} bytes, shorter than its header", bytes.len());
        if &bytes[..8] != INDEX_MAGIC {
            bail!("bad chunk index: it does not start with {:?}", String::from_utf8_lossy(INDEX_MAGIC));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let params = ChunkParams { min: u32_at(8), avg: u32_at(12), max: u32_at(16) };
        params.check().context("bad chunk index")?;
        ensure!(u32_at(20) == 0, "bad chunk index: reserved field is not zero");
        let count = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
        let entries = (bytes.len() - INDEX_HEADER_LEN) as u64;
        ensure!(
            entries % INDEX_ENTRY_LEN as u64 == 0 && entries / INDEX_ENTRY_LEN as u64 == count,
            "bad chunk index: it says {count} chunks and holds {} bytes of entries",
            entries
        );
        let mut chunks = Vec::with_capacity(count as usize);
        for (i, e) in bytes[INDEX_HEADER_LEN..].chunks_exact(INDEX_ENTRY_LEN).enumerate() {
            let len = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
            let last = i as u64 + 1 == count;
            ensure!(
                len <= params.max && len > 0 && (last || len >= params.min),
                "bad chunk index: chunk {i} is {len} bytes (sizes {}..={})",
                params.min,
                params.max
            );
            chunks.push(Chunk { len, sha256: e[4..].try_into().expect("32 bytes") });
        }
        let list = ChunkList { params, chunks };
        if let Some(total) = expected_total {
            ensure!(
                list.total_bytes() == total,
                "bad chunk index: its chunks cover {} bytes where the section has {total}",
                list.total_bytes()
            );
        }
        Ok(list)
    }
}

/// What a machine holding some chunks must fetch to make a chunk list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Chunks and bytes of the wanted data.
    pub chunks: u64,
    pub bytes: u64,
    /// Distinct chunks and bytes to fetch (a chunk repeated in the wanted data is fetched once).
    pub fetch_chunks: u64,
    pub fetch_bytes: u64,
}

impl Transfer {
    pub fn add(&mut self, other: Transfer) {
        self.chunks += other.chunks;
        self.bytes += other.bytes;
        self.fetch_chunks += other.fetch_chunks;
        self.fetch_bytes += other.fetch_bytes;
    }
}

/// The set of chunk digests a machine already holds.
#[derive(Clone, Debug, Default)]
pub struct ChunkStore {
    have: HashSet<[u8; 32]>,
}

impl ChunkStore {
    pub fn add(&mut self, list: &ChunkList) {
        self.have.extend(list.chunks.iter().map(|c| c.sha256));
    }

    pub fn has(&self, digest: &[u8; 32]) -> bool {
        self.have.contains(digest)
    }

    /// What making `want` costs: the chunks not held are fetched, each once. Fetched chunks
    /// count as held from then on (a later list reuses them).
    pub fn plan(&mut self, want: &ChunkList) -> Transfer {
        let mut t = Transfer::default();
        for c in &want.chunks {
            t.chunks += 1;
            t.bytes += u64::from(c.len);
            if self.have.insert(c.sha256) {
                t.fetch_chunks += 1;
                t.fetch_bytes += u64::from(c.len);
            }
        }
        t
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no fixtures.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    const SMALL: ChunkParams = ChunkParams { min: 256, avg: 1024, max: 4096 };

    #[test]
    fn cuts_do_not_depend_on_how_the_stream_is_split() {
        let data = noise(300_000, 7);
        let whole = ChunkList::of_bytes(&data, SMALL).unwrap();
        for piece in [1usize, 7, 4096, 65_537] {
            let mut r = PieceReader { data: &data, piece };
            assert_eq!(ChunkList::of_reader(&mut r, SMALL).unwrap(), whole, "pieces of {piece}");
        }
        assert_eq!(whole.total_bytes(), data.len() as u64);
    }

    struct PieceReader<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl Read for PieceReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn sizes_stay_within_bounds_and_cluster_near_the_average() {
        let data = noise(4 << 20, 11);
        let list = ChunkList::of_bytes(&data, SMALL).unwrap();
        let (last, rest) = list.chunks.split_last().unwrap();
        assert!(last.len <= SMALL.max);
        assert!(rest.iter().all(|c| (SMALL.min..=SMALL.max).contains(&c.len)));
        let mean = data.len() as f64 / list.chunks.len() as f64;
        // Normalized chunking with min 256 puts the mean a little above the average.
        assert!((800.0..1600.0).contains(&mean), "mean chunk size {mean}");
        // Zeros never match the pattern (the hash of a zero run is constant but non-zero),
        // so they cut at the maximum.
        let zeros = ChunkList::of_bytes(&vec![0u8; 20_000], SMALL).unwrap();
        assert!(zeros.chunks[..4].iter().all(|c| c.len == SMALL.max), "{:?}", zeros.chunks);
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let old = noise(2 << 20, 3);
        let mut new = old.clone();
        let insert = noise(5000, 99);
        new.splice(1_000_000..1_000_000, insert.iter().copied());
        let old_list = ChunkList::of_bytes(&old, MEDIUM).unwrap();
        let new_list = ChunkList::of_bytes(&new, MEDIUM).unwrap();
        let mut store = ChunkStore::default();
        store.add(&old_list);
        let t = store.plan(&new_list);
        assert_eq!(t.bytes, new.len() as u64);
        // The insertion plus at most the chunk it landed in and the one after.
        assert!(t.fetch_bytes <= insert.len() as u64 + 2 * u64::from(MEDIUM.max), "{t:?}");
        assert!(t.fetch_bytes >= insert.len() as u64, "{t:?}");
        // Fixed-size blocks would have shifted everything after the insertion.
        assert!(t.fetch_bytes < new.len() as u64 / 20, "{t:?}");
    }

    const MEDIUM: ChunkParams = ChunkParams { min: 4096, avg: 16384, max: 65536 };

    #[test]
    fn repeated_chunks_are_fetched_once() {
        let block = noise(50_000, 5);
        let mut data = block.clone();
        data.extend_from_slice(&noise(10, 6));
        data.extend_from_slice(&block);
        let list = ChunkList::of_bytes(&data, SMALL).unwrap();
        let t = ChunkStore::default().plan(&list);
        assert_eq!(t.chunks, list.chunks.len() as u64);
        assert!(t.fetch_chunks < t.chunks, "{t:?}");
        assert!(t.fetch_bytes < t.bytes * 3 / 4, "{t:?}");
    }

    #[test]
    fn the_index_round_trips_and_refuses_what_is_malformed() {
        let data = noise(100_000, 9);
        let list = ChunkList::of_bytes(&data, SMALL).unwrap();
        let index = list.to_index();
        assert_eq!(index.len(), INDEX_HEADER_LEN + INDEX_ENTRY_LEN * list.chunks.len());
        assert_eq!(ChunkList::from_index(&index, Some(data.len() as u64)).unwrap(), list);
        let err = |b: &[u8], total: Option<u64>| format!("{:#}", ChunkList::from_index(b, total).unwrap_err());
        assert!(err(&index, Some(5)).contains("cover 100000 bytes where the section has 5"));
        assert!(err(&index[..index.len() - 1], None).contains("holds"));
        assert!(err(&index[..10], None).contains("shorter than its header"));
        let mut bad = index.clone();
        bad[0] = b'X';
        assert!(err(&bad, None).contains("does not start with"));
        let mut bad = index.clone();
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(err(&bad, None).contains("bad chunk sizes"));
        let mut bad = index.clone();
        bad[INDEX_HEADER_LEN..INDEX_HEADER_LEN + 4].copy_from_slice(&(SMALL.max + 1).to_le_bytes());
        assert!(err(&bad, None).contains("chunk 0 is"));
        let mut bad = index.clone();
        bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(&bad, None).contains("says 18446744073709551615 chunks"));
    }

    #[test]
    fn the_gear_table_is_fixed() {
        // A change of the table or the rules moves these cuts: it needs a new INDEX_MAGIC.
        let list = ChunkList::of_bytes(&noise(20_000, 1), SMALL).unwrap();
        let lens: Vec<u32> = list.chunks.iter().map(|c| c.len).collect();
        assert_eq!(lens.iter().sum::<u32>(), 20_000);
        assert_eq!(lens, EXPECTED_CUTS.to_vec(), "the cuts of a fixed input moved");
    }

    /// The cuts of `noise(20_000, 1)` with SMALL, recorded once.
    const EXPECTED_CUTS: &[u32] =
        &[2601, 593, 1081, 2009, 1785, 522, 1378, 1046, 993, 1367, 1126, 1082, 1287, 1275, 512, 1220, 123];
}
