//! GUID Partition Table (UEFI spec. ch. 5) encoding and decoding.
//!
//! Written by hand instead of through a general crate so that the builder controls every byte
//! (reproducible images, any logical sector size) and so that planet-init can rewrite the table
//! in a power-fail-safe order when it grows the state partition at first boot.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::str::FromStr;

/// Number of partition entries we write; 128 is what every tool expects.
pub const ENTRY_COUNT: u32 = 128;
/// Size of one partition entry.
pub const ENTRY_SIZE: u32 = 128;
const HEADER_SIZE: u32 = 92;
/// Largest partition entry array a reader accepts (32 times what [`ENTRY_COUNT`] entries take).
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 512 * 1024;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
/// Where LBA 0's MBR partition table starts; the protective entry is its first.
const MBR_TABLE: usize = 446;
/// The protective entry's partition type: "a GPT follows" (UEFI spec 5.2.3).
const PROTECTIVE_TYPE: u8 = 0xEE;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];

/// Whether `lba0` is a protective MBR: the boot signature and a first entry of type 0xEE. The
/// builder and planet-init change LBA 0 only then; a hybrid or missing MBR is someone else's.
pub fn is_protective_mbr(lba0: &[u8]) -> bool {
    lba0.len() >= 512 && lba0[510..512] == BOOT_SIGNATURE && lba0[MBR_TABLE + 4] == PROTECTIVE_TYPE
}

/// Sets the protective entry's size to cover a disk of `total_sectors` (all but LBA 0, capped at
/// what 32 bits hold), leaving the rest of LBA 0 (boot code, signatures) as it is: after growth
/// fdisk and some firmware complain when the size is the old one.
pub fn set_protective_mbr_size(lba0: &mut [u8], total_sectors: u64) {
    let size = (total_sectors - 1).min(u64::from(u32::MAX)) as u32;
    lba0[MBR_TABLE + 12..MBR_TABLE + 16].copy_from_slice(&size.to_le_bytes());
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT signature at LBA 1")]
    NoSignature,
    #[error("GPT header checksum mismatch")]
    HeaderCrc,
    #[error("GPT partition entry array checksum mismatch")]
    EntriesCrc,
    #[error("unsupported GPT layout: {0}")]
    Unsupported(String),
    #[error("partitions do not fit: {0}")]
    Layout(String),
}

/// A device that can make the writes issued so far durable before later ones (a barrier).
/// `write_grown` needs it: `Write::flush` is a no-op for a `File`, so it orders nothing.
pub trait SyncData: Write + Seek {
    /// Returns once every earlier write is on stable storage.
    fn sync_data(&mut self) -> io::Result<()>;
}

