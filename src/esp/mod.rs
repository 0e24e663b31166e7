//! The EFI system partition: FAT32 written in memory (see `fat32`), holding systemd-boot as the
//! removable-media boot path `\EFI\BOOT\BOOTX64.EFI`, its `loader.conf`, a Boot Loader
//! Specification entry per populated slot, and each slot's kernel and initramfs.

mod fat32;

use anyhow::{Context, Result};

/// What one slot boots.
pub struct SlotBoot<'a> {
    /// `a` or `b`.
    pub slot: &'a str,
    pub title: &'a str,
    pub version: &'a str,
    pub vmlinuz: &'a [u8],
    pub initramfs: &'a [u8],
    /// The full kernel command line, `planet.slot=` included.
    pub options: String,
}

/// The bytes the ESP's files take, to size the partition.
pub fn content_bytes(bootloader: &[u8], slots: &[SlotBoot<'_>]) -> u64 {
    bootloader.len() as u64
        + slots.iter().map(|s| (s.vmlinuz.len() + s.initramfs.len()) as u64 + 4096).sum::<u64>()
        + 64 * 1024
}

pub fn loader_conf(default_slot: &str) -> String {
    format!("default planet-{default_slot}.conf\ntimeout 0\nconsole-mode keep\neditor no\n")
}

pub fn entry_conf(s: &SlotBoot<'_>) -> String {
    format!(
        "title {}\nversion {}\nlinux /planet-{}/vmlinuz\ninitrd /planet-{}/initramfs.img\noptions {}\n",
        s.title, s.version, s.slot, s.slot, s.options
    )
}

/// Formats and fills a FAT32 filesystem of `size` bytes.
pub fn build(
    size: u64,
    sector_size: u16,
    hidden_sectors: u32,
    volume_id: u32,
    mtime: u64,
    bootloader: &[u8],
    slots: &[SlotBoot<'_>],
) -> Result<Vec<u8>> {
    let mut tree = fat32::Tree::default();
    tree.add_file("EFI/BOOT/BOOTX64.EFI", bootloader.to_vec())?;
    tree.add_file("loader/loader.conf", loader_conf(slots.first().map(|s| s.slot).unwrap_or("a")).into_bytes())?;
    for s in slots {
        tree.add_file(&format!("planet-{}/vmlinuz", s.slot), s.vmlinuz.to_vec())?;
        tree.add_file(&format!("planet-{}/initramfs.img", s.slot), s.initramfs.to_vec())?;
        tree.add_file(&format!("loader/entries/planet-{}.conf", s.slot), entry_conf(s).into_bytes())?;
    }
    let t = civil_from_epoch(mtime);
    let params = fat32::Params {
        size,
        sector_size: u32::from(sector_size),
        volume_id,
        label: *b"PLANET-ESP ",
        hidden_sectors,
        date: ((t.year - 1980) << 9) | (t.month << 5) | t.day,
        time: (t.hour << 11) | (t.min << 5) | (t.sec / 2),
    };
    fat32::build(&params, &tree).context("writing the ESP")
}

/// The smallest ESP that FAT32 allows for this sector size, in bytes.
pub fn min_size(sector_size: u16) -> u64 {
    // 65525 clusters of one sector plus FATs and reserved sectors, rounded generously.
    u64::from(sector_size) * 66_000 + (2 << 20)
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
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Civil {
        year: year.min(2107),
        month,
        day,
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
}
