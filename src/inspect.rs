//! `planet-image inspect`: what an image holds (partition table, slot and ESP contents) and
//! whether it still matches its manifest. A mismatch is an error (non-zero exit).

use crate::image_reader::{squashfs_info, DiskImage};
use crate::manifest::{self, Manifest};
use crate::util::digest::sha256_file;
use anyhow::{bail, Result};
use std::fmt::Write as _;
use std::path::Path;

pub fn run(path: &Path, manifest_path: Option<&Path>) -> Result<String> {
    let image = DiskImage::open(path)?;
    let gpt = image.gpt()?;
    let mut out = String::new();
    writeln!(out, "image:      {} ({}, {} bytes of disk)", path.display(), image.format_name(), image.disk_size()?)?;
    writeln!(out, "disk guid:  {}  sector size: {}", gpt.disk_guid, gpt.sector_size)?;
    writeln!(out, "{:<3} {:<14} {:>12} {:>12}  {:<38} content", "#", "label", "start", "size MiB", "type")?;
    for (i, p) in gpt.partitions.iter().enumerate() {
        let head = image.read_at(p.first_lba * gpt.sector_size, (p.sectors() * gpt.sector_size).min(4096))?;
        let content = if let Some(sq) = squashfs_info(&head) {
            format!("squashfs {} inodes={} used={} MiB", sq.compression, sq.inodes, sq.bytes_used >> 20)
        } else if head.len() >= 0x438 + 2 && head[0x438] == 0x53 && head[0x439] == 0xEF {
            "ext4".to_string()
        } else if head.get(0x52..0x57) == Some(b"FAT32") {
            "FAT32".to_string()
        } else if head.iter().all(|b| *b == 0) {
            "empty".to_string()
        } else {
            "unknown".to_string()
        };
        writeln!(
            out,
            "{:<3} {:<14} {:>12} {:>12}  {:<38} {}",
            i + 1,
            p.name,
            p.first_lba,
            (p.sectors() * gpt.sector_size) >> 20,
            p.type_guid.to_string(),
            content
        )?;
    }
    for (name, options) in image.loader_entries()? {
        writeln!(out, "boot entry: {name}: {options}")?;
    }

    let mpath = manifest_path.map(Path::to_path_buf).unwrap_or_else(|| manifest::path_for(path));
    if !mpath.exists() {
        writeln!(out, "manifest:   none at {} (nothing to verify)", mpath.display())?;
        return Ok(out);
    }
    let m = Manifest::load(&mpath)?;
    let mut problems = Vec::new();
    let actual = sha256_file(path)?;
    if actual != m.image.sha256 {
        problems.push(format!("image sha256 is {actual}, the manifest says {}", m.image.sha256));
    }
    for mp in &m.partitions {
        // Partition numbers start at 1; a 0 in a manifest matches nothing.
        match (mp.number as usize).checked_sub(1).and_then(|i| gpt.partitions.get(i)) {
            Some(p) if p.name == mp.label => {
                let digest = image.partition_sha256(&gpt, p)?;
                if digest != mp.sha256 {
                    problems.push(format!(
                        "partition {} ({}) sha256 is {digest}, the manifest says {}",
                        mp.number, mp.label, mp.sha256
                    ));
                }
            }
            _ => problems.push(format!("partition {} ({}) is missing from the table", mp.number, mp.label)),
        }
    }
    writeln!(
        out,
        "manifest:   {} (rootfs {} sha256 {}, kernel {}, planet-init {})",
        mpath.display(),
        m.rootfs.summary.format,
        &m.rootfs.summary.sha256[..16.min(m.rootfs.summary.sha256.len())],
        m.kernel.version,
        m.planet_init.version
    )?;
    if problems.is_empty() {
        writeln!(out, "verify:     ok (image and {} partitions match the manifest)", m.partitions.len())?;
        Ok(out)
    } else {
        print!("{out}");
        bail!("{} does not match its manifest:\n  {}", path.display(), problems.join("\n  "))
    }
}
