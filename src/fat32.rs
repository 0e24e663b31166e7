//! A FAT32 writer for the ESP and seed images: a whole filesystem built in one pass from an in-memory tree.
//!
//! Written here because `fatfs` 0.3 puts long-name entries in front of `.` and `..`, which
//! `fsck.vfat` rejects, and leaves the FSInfo free count unset. Building the volume at once
//! also makes it deterministic (fixed timestamps, contiguous files, sorted entries) and lets
//! it follow any logical sector size.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

const RESERVED_SECTORS: u32 = 32;
const FAT_COUNT: u32 = 2;
const DIR_ENTRY: usize = 32;
const EOC: u32 = 0x0FFF_FFFF;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;

/// A directory tree to write; names are kept as given (long names where needed).
#[derive(Default)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

enum Node {
    File(Vec<u8>),
    Dir(Tree),
}

impl Tree {
    /// Adds a file at a `/`-separated path, creating directories on the way.
    pub fn add_file(&mut self, path: &str, data: Vec<u8>) -> Result<()> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (last, dirs) = parts.split_last().ok_or_else(|| anyhow::anyhow!("empty ESP path"))?;
        let mut t = self;
        for d in dirs {
            let node = t.entries.entry(d.to_string()).or_insert_with(|| Node::Dir(Tree::default()));
            t = match node {
                Node::Dir(sub) => sub,
                Node::File(_) => bail!("ESP path {path}: {d} is a file"),
            };
        }
        if t.entries.insert(last.to_string(), Node::File(data)).is_some() {
            bail!("ESP path {path} added twice");
        }
        Ok(())
    }
}

/// Volume parameters.
pub struct Params {
    pub size: u64,
    pub sector_size: u32,
    pub volume_id: u32,
    pub label: [u8; 11],
    /// Partition start, recorded as "hidden sectors" in the boot sector.
    pub hidden_sectors: u32,
    /// FAT date and time (DOS format) for every entry.
    pub date: u16,
    pub time: u16,
}

struct Geometry {
    sector: u32,
    sectors_per_cluster: u32,
    fat_sectors: u32,
    clusters: u32,
}

impl Geometry {
    fn cluster_bytes(&self) -> usize {
        (self.sector * self.sectors_per_cluster) as usize
    }
    fn data_start(&self) -> u64 {
        u64::from(RESERVED_SECTORS + FAT_COUNT * self.fat_sectors) * u64::from(self.sector)
    }
    fn cluster_offset(&self, cluster: u32) -> usize {
        (self.data_start() + u64::from(cluster - 2) * self.cluster_bytes() as u64) as usize
    }
}

fn geometry(size: u64, sector: u32) -> Result<Geometry> {
    let total = (size / u64::from(sector)) as u32;
    // Largest cluster up to 4 KiB that keeps at least 65525 clusters (FAT32's minimum).
    let mut spc = (4096 / sector).max(1);
    loop {
        let mut fat_sectors = 1u32;
        let clusters = loop {
            let data = total.saturating_sub(RESERVED_SECTORS + FAT_COUNT * fat_sectors);
            let clusters = data / spc;
            let need = ((clusters + 2) * 4).div_ceil(sector);
            if need <= fat_sectors {
                break clusters;
            }
            fat_sectors = need;
        };
        if clusters >= 65_525 {
            return Ok(Geometry { sector, sectors_per_cluster: spc, fat_sectors, clusters });
        }
        if spc == 1 {
            bail!("an ESP of {size} bytes is too small for FAT32 with {sector}-byte sectors");
        }
        spc /= 2;
    }
}