impl SyncData for std::fs::File {
    fn sync_data(&mut self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

/// In-memory images (tests, the builder) have nothing to make durable.
impl SyncData for io::Cursor<Vec<u8>> {
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SyncData for io::Cursor<&mut Vec<u8>> {
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A GUID as stored on disk (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Builds a version-4-shaped GUID from arbitrary bytes (used to derive GUIDs from digests,
    /// so images are reproducible).
    pub fn from_random_bytes(mut b: [u8; 16]) -> Guid {
        // Byte 7 holds the high byte of time_hi_and_version (little-endian field).
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = GptError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 {
            return Err(GptError::Unsupported(format!("malformed GUID {s:?}")));
        }
        let mut raw = [0u8; 16];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| GptError::Unsupported(format!("malformed GUID {s:?}")))?;
        }
        // Text order is big-endian; on disk the first three fields are little-endian.
        let mut b = raw;
        b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        b[4..6].copy_from_slice(&[raw[5], raw[4]]);
        b[6..8].copy_from_slice(&[raw[7], raw[6]]);
        Ok(Guid(b))
    }
}

/// Partition type GUIDs used by the images (UEFI spec and the Discoverable Partitions Spec).
/// The GPT name of a config drive partition (`planet-image seed --partition`); first-boot
/// growth stops in front of it.
pub const CONFIG_DRIVE_NAME: &str = "config-2";

pub mod types {
    use super::Guid;
    use std::str::FromStr;

    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    pub const LINUX_FILESYSTEM: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    /// DPS "root (x86-64)": the A/B slots hold the root of the Planet container.
    pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

    /// Resolves a short name (`esp`, `linux`, `root-x86-64`, `bios-boot`) or a literal GUID.
    pub fn parse(name: &str) -> Option<Guid> {
        let literal = match name {
            "esp" => ESP,
            "linux" | "linux-filesystem" => LINUX_FILESYSTEM,
            "root-x86-64" => ROOT_X86_64,
            "bios-boot" => BIOS_BOOT,
            other => other,
        };
        Guid::from_str(literal).ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as in the on-disk format.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn sectors(&self) -> u64 {
        // Saturating: entries come from disks that may be hostile.
        self.last_lba.checked_sub(self.first_lba).map_or(0, |d| d.saturating_add(1))
    }
}

/// An in-memory GPT for one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    pub sector_size: u64,
    pub disk_guid: Guid,
    /// Total size of the disk in logical sectors.
    pub total_sectors: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// The used entries, in table order (entry i is partition number i+1).
    pub partitions: Vec<Partition>,
}

/// Sectors taken by the entry array for a given sector size.
pub fn entry_array_sectors(sector_size: u64) -> u64 {
    (u64::from(ENTRY_COUNT) * u64::from(ENTRY_SIZE)).div_ceil(sector_size)
}

impl Gpt {
    /// An empty table covering a disk of `total_sectors` logical sectors.
    pub fn new(disk_guid: Guid, sector_size: u64, total_sectors: u64) -> Result<Gpt, GptError> {
        let array = entry_array_sectors(sector_size);
        let min = 2 * (2 + array) + 1;
        if total_sectors < min {
            return Err(GptError::Layout(format!("disk of {total_sectors} sectors is too small for a GPT")));
        }
        Ok(Gpt {
            sector_size,
            disk_guid,
            total_sectors,
            first_usable_lba: 2 + array,
            last_usable_lba: total_sectors - 2 - array,
            partitions: Vec::new(),
        })
    }

    /// LBA of the backup header (the disk's last sector).
    pub fn backup_header_lba(&self) -> u64 {
        self.total_sectors - 1
    }

    fn backup_entries_lba(&self) -> u64 {
        self.total_sectors - 1 - entry_array_sectors(self.sector_size)
    }

    /// Checks that partitions lie in the usable area and do not overlap.
    pub fn validate(&self) -> Result<(), GptError> {
        if self.partitions.len() > ENTRY_COUNT as usize {
            return Err(GptError::Layout(format!("{} partitions, at most {ENTRY_COUNT}", self.partitions.len())));
        }
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        for p in &self.partitions {
            if p.first_lba < self.first_usable_lba || p.last_lba > self.last_usable_lba || p.last_lba < p.first_lba {
                return Err(GptError::Layout(format!(
                    "partition {:?} (LBA {}..={}) is outside the usable area {}..={}",
                    p.name, p.first_lba, p.last_lba, self.first_usable_lba, self.last_usable_lba
                )));
            }
            if p.name.encode_utf16().count() > 36 {
                return Err(GptError::Layout(format!("partition name {:?} is longer than 36 UTF-16 units", p.name)));
            }
            spans.push((p.first_lba, p.last_lba, &p.name));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err(GptError::Layout(format!("partitions {:?} and {:?} overlap", w[0].2, w[1].2)));
            }
        }
        Ok(())
    }

    /// The partition entry array, `ENTRY_COUNT` entries.
    pub fn entry_array(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.unique_guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    /// One header sector; `primary` selects the primary (LBA 1) or backup copy.
    pub fn header(&self, primary: bool, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector_size as usize];
        let (my_lba, alt_lba, entries_lba) = if primary {
            (1, self.backup_header_lba(), 2)
        } else {
            (self.backup_header_lba(), 1, self.backup_entries_lba())
        };
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The protective MBR (LBA 0): one partition of type 0xEE over the whole disk.
    pub fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.sector_size as usize];
        let p = &mut m[MBR_TABLE..MBR_TABLE + 16];
        p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        p[4] = PROTECTIVE_TYPE;
        p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        p[8..12].copy_from_slice(&1u32.to_le_bytes());
        set_protective_mbr_size(&mut m, self.total_sectors);
        m[510..512].copy_from_slice(&BOOT_SIGNATURE);
        m
    }

    /// Writes MBR, primary header and entries at the start and the backup copy at the end.
    pub fn write_to<W: Write + Seek>(&self, w: &mut W) -> Result<(), GptError> {
        self.validate()?;
        let entries = self.entry_array();
        let crc = crc32fast::hash(&entries);
        let ss = self.sector_size;
        w.seek(SeekFrom::Start(0))?;
        w.write_all(&self.protective_mbr())?;
        w.write_all(&self.header(true, crc))?;
        w.write_all(&entries)?;
        self.write_backup(w, &entries, crc)?;
        let _ = ss;
        Ok(())
    }

    /// Writes only the backup entries and header at the end of the disk.
    pub fn write_backup<W: Write + Seek>(&self, w: &mut W, entries: &[u8], crc: u32) -> Result<(), GptError> {
        w.seek(SeekFrom::Start(self.backup_entries_lba() * self.sector_size))?;
        w.write_all(entries)?;
        w.seek(SeekFrom::Start(self.backup_header_lba() * self.sector_size))?;
        w.write_all(&self.header(false, crc))?;
        Ok(())
    }

    /// Rewrites a table for a disk that has grown, in an order that survives power loss at any
    /// point: the new backup copy (at the new end, unused space until now) goes first, then the
    /// primary entries, then the primary header. Until the primary header lands, firmware and
    /// readers still see the old, valid primary; after it, the new one. A barrier
    /// ([`SyncData::sync_data`]) separates the steps: without one, writeback reaches the disk
    /// roughly in offset order, i.e. the primary header first.
    pub fn write_grown<W: SyncData>(&self, w: &mut W) -> Result<(), GptError> {
        self.validate()?;
        let entries = self.entry_array();
        let crc = crc32fast::hash(&entries);
        self.write_backup(w, &entries, crc)?;
        w.sync_data()?;
        w.seek(SeekFrom::Start(2 * self.sector_size))?;
        w.write_all(&entries)?;
        w.sync_data()?;
        w.seek(SeekFrom::Start(self.sector_size))?;
        w.write_all(&self.header(true, crc))?;
        w.sync_data()?;
        Ok(())
    }

    /// Reads and verifies the primary table. `total_sectors` is the disk's current size, which
    /// may be larger than the one the table was written for (the backup then is not at the end).
    pub fn read_from<R: Read + Seek>(r: &mut R, sector_size: u64, total_sectors: u64) -> Result<Gpt, GptError> {
        let mut h = vec![0u8; sector_size as usize];
        r.seek(SeekFrom::Start(sector_size))?;
        r.read_exact(&mut h)?;
        if &h[0..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let header_size = u32::from_le_bytes(h[12..16].try_into().unwrap());
        if !(HEADER_SIZE..=sector_size as u32).contains(&header_size) {
            return Err(GptError::Unsupported(format!("header size {header_size}")));
        }
        let stored_crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        let mut check = h[0..header_size as usize].to_vec();
        check[16..20].fill(0);
        if crc32fast::hash(&check) != stored_crc {
            return Err(GptError::HeaderCrc);
        }
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let alt_lba = u64_at(32);
        let first_usable_lba = u64_at(40);
        let last_usable_lba = u64_at(48);
        let mut disk_guid = Guid::ZERO;
        disk_guid.0.copy_from_slice(&h[56..72]);
        let entries_lba = u64_at(72);
        let count = u32_at(80);
        let size = u32_at(84);
        let entries_crc = u32_at(88);
        // The spec allows entries of 128 * 2^n bytes; any table a real tool writes is 16 KiB.
        // The cap keeps a hostile header from making a reader allocate gigabytes.
        let array_bytes = u64::from(count) * u64::from(size);
        if size < ENTRY_SIZE || !size.is_power_of_two() || array_bytes > MAX_ENTRY_ARRAY_BYTES {
            return Err(GptError::Unsupported(format!("{count} entries of {size} bytes")));
        }
        let entries_at = entries_lba
            .checked_mul(sector_size)
            .ok_or_else(|| GptError::Unsupported(format!("entry array at LBA {entries_lba}")))?;
        let mut entries = vec![0u8; array_bytes as usize];
        r.seek(SeekFrom::Start(entries_at))?;
        r.read_exact(&mut entries)?;
        if crc32fast::hash(&entries) != entries_crc {
            return Err(GptError::EntriesCrc);
        }
        let mut partitions = Vec::new();
        for e in entries.chunks(size as usize) {
            let mut type_guid = Guid::ZERO;
            type_guid.0.copy_from_slice(&e[0..16]);
            if type_guid.is_zero() {
                continue;
            }
            let mut unique_guid = Guid::ZERO;
            unique_guid.0.copy_from_slice(&e[16..32]);
            let units: Vec<u16> =
                e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
            partitions.push(Partition {
                type_guid,
                unique_guid,
                first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap()),
                attributes: u64::from_le_bytes(e[48..56].try_into().unwrap()),
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(Gpt {
            sector_size,
            disk_guid,
            // The size the table was written for; `grow_to` moves it to the real end.
            total_sectors: alt_lba.saturating_add(1).min(total_sectors.max(alt_lba.saturating_add(1))),
            first_usable_lba,
            last_usable_lba,
            partitions,
        })
    }

    /// Moves the backup table to the end of a disk of `new_total_sectors` and extends the
    /// partition named `name` (if given) to the new last usable sector, keeping its end
    /// aligned to `align_sectors`. A config drive (partition named [`CONFIG_DRIVE_NAME`]) after
    /// it, as Ironic places one, bounds the growth instead; any other partition after it is an
    /// error. Returns whether anything changed.
    pub fn grow_to(
        &mut self,
        new_total_sectors: u64,
        name: Option<&str>,
        align_sectors: u64,
    ) -> Result<bool, GptError> {
        if new_total_sectors < self.total_sectors {
            return Err(GptError::Layout(format!(
                "disk shrank from {} to {} sectors",
                self.total_sectors, new_total_sectors
            )));
        }
        let array = entry_array_sectors(self.sector_size);
        let new_last_usable = new_total_sectors
            .checked_sub(2 + array)
            .filter(|l| *l >= self.first_usable_lba)
            .ok_or_else(|| GptError::Layout(format!("disk of {new_total_sectors} sectors is too small for a GPT")))?;
        let mut changed = new_total_sectors != self.total_sectors;
        self.total_sectors = new_total_sectors;
        self.last_usable_lba = new_last_usable;
        if let Some(name) = name {
            let this_last = self
                .partitions
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| GptError::Layout(format!("no partition named {name:?}")))?
                .last_lba;
            let after: Vec<&Partition> =
                self.partitions.iter().filter(|p| p.name != name && p.last_lba > this_last).collect();
            if after.iter().any(|p| p.name != CONFIG_DRIVE_NAME) {
                return Err(GptError::Layout(format!("partition {name:?} is not the last one on the disk")));
            }
            let limit = after.iter().map(|p| p.first_lba.saturating_sub(1)).min().unwrap_or(new_last_usable);
            let p = self.partitions.iter_mut().find(|p| p.name == name).expect("found above");
            let align = align_sectors.max(1);
            let end_exclusive = limit.saturating_add(1) / align * align;
            let new_last = end_exclusive.saturating_sub(1).max(p.last_lba);
            if new_last != p.last_lba {
                p.last_lba = new_last;
                changed = true;
            }
        }
        Ok(changed)
    }

    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample(ss: u64, sectors: u64) -> Gpt {
        let mut g = Gpt::new(Guid::from_str("11111111-2222-4333-8444-555555555555").unwrap(), ss, sectors).unwrap();
        g.partitions.push(Partition {
            type_guid: types::parse("esp").unwrap(),
            unique_guid: Guid::from_random_bytes([7; 16]),
            first_lba: 2048 * 512 / ss,
            last_lba: 4096 * 512 / ss - 1,
            attributes: 0,
            name: "esp".into(),
        });
        g.partitions.push(Partition {
            type_guid: types::parse("linux").unwrap(),
            unique_guid: Guid::from_random_bytes([9; 16]),
            first_lba: 4096 * 512 / ss,
            last_lba: 8192 * 512 / ss - 1,
            attributes: 0,
            name: "planet-state".into(),
        });
        g
    }

    #[test]
    fn guid_text_round_trip() {
        let g = Guid::from_str(types::ESP).unwrap();
        assert_eq!(g.to_string(), types::ESP);
        assert_eq!(g.0[0], 0x28); // first field stored little-endian
    }

    #[test]
    fn write_then_read_round_trips() {
        for ss in [512u64, 4096] {
            let sectors = 16 * 1024 * 1024 / ss;
            let g = sample(ss, sectors);
            let mut disk = Cursor::new(vec![0u8; (sectors * ss) as usize]);
            g.write_to(&mut disk).unwrap();
            let back = Gpt::read_from(&mut disk, ss, sectors).unwrap();
            assert_eq!(back, g);
        }
    }

    #[test]
    fn protective_mbr_is_recognised_and_resized() {
        let g = sample(512, 32768);
        let mut m = g.protective_mbr();
        assert!(is_protective_mbr(&m));
        assert_eq!(u32::from_le_bytes(m[458..462].try_into().unwrap()), 32767);
        set_protective_mbr_size(&mut m, 1 << 40);
        assert_eq!(u32::from_le_bytes(m[458..462].try_into().unwrap()), u32::MAX);
        m[450] = 0x83; // a hybrid MBR's first entry
        assert!(!is_protective_mbr(&m));
        assert!(!is_protective_mbr(&[0u8; 100]));
    }

    #[test]
    fn corrupt_header_is_detected() {
        let g = sample(512, 32768);
        let mut disk = Cursor::new(vec![0u8; 32768 * 512]);
        g.write_to(&mut disk).unwrap();
        disk.get_mut()[512 + 40] ^= 1;
        assert!(matches!(Gpt::read_from(&mut disk, 512, 32768), Err(GptError::HeaderCrc)));
    }

    #[test]
    fn grow_moves_backup_and_extends_last_partition_aligned() {
        let small = 32768u64;
        let big = small * 4 + 123; // not a multiple of the alignment
        let mut g = sample(512, small);
        let mut disk = Cursor::new(vec![0u8; (big * 512) as usize]);
        g.write_to(&mut disk).unwrap();
        let mut read = Gpt::read_from(&mut disk, 512, big).unwrap();
        assert_eq!(read.total_sectors, small);
        assert!(read.grow_to(big, Some("planet-state"), 2048).unwrap());
        let state = read.find("planet-state").unwrap();
        assert_eq!((state.last_lba + 1) % 2048, 0);
        assert!(state.last_lba <= read.last_usable_lba);
        assert!(read.last_usable_lba - state.last_lba < 2048);
        read.write_grown(&mut disk).unwrap();
        let again = Gpt::read_from(&mut disk, 512, big).unwrap();
        assert_eq!(again, read);
        assert_eq!(again.backup_header_lba(), big - 1);
        // Growing an already grown table changes nothing.
        let mut twice = again.clone();
        assert!(!twice.grow_to(big, Some("planet-state"), 2048).unwrap());
        g.total_sectors = small;
    }

    #[test]
    fn grows_up_to_a_config_drive_that_follows() {
        let mut g = sample(512, 32768);
        let state_last = g.find("planet-state").unwrap().last_lba;
        g.partitions.push(Partition {
            type_guid: types::parse("linux").unwrap(),
            unique_guid: Guid::from_random_bytes([3; 16]),
            first_lba: 20480,
            last_lba: 24575,
            attributes: 0,
            name: CONFIG_DRIVE_NAME.into(),
        });
        assert!(state_last < 20480);
        assert!(g.grow_to(65536, Some("planet-state"), 2048).unwrap());
        assert_eq!(g.find("planet-state").unwrap().last_lba, 20479);
        assert_eq!(g.find(CONFIG_DRIVE_NAME).unwrap().first_lba, 20480);
        g.validate().unwrap();
    }

    #[test]
    fn refuses_to_grow_a_partition_that_is_not_last() {
        let mut g = sample(512, 32768);
        assert!(g.grow_to(65536, Some("esp"), 2048).is_err());
    }

    #[test]
    fn overlapping_partitions_are_rejected() {
        let mut g = sample(512, 32768);
        g.partitions[1].first_lba = 3000;
        assert!(matches!(g.validate(), Err(GptError::Layout(_))));
    }
    /// A primary header at LBA 1 with the given entry fields and a valid header CRC.
    fn hostile_header(ss: u64, entries_lba: u64, count: u32, size: u32, alt_lba: u64) -> Vec<u8> {
        let g = sample(ss, 32768);
        let mut disk = vec![0u8; (4 * ss) as usize];
        let mut h = g.header(true, 0);
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&count.to_le_bytes());
        h[84..88].copy_from_slice(&size.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[0..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk[ss as usize..2 * ss as usize].copy_from_slice(&h);
        disk
    }

    #[test]
    fn hostile_headers_are_refused_without_panic_or_huge_allocation() {
        // count * size overflows u32; a 4 GiB array; an entry size that is not 128 * 2^n.
        for (count, size) in [(4096, 1_048_575), (4096, 1 << 20), (u32::MAX, u32::MAX), (128, 129), (8192, 128)] {
            let disk = hostile_header(512, 2, count, size, 32767);
            let r = Gpt::read_from(&mut Cursor::new(disk), 512, 32768);
            assert!(matches!(r, Err(GptError::Unsupported(_))), "{count} x {size}: {r:?}");
        }
        // entries_lba * sector_size overflows u64.
        let disk = hostile_header(4096, u64::MAX / 2, 128, 128, 1000);
        assert!(Gpt::read_from(&mut Cursor::new(disk), 4096, 1 << 20).is_err());
        // alt_lba + 1 overflows: the entries are valid, the size must not wrap.
        let g = sample(512, 32768);
        let mut disk = Cursor::new(vec![0u8; 32768 * 512]);
        g.write_to(&mut disk).unwrap();
        let entries = g.entry_array();
        let mut h = g.header(true, crc32fast::hash(&entries));
        h[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[0..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk.get_mut()[512..1024].copy_from_slice(&h);
        let _ = Gpt::read_from(&mut disk, 512, 32768);
        // A partition whose last LBA is below its first has no sectors rather than wrapping.
        let p = Partition { last_lba: u64::MAX, first_lba: 0, ..g.partitions[0].clone() };
        assert_eq!(p.sectors(), u64::MAX);
        let p = Partition { last_lba: 1, first_lba: 5, ..g.partitions[0].clone() };
        assert_eq!(p.sectors(), 0);
    }

    /// A disk that keeps writes in a volatile cache until a barrier, as a real disk's write
    /// cache and the page cache do; `epochs[i]` holds the sector writes issued after barrier i.
    struct CachedDisk {
        ss: u64,
        pos: u64,
        epochs: Vec<Vec<(u64, Vec<u8>)>>,
    }

    impl Write for CachedDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // Split into sectors: each sector may or may not reach the platter on power loss.
            let mut done = 0;
            while done < buf.len() {
                let at = self.pos + done as u64;
                let n = ((self.ss - at % self.ss) as usize).min(buf.len() - done);
                self.epochs.last_mut().unwrap().push((at, buf[done..done + n].to_vec()));
                done += n;
            }
            self.pos += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(()) // as for std::fs::File: orders nothing
        }
    }

    impl Seek for CachedDisk {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            let SeekFrom::Start(p) = to else { unreachable!("write_grown seeks absolutely") };
            self.pos = p;
            Ok(p)
        }
    }

    impl SyncData for CachedDisk {
        fn sync_data(&mut self) -> io::Result<()> {
            if !self.epochs.last().unwrap().is_empty() {
                self.epochs.push(Vec::new());
            }
            Ok(())
        }
    }

    #[test]
    fn growth_survives_power_loss_with_any_unsynced_writes_dropped() {
        // 4Kn: the header and the entries sit in different sectors; 4 sectors of entries.
        let (ss, small, big) = (4096u64, 256u64, 512u64);
        let mut g = Gpt::new(Guid::from_random_bytes([5; 16]), ss, small).unwrap();
        g.partitions.push(Partition {
            type_guid: types::parse("linux").unwrap(),
            unique_guid: Guid::from_random_bytes([9; 16]),
            first_lba: 16,
            last_lba: 200,
            attributes: 0,
            name: "planet-state".into(),
        });
        let mut base = Cursor::new(vec![0u8; (big * ss) as usize]);
        g.write_to(&mut base).unwrap();
        let base = base.into_inner();
        let mut grown = Gpt::read_from(&mut Cursor::new(&base), ss, big).unwrap();
        assert!(grown.grow_to(big, Some("planet-state"), 1).unwrap());
        let mut dev = CachedDisk { ss, pos: 0, epochs: vec![Vec::new()] };
        grown.write_grown(&mut dev).unwrap();
        let epochs: Vec<_> = dev.epochs.into_iter().filter(|e| !e.is_empty()).collect();

        // Power is lost during epoch k: earlier epochs are durable, any subset of epoch k's
        // sectors made it, later epochs never started.
        let mut durable = base;
        let mut checked = 0;
        for epoch in &epochs {
            assert!(epoch.len() <= 12, "too many sectors in one epoch to enumerate: {}", epoch.len());
            for subset in 0u32..(1 << epoch.len()) {
                let mut disk = durable.clone();
                for (i, (at, data)) in epoch.iter().enumerate() {
                    if subset & (1 << i) != 0 {
                        disk[*at as usize..*at as usize + data.len()].copy_from_slice(data);
                    }
                }
                // What firmware, the kernel and planet-init read: the primary, else the backup
                // at the disk's (new) end.
                let primary = Gpt::read_from(&mut Cursor::new(&disk), ss, big);
                let backup_hdr = ((big - 1) * ss) as usize;
                let mut view = disk[..2 * ss as usize].to_vec();
                view[ss as usize..].copy_from_slice(&disk[backup_hdr..backup_hdr + ss as usize]);
                view.resize(disk.len(), 0);
                let entries_at = ((big - 1 - entry_array_sectors(ss)) * ss) as usize;
                view[entries_at..backup_hdr].copy_from_slice(&disk[entries_at..backup_hdr]);
                let backup = Gpt::read_from(&mut Cursor::new(&view), ss, big);
                let ok = |t: &Result<Gpt, GptError>| {
                    t.as_ref().is_ok_and(|t| t.partitions == g.partitions || t.partitions == grown.partitions)
                };
                assert!(
                    ok(&primary) || ok(&backup),
                    "no valid table after losing power with sectors {subset:b} of {:?} written: \
                     primary {primary:?}, backup {backup:?}",
                    epoch.iter().map(|(a, _)| a / ss).collect::<Vec<_>>()
                );
                checked += 1;
            }
            for (at, data) in epoch {
                durable[*at as usize..*at as usize + data.len()].copy_from_slice(data);
            }
        }
        assert!(checked > 3);
        assert_eq!(Gpt::read_from(&mut Cursor::new(&durable), ss, big).unwrap(), grown);
    }
}
