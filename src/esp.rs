//! The EFI system partition: FAT32 written in memory with `fatfs`, holding systemd-boot as the
//! removable-media boot path `\EFI\BOOT\BOOTX64.EFI`, its `loader.conf`, a Boot Loader
//! Specification entry per populated slot, and each slot's kernel and initramfs.

use anyhow::{Context, Result};
use fatfs::{FatType, FormatVolumeOptions, FsOptions};
use std::io::{Cursor, Write};

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
        + slots
            .iter()
            .map(|s| (s.vmlinuz.len() + s.initramfs.len()) as u64 + 4096)
            .sum::<u64>()
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
    volume_id: u32,
    mtime: u64,
    bootloader: &[u8],
    slots: &[SlotBoot<'_>],
) -> Result<Vec<u8>> {
    let mut image = vec![0u8; size as usize];
    let total_sectors = (size / u64::from(sector_size)) as u32;
    let cluster = cluster_size(size, sector_size);
    fatfs::format_volume(
        Cursor::new(&mut image[..]),
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_sector(sector_size)
            .bytes_per_cluster(cluster)
            .total_sectors(total_sectors)
            .volume_id(volume_id)
            .volume_label(*b"PLANET-ESP "),
    )
    .context("formatting the ESP as FAT32")?;
    {
        let clock: &'static FixedClock = Box::leak(Box::new(FixedClock(civil_from_epoch(mtime))));
        let fs = fatfs::FileSystem::new(
            Cursor::new(&mut image[..]),
            FsOptions::new().time_provider(clock),
        )
        .context("opening the new ESP")?;
        {
            let root = fs.root_dir();
            let efi_boot = root.create_dir("EFI")?.create_dir("BOOT")?;
            write_file(&efi_boot, "BOOTX64.EFI", bootloader)?;
            let loader = root.create_dir("loader")?;
            write_file(
                &loader,
                "loader.conf",
                loader_conf(slots.first().map(|s| s.slot).unwrap_or("a")).as_bytes(),
            )?;
            let entries = loader.create_dir("entries")?;
            for s in slots {
                let dir = root.create_dir(&format!("planet-{}", s.slot))?;
                write_file(&dir, "vmlinuz", s.vmlinuz)?;
                write_file(&dir, "initramfs.img", s.initramfs)?;
                write_file(
                    &entries,
                    &format!("planet-{}.conf", s.slot),
                    entry_conf(s).as_bytes(),
                )?;
            }
        }
        fs.unmount().context("closing the ESP")?;
    }
    Ok(image)
}

fn write_file<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let mut f = dir
        .create_file(name)
        .with_context(|| format!("creating {name} on the ESP"))?;
    f.truncate()?;
    f.write_all(data)
        .with_context(|| format!("writing {name} on the ESP (is the ESP too small?)"))?;
    f.flush()?;
    Ok(())
}

/// The largest cluster (up to 4 KiB) that still leaves FAT32's minimum of 65525 clusters.
fn cluster_size(size: u64, sector_size: u16) -> u32 {
    let mut cluster = 4096u32.max(u32::from(sector_size));
    while cluster > u32::from(sector_size) && size / u64::from(cluster) < 66_000 {
        cluster /= 2;
    }
    cluster
}

/// The smallest ESP that FAT32 allows for this sector size, in bytes.
pub fn min_size(sector_size: u16) -> u64 {
    // 65525 clusters of one sector plus FATs and reserved sectors, rounded generously.
    u64::from(sector_size) * 66_000 + (2 << 20)
}

/// A clock that always says the build's SOURCE_DATE_EPOCH, so FAT timestamps are reproducible.
#[derive(Debug)]
struct FixedClock(fatfs::DateTime);

impl fatfs::TimeProvider for FixedClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// UTC calendar date and time for a Unix time (FAT cannot store dates before 1980).
fn civil_from_epoch(epoch: u64) -> fatfs::DateTime {
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
    fatfs::DateTime {
        date: fatfs::Date {
            year: year.min(2107),
            month,
            day,
        },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let d = civil_from_epoch(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
        let leap = civil_from_epoch(951_782_400); // 2000-02-29
        assert_eq!(
            (leap.date.year, leap.date.month, leap.date.day),
            (2000, 2, 29)
        );
    }

    #[test]
    fn clusters_keep_fat32_legal() {
        assert_eq!(cluster_size(256 << 20, 512), 2048);
        assert!((64u64 << 20) / u64::from(cluster_size(64 << 20, 512)) >= 65_525);
    }
}