/// Builds the volume image.
pub fn build(p: &Params, tree: &Tree) -> Result<Vec<u8>> {
    let g = geometry(p.size, p.sector_size)?;
    let mut img = vec![0u8; p.size as usize];
    let mut fat: Vec<u32> = vec![0; g.clusters as usize + 2];
    fat[0] = 0x0FFF_FF00 | 0xF8;
    fat[1] = EOC;
    let mut next_free = 2u32;

    // Allocates a contiguous chain of `bytes` (at least one cluster) and returns its start.
    let mut alloc = |bytes: usize, fat: &mut Vec<u32>| -> Result<u32> {
        let n = bytes.div_ceil(g.cluster_bytes()).max(1) as u32;
        if next_free + n > g.clusters + 2 {
            bail!("the ESP is full: raise esp.size_mib in the layout");
        }
        let start = next_free;
        for c in start..start + n {
            fat[c as usize] = if c + 1 == start + n { EOC } else { c + 1 };
        }
        next_free += n;
        Ok(start)
    };

    // Root directory first, at cluster 2 as every tool expects.
    write_dir(&mut img, &g, p, tree, None, &mut fat, &mut alloc)?;

    // Boot sector, FSInfo and their backups.
    let free = (g.clusters + 2).saturating_sub(next_free);
    let boot = boot_sector(p, &g);
    let info = fsinfo(p.sector_size, free, next_free);
    let s = p.sector_size as usize;
    for base in [0usize, 6] {
        img[base * s..base * s + boot.len()].copy_from_slice(&boot);
        img[(base + 1) * s..(base + 1) * s + info.len()].copy_from_slice(&info);
        // Sector 2 of each copy carries only the trailing signature.
        img[(base + 2) * s + 510] = 0x55;
        img[(base + 2) * s + 511] = 0xAA;
    }
    for copy in 0..FAT_COUNT {
        let off = (RESERVED_SECTORS + copy * g.fat_sectors) as usize * s;
        for (i, v) in fat.iter().enumerate() {
            img[off + 4 * i..off + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(img)
}

/// Writes a directory (and, depth first, its children); returns its first cluster.
#[allow(clippy::too_many_arguments)]
fn write_dir(
    img: &mut [u8],
    g: &Geometry,
    p: &Params,
    tree: &Tree,
    // `None` for the root directory, else the parent's first cluster (0 for the root's children).
    parent_cluster: Option<u32>,
    fat: &mut Vec<u32>,
    alloc: &mut dyn FnMut(usize, &mut Vec<u32>) -> Result<u32>,
) -> Result<u32> {
    let is_root = parent_cluster.is_none();
    // Short names first, so the entry count (and so the directory size) is known.
    let mut used = std::collections::BTreeSet::new();
    let named: Vec<(&String, &Node, [u8; 11], bool)> = tree
        .entries
        .iter()
        .map(|(name, node)| {
            let (sfn, needs_lfn) = short_name(name, &mut used);
            (name, node, sfn, needs_lfn)
        })
        .collect();
    let mut count = if is_root { 1 } else { 2 };
    for (name, _, _, lfn) in &named {
        count += 1 + if *lfn { name.encode_utf16().count().div_ceil(13) } else { 0 };
    }
    let own = alloc(count * DIR_ENTRY, fat)?;
    let mut entries: Vec<[u8; 32]> = Vec::new();
    if is_root {
        entries.push(sfn_entry(&p.label, ATTR_VOLUME_ID, 0, 0, p));
    } else {
        entries.push(sfn_entry(b".          ", ATTR_DIRECTORY, own, 0, p));
        entries.push(sfn_entry(b"..         ", ATTR_DIRECTORY, parent_cluster.unwrap_or(0), 0, p));
    }
    for (name, node, sfn, lfn) in named {
        let (cluster, size, attr) = match node {
            Node::File(data) => {
                let c = if data.is_empty() { 0 } else { alloc(data.len(), fat)? };
                if c != 0 {
                    let off = g.cluster_offset(c);
                    img[off..off + data.len()].copy_from_slice(data);
                }
                (c, data.len() as u32, ATTR_ARCHIVE)
            }
            Node::Dir(sub) => {
                // The parent of a root child is recorded as cluster 0, per the FAT spec.
                let parent = if is_root { 0 } else { own };
                (write_dir(img, g, p, sub, Some(parent), fat, alloc)?, 0, ATTR_DIRECTORY)
            }
        };
        if lfn {
            entries.extend(lfn_entries(name, &sfn));
        }
        entries.push(sfn_entry(&sfn, attr, cluster, size, p));
    }
    let off = g.cluster_offset(own);
    for (i, e) in entries.iter().enumerate() {
        img[off + i * DIR_ENTRY..off + (i + 1) * DIR_ENTRY].copy_from_slice(e);
    }
    Ok(own)
}

/// An 8.3 name for `name`, and whether a long name entry must carry the real one.
fn short_name(name: &str, used: &mut std::collections::BTreeSet<[u8; 11]>) -> ([u8; 11], bool) {
    let valid = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c);
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let exact =
        !base.is_empty() && base.len() <= 8 && ext.len() <= 3 && base.chars().all(valid) && ext.chars().all(valid);
    let clean = |s: &str, n: usize| -> Vec<u8> {
        s.chars()
            .filter(|c| *c != '.' && *c != ' ')
            .map(|c| c.to_ascii_uppercase())
            .map(|c| if valid(c) { c as u8 } else { b'_' })
            .take(n)
            .collect()
    };
    let mut sfn = [b' '; 11];
    let e = clean(ext, 3);
    sfn[8..8 + e.len()].copy_from_slice(&e);
    if exact {
        let b = clean(base, 8);
        sfn[..b.len()].copy_from_slice(&b);
        used.insert(sfn);
        return (sfn, false);
    }
    let b = clean(base, 8);
    for n in 1..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = (8 - tail.len()).min(b.len());
        let mut cand = sfn;
        cand[..8].fill(b' ');
        cand[..keep].copy_from_slice(&b[..keep]);
        cand[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        if used.insert(cand) {
            return (cand, true);
        }
    }
    unreachable!("a directory with a million colliding names")
}

fn sfn_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, p: &Params) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&p.time.to_le_bytes());
    e[16..18].copy_from_slice(&p.date.to_le_bytes());
    e[18..20].copy_from_slice(&p.date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&p.time.to_le_bytes());
    e[24..26].copy_from_slice(&p.date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Long name entries, in on-disk order (last piece first).
fn lfn_entries(name: &str, sfn: &[u8; 11]) -> Vec<[u8; 32]> {
    let sum = sfn.iter().fold(0u8, |s, b| s.rotate_right(1).wrapping_add(*b));
    let units: Vec<u16> = name.encode_utf16().collect();
    let pieces = units.len().div_ceil(13);
    let mut out = Vec::new();
    for i in (0..pieces).rev() {
        let mut e = [0u8; 32];
        e[0] = (i as u8 + 1) | if i + 1 == pieces { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let mut chunk = [0xFFFFu16; 13];
        for (j, slot) in chunk.iter_mut().enumerate() {
            let k = i * 13 + j;
            if k < units.len() {
                *slot = units[k];
            } else if k == units.len() {
                *slot = 0;
            }
        }
        let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, o) in chunk.iter().zip(offsets) {
            e[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

fn boot_sector(p: &Params, g: &Geometry) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"PLANETIM");
    b[11..13].copy_from_slice(&(p.sector_size as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = FAT_COUNT as u8;
    b[21] = 0xF8;
    b[24..26].copy_from_slice(&63u16.to_le_bytes());
    b[26..28].copy_from_slice(&255u16.to_le_bytes());
    b[28..32].copy_from_slice(&p.hidden_sectors.to_le_bytes());
    b[32..36].copy_from_slice(&((p.size / u64::from(p.sector_size)) as u32).to_le_bytes());
    b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&p.volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&p.label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo(_sector: u32, free: u32, next_free: u32) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&free.to_le_bytes());
    b[492..496].copy_from_slice(&next_free.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    b
}

/// FAT's (date, time) words for a Unix time, UTC; FAT cannot store dates before 1980.
pub fn dos_date_time(epoch: u64) -> (u16, u16) {
    let t = civil_from_epoch(epoch);
    (((t.year - 1980) << 9) | (t.month << 5) | t.day, (t.hour << 11) | (t.min << 5) | (t.sec / 2))
}

/// A calendar date and time, UTC.
#[derive(Debug, Clone, Copy)]
struct Civil {
    year: u16,
    month: u16,
    day: u16,
    hour: u16,
    min: u16,
    sec: u16,
}

/// UTC calendar date and time for a Unix time (FAT cannot store dates before 1980).
fn civil_from_epoch(epoch: u64) -> Civil {
    let epoch = epoch.max(315_532_800); // 1980-01-01
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let (year, month, day) = planet_bundle::date_from_days(days);
    Civil {
        year: year.min(2107) as u16,
        month: month as u16,
        day: day as u16,
        hour: (secs / 3600) as u16,
        min: (secs / 60 % 60) as u16,
        sec: (secs % 60) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let d = civil_from_epoch(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.year, d.month, d.day), (2023, 11, 14));
        assert_eq!((d.hour, d.min, d.sec), (22, 13, 20));
        let leap = civil_from_epoch(951_782_400); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    fn params(size: u64) -> Params {
        Params {
            size,
            sector_size: 512,
            volume_id: 0x1234_5678,
            label: *b"PLANET-ESP ",
            hidden_sectors: 2048,
            date: 0x5771,
            time: 0,
        }
    }

    #[test]
    fn files_read_back_through_fatfs() {
        let mut t = Tree::default();
        t.add_file("EFI/BOOT/BOOTX64.EFI", vec![7u8; 10_000]).unwrap();
        t.add_file("loader/entries/planet-a.conf", b"title x\n".to_vec()).unwrap();
        t.add_file("planet-a/initramfs.img", vec![1u8; 5000]).unwrap();
        let img = build(&params(64 << 20), &t).unwrap();
        let fs = fatfs::FileSystem::new(std::io::Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 10_000]);
        let names: Vec<String> =
            fs.root_dir().open_dir("loader/entries").unwrap().iter().map(|e| e.unwrap().file_name()).collect();
        assert!(names.contains(&"planet-a.conf".to_string()), "{names:?}");
    }

    #[test]
    fn short_names_are_unique_and_flag_long_names() {
        let mut used = Default::default();
        assert_eq!(short_name("BOOTX64.EFI", &mut used), (*b"BOOTX64 EFI", false));
        let (a, la) = short_name("planet-a.conf", &mut used);
        let (b, lb) = short_name("planet-b.conf", &mut used);
        assert!(la && lb && a != b);
    }

    #[test]
    fn too_small_is_an_error() {
        assert!(build(&params(8 << 20), &Tree::default()).is_err());
    }
}
