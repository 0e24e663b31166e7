//! The EFI system partition: FAT32 written in memory (see `fat32`), holding systemd-boot as the
//! removable-media boot path `\EFI\BOOT\BOOTX64.EFI`, its `loader.conf`, a Boot Loader
//! Specification entry per populated slot, and each slot's kernel and initramfs.

use crate::fat32;
use anyhow::{Context, Result};
use planet_config::contract;

/// What one slot boots.
pub struct SlotBoot<'a> {
    /// `a` or `b`.
    pub slot: char,
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

/// No `default`: systemd-boot then boots the first entry in its order — the newest generation
/// that still has tries left (see `planet_config::bootentry`), which is what makes boot counting
/// fall back to the other slot.
pub fn loader_conf() -> String {
    "timeout 0\nconsole-mode keep\neditor no\n".to_string()
}

/// The loader entry file of a slot in a freshly built image: generation 1, no boot counter.
pub fn initial_entry_name(slot: char) -> String {
    planet_config::bootentry::EntryName::new(1, slot).file_name()
}

pub fn entry_conf(s: &SlotBoot<'_>) -> String {
    planet_config::bootentry::entry_conf(s.title, s.version, s.slot, &s.options)
}

/// Formats and fills a FAT32 filesystem of `size` bytes; `extra_files` (path, bytes) are added
/// as they are (GRUB's `boot/grub/grub.cfg` for legacy BIOS boot).
#[allow(clippy::too_many_arguments)]
pub fn build(
    size: u64,
    sector_size: u16,
    hidden_sectors: u32,
    volume_id: u32,
    mtime: u64,
    bootloader: &[u8],
    slots: &[SlotBoot<'_>],
    extra_files: &[(&str, &[u8])],
) -> Result<Vec<u8>> {
    let mut tree = fat32::Tree::default();
    for (path, bytes) in extra_files {
        tree.add_file(path, bytes.to_vec())?;
    }
    tree.add_file(contract::REMOVABLE_BOOT_PATH, bootloader.to_vec())?;
    tree.add_file(contract::LOADER_CONF_PATH, loader_conf().into_bytes())?;
    for s in slots {
        tree.add_file(&contract::kernel_path(s.slot), s.vmlinuz.to_vec())?;
        tree.add_file(&contract::initramfs_path(s.slot), s.initramfs.to_vec())?;
        let entry = format!("{}/{}", contract::LOADER_ENTRIES_DIR, initial_entry_name(s.slot));
        tree.add_file(&entry, entry_conf(s).into_bytes())?;
    }
    let (date, time) = fat32::dos_date_time(mtime);
    let params = fat32::Params {
        size,
        sector_size: u32::from(sector_size),
        volume_id,
        label: *b"PLANET-ESP ",
        hidden_sectors,
        date,
        time,
    };
    fat32::build(&params, &tree).context("writing the ESP")
}

/// The smallest ESP that FAT32 allows for this sector size, in bytes.
pub fn min_size(sector_size: u16) -> u64 {
    // 65525 clusters of one sector plus FATs and reserved sectors, rounded generously.
    u64::from(sector_size) * 66_000 + (2 << 20)
}
