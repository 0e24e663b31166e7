//! Finding the boot disk's partitions by PARTLABEL and growing the state partition at first
//! boot.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use planet_config::contract::{SLOT_A_LABEL, SLOT_B_LABEL, STATE_LABEL};
use planet_gpt::{Gpt, Guid};

use crate::sys::ioctl;

/// Growth keeps the state partition's end 1 MiB aligned (in 512-byte sectors).
const ALIGN_BYTES: u64 = 1 << 20;

/// A block device as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`vda4`), also the node name under /dev.
    pub name: String,
    pub partname: Option<String>,
    pub partn: Option<u32>,
    /// The whole disk holding a partition (`vda`).
    pub parent: Option<String>,
    /// Size in 512-byte units, as sysfs reports it.
    pub size_512: u64,
}

impl BlockDev {
    pub fn size_bytes(&self) -> u64 {
        self.size_512 * 512
    }
}

/// Reads `<sysfs>/class/block/*`: `uevent` for DEVNAME/PARTNAME/PARTN, the symlink target's
/// parent directory for the disk.
pub fn scan(sysfs: &Path) -> Result<Vec<BlockDev>> {
    let dir = sysfs.join("class/block");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(uevent) = std::fs::read_to_string(path.join("uevent")) else {
            continue;
        };
        let field = |k: &str| {
            uevent.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')).map(|v| v.to_string()))
        };
        let name = field("DEVNAME").unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
        let is_part = field("DEVTYPE").as_deref() == Some("partition");
        let parent = if is_part {
            std::fs::canonicalize(&path)
                .ok()
                .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()))
        } else {
            None
        };
        let size_512 = std::fs::read_to_string(path.join("size")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        out.push(BlockDev {
            name,
            partname: field("PARTNAME"),
            partn: field("PARTN").and_then(|v| v.parse().ok()),
            parent,
            size_512,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The partitions planet-init needs, all on one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootDisk {
    pub disk: String,
    pub slot: BlockDev,
    pub state: BlockDev,
}

/// Picks the disk holding both `slot_label` and the state partition. With `pin` (the image's
/// GPT disk GUID, `planet.disk_guid`), only a disk whose GPT carries that GUID qualifies, so
/// another planet disk attached (an installer stick, a volume of another node) is ignored; the
/// GUID is read from the disk under `dev_root`. Without it (images built before the pin), the
/// labels alone decide and several candidates are an error.
pub fn find_boot_disk(devs: &[BlockDev], slot_label: &str, pin: Option<Guid>, dev_root: &Path) -> Result<BootDisk> {
    fn labelled<'a>(devs: &'a [BlockDev], label: &'a str) -> impl Iterator<Item = &'a BlockDev> + 'a {
        devs.iter().filter(move |d| d.partname.as_deref() == Some(label))
    }
    let mut found = Vec::new();
    for state in labelled(devs, STATE_LABEL) {
        if let Some(slot) = labelled(devs, slot_label).find(|s| s.parent == state.parent && s.parent.is_some()) {
            found.push(BootDisk {
                disk: state.parent.clone().unwrap_or_default(),
                slot: slot.clone(),
                state: state.clone(),
            });
        }
    }
    if let Some(pin) = pin {
        let (mine, others): (Vec<BootDisk>, Vec<BootDisk>) =
            found.into_iter().partition(|f| disk_guid(&dev_root.join(&f.disk)) == Some(pin));
        if mine.is_empty() && !others.is_empty() {
            bail!(
                "no disk with partitions labelled {slot_label:?} and {STATE_LABEL:?} has the GPT disk GUID {pin} \
                 (planet.{}); other planet disks: {}",
                planet_config::DISK_GUID_PARAM,
                others
                    .iter()
                    .map(|f| match disk_guid(&dev_root.join(&f.disk)) {
                        Some(g) => format!("{} ({g})", f.disk),
                        None => format!("{} (GPT unreadable)", f.disk),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !others.is_empty() && mine.len() == 1 {
            crate::event!(
                "other planet disks ignored",
                disk_guid = pin,
                disks = others.iter().map(|f| f.disk.as_str()).collect::<Vec<_>>().join(",")
            );
        }
        found = mine;
    }
    match found.len() {
        0 => bail!("no disk has partitions labelled {slot_label:?} and {STATE_LABEL:?}"),
        1 => Ok(found.remove(0)),
        _ => bail!(
            "several disks have partitions labelled {slot_label:?} and {STATE_LABEL:?}{}: {}",
            if pin.is_some() { " and the same disk GUID (copies of one image)" } else { "" },
            found.iter().map(|f| f.disk.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The GPT disk GUID of a disk: from the primary table, else from the backup at the end.
pub fn disk_guid(path: &Path) -> Option<Guid> {
    let mut f = File::open(path).ok()?;
    let (bytes, ss) = device_geometry(&f).ok()?;
    let total = bytes / ss;
    if total < 64 {
        return None;
    }
    if let Ok(g) = Gpt::read_from(&mut f, ss, total) {
        return Some(g.disk_guid);
    }
    let mut view = BackupAsPrimary { f: &mut f, ss, backup_lba: total - 1, pos: 0 };
    Gpt::read_from(&mut view, ss, total).ok().map(|g| g.disk_guid)
}

/// Polls for the boot disk until `timeout`, calling `between` (a coldplug round) while waiting.
pub fn wait_for_boot_disk(
    sysfs: &Path,
    dev_root: &Path,
    slot_label: &str,
    pin: Option<Guid>,
    timeout: Duration,
    mut between: impl FnMut(),
) -> Result<BootDisk> {
    let start = Instant::now();
    loop {
        let devs = scan(sysfs)?;
        match find_boot_disk(&devs, slot_label, pin, dev_root) {
            Ok(d) => return Ok(d),
            Err(e) if start.elapsed() >= timeout => {
                let seen: Vec<String> = devs
                    .iter()
                    .map(|d| match &d.partname {
                        Some(p) => format!("{}({p})", d.name),
                        None => d.name.clone(),
                    })
                    .collect();
                return Err(e).with_context(|| {
                    format!(
                        "waiting {}s for the boot disk (block devices seen: {})",
                        timeout.as_secs(),
                        if seen.is_empty() { "none".into() } else { seen.join(" ") }
                    )
                });
            }
            Err(_) => {
                between();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Repairs the boot disk when the kernel found no partitions on it because the primary GPT was
/// lost in the middle of a growth (the kernel does not fall back to the backup without `gpt` on
/// the command line). A disk is touched only when all of this holds, so a disk planet-init does
/// not own (a whole-disk filesystem laid over an old planet disk, whose backup GPT survives at
/// the end) is never written:
/// - its backup table is valid and holds the state partition;
/// - with `pin`, the backup carries that disk GUID; without, it also holds both slots;
/// - the primary area still looks like an interrupted growth: LBA 1 carries the GPT signature
///   (power was lost while the entries were written) or the primary entries are exactly the
///   backup's (lost while the header was written). Anything else there is someone's data.
///
/// Returns how many were repaired; the kernel is told to re-read them.
pub fn repair_interrupted_growth(sysfs: &Path, dev_root: &Path, pin: Option<Guid>) -> usize {
    let Ok(devs) = scan(sysfs) else { return 0 };
    let mut repaired = 0;
    for d in devs.iter().filter(|d| d.partn.is_none() && !devs.iter().any(|p| p.parent.as_ref() == Some(&d.name))) {
        let path = dev_root.join(&d.name);
        // Anything unreadable (an empty CD drive, a blank disk) is simply not ours.
        let candidate = (|| -> Option<(Gpt, u64)> {
            let mut ro = File::open(&path).ok()?;
            let (bytes, ss) = device_geometry(&ro).ok()?;
            let total = bytes / ss;
            if total < 64 || Gpt::read_from(&mut ro, ss, total).is_ok() {
                return None;
            }
            let mut view = BackupAsPrimary { f: &mut ro, ss, backup_lba: total - 1, pos: 0 };
            let mut gpt = Gpt::read_from(&mut view, ss, total).ok()?;
            gpt.find(STATE_LABEL)?;
            match pin {
                Some(pin) if gpt.disk_guid != pin => return None,
                Some(_) => {}
                None => {
                    gpt.find(SLOT_A_LABEL)?;
                    gpt.find(SLOT_B_LABEL)?;
                }
            }
            if !looks_like_interrupted_growth(&mut ro, ss, &gpt) {
                crate::event!("gpt repair refused", disk = d.name, reason = "the primary area holds other data");
                return None;
            }
            gpt.total_sectors = total;
            Some((gpt, ss))
        })();
        let Some((gpt, ss)) = candidate else { continue };
        let r = (|| -> Result<bool> {
            let mut f = OpenOptions::new().read(true).write(true).open(&path)?;
            gpt.write_grown(&mut f)?;
            update_protective_mbr(&mut f, gpt.total_sectors, ss)?;
            f.sync_all()?;
            use std::os::unix::fs::FileTypeExt;
            if f.metadata()?.file_type().is_block_device() {
                ioctl::reread_partitions(f.as_fd())?;
            }
            Ok(true)
        })();
        match r {
            Ok(true) => {
                crate::event!("gpt repaired", disk = d.name, from = "backup");
                repaired += 1;
            }
            Ok(false) => {}
            Err(e) => crate::event!("gpt repair failed", disk = d.name, error = format!("{e:#}")),
        }
    }
    repaired
}

/// Whether LBA 1.. holds what a growth interrupted by power loss leaves there (see
/// [`repair_interrupted_growth`]): the GPT signature at LBA 1, or the backup's entry array at
/// LBA 2.
fn looks_like_interrupted_growth(f: &mut File, ss: u64, backup: &Gpt) -> bool {
    let mut sig = [0u8; 8];
    if f.seek(SeekFrom::Start(ss)).is_ok() && f.read_exact(&mut sig).is_ok() && &sig == b"EFI PART" {
        return true;
    }
    let want = backup.entry_array();
    let mut have = vec![0u8; want.len()];
    f.seek(SeekFrom::Start(2 * ss)).is_ok() && f.read_exact(&mut have).is_ok() && have == want
}

/// Size in bytes and logical sector size of a block device, or of a regular file (tests).
pub fn device_geometry(f: &File) -> Result<(u64, u64)> {
    let meta = f.metadata().context("reading device metadata")?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_block_device() {
        return Ok((meta.len(), 512));
    }
    let size = ioctl::block_size_bytes(f.as_fd()).context("reading the disk size (BLKGETSIZE64)")?;
    let ss = ioctl::block_sector_size(f.as_fd()).context("reading the sector size (BLKSSZGET)")?;
    Ok((size, ss))
}

/// What growing the GPT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptGrowth {
    pub partn: u32,
    pub sector_size: u64,
    pub old_first_last: (u64, u64),
    pub new_last: u64,
}

impl GptGrowth {
    // Saturating: only for messages; grow_gpt checked the table.
    pub fn old_bytes(&self) -> u64 {
        (self.old_first_last.1 + 1).saturating_sub(self.old_first_last.0).saturating_mul(self.sector_size)
    }
    pub fn new_bytes(&self) -> u64 {
        (self.new_last + 1).saturating_sub(self.old_first_last.0).saturating_mul(self.sector_size)
    }
}

/// Moves the backup GPT to the end of the disk (or file) and extends the state partition to
/// it, in planet-gpt's power-fail-safe order. `None` when the table already fills the disk.
pub fn grow_gpt(f: &mut File) -> Result<Option<GptGrowth>> {
    let (bytes, ss) = device_geometry(f)?;
    let total = bytes / ss;
    let (mut gpt, repaired) = read_gpt(f, ss, total)?;
    // The table comes from a disk: sizes below are computed from it only once it is sane.
    gpt.validate().context("checking the GPT before growing it")?;
    let (index, old) = gpt
        .partitions
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == STATE_LABEL)
        .map(|(i, p)| (i, (p.first_lba, p.last_lba)))
        .with_context(|| format!("no {STATE_LABEL} entry in the GPT"))?;
    let align = (ALIGN_BYTES / ss).max(1);
    if !gpt.grow_to(total, Some(STATE_LABEL), align).context("planning GPT growth")? && !repaired {
        return Ok(None);
    }
    gpt.write_grown(f).context("writing the grown GPT")?;
    update_protective_mbr(f, total, ss).context("updating the protective MBR")?;
    f.sync_all().context("flushing the grown GPT")?;
    Ok(Some(GptGrowth {
        partn: index as u32 + 1,
        sector_size: ss,
        old_first_last: old,
        new_last: gpt.partitions[index].last_lba,
    }))
}

/// Reads the primary table, or — when it is damaged, which is what a power loss between the
/// steps of `write_grown` leaves — the backup copy at the disk's end (written first, so it is
/// complete). Returns whether the backup was used, i.e. the primary must be rewritten.
fn read_gpt(f: &mut File, ss: u64, total: u64) -> Result<(Gpt, bool)> {
    let primary_err = match Gpt::read_from(f, ss, total) {
        Ok(g) => return Ok((g, false)),
        Err(e) => e,
    };
    let mut view = BackupAsPrimary { f, ss, backup_lba: total - 1, pos: 0 };
    let mut gpt = Gpt::read_from(&mut view, ss, total)
        .map_err(|backup_err| anyhow::anyhow!("reading the GPT: primary: {primary_err}; backup: {backup_err}"))?;
    // read_from takes the size from the header's alternate LBA, which for a backup is 1.
    gpt.total_sectors = total;
    crate::event!("gpt repaired", from = "backup", primary_error = primary_err);
    Ok((gpt, true))
}

/// A view of a disk whose LBA 1 shows the backup header (the disk's last sector), so the
/// primary-table reader can parse the backup: the header names its own entry array.
struct BackupAsPrimary<'a> {
    f: &'a mut File,
    ss: u64,
    backup_lba: u64,
    pos: u64,
}

impl Read for BackupAsPrimary<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (at, limit) = if (self.ss..2 * self.ss).contains(&self.pos) {
            (self.backup_lba * self.ss + (self.pos - self.ss), (2 * self.ss - self.pos) as usize)
        } else if self.pos < self.ss {
            (self.pos, (self.ss - self.pos) as usize)
        } else {
            (self.pos, buf.len())
        };
        self.f.seek(SeekFrom::Start(at))?;
        let len = buf.len().min(limit);
        let n = self.f.read(&mut buf[..len])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BackupAsPrimary<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or(io::ErrorKind::InvalidInput)?,
            SeekFrom::End(d) => {
                ((self.backup_lba + 1) * self.ss).checked_add_signed(d).ok_or(io::ErrorKind::InvalidInput)?
            }
        };
        Ok(self.pos)
    }
}

/// Extends the protective MBR's 0xEE entry to the new disk size, keeping the rest of sector 0
/// (boot code, signature) as it is. planet-gpt's `write_grown` leaves LBA 0 alone, and fdisk
/// and some firmware complain about a size mismatch.
fn update_protective_mbr(f: &mut File, total_sectors: u64, ss: u64) -> Result<()> {
    use std::io::Write;
    let mut m = vec![0u8; ss as usize];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut m)?;
    if !planet_gpt::is_protective_mbr(&m) {
        return Ok(()); // a hybrid or missing MBR: not ours to touch
    }
    planet_gpt::set_protective_mbr_size(&mut m, total_sectors);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&m)?;
    Ok(())
}

/// Tells the kernel about the grown partition: BLKPG resize (works even while other
/// partitions of the disk are in use, and keeps the device node), else re-read the table.
pub fn inform_kernel(disk: &File, g: &GptGrowth) -> Result<&'static str> {
    let start = g.old_first_last.0 * g.sector_size;
    let blkpg_err = match ioctl::resize_partition(disk.as_fd(), g.partn, start, g.new_bytes()) {
        Ok(()) => return Ok("blkpg"),
        Err(e) => e,
    };
    let rr_err = match ioctl::reread_partitions(disk.as_fd()) {
        Ok(()) => return Ok("blkrrpart"),
        Err(e) => e,
    };
    bail!("re-reading the partition table: BLKPG resize failed ({blkpg_err}), BLKRRPART failed ({rr_err})")
}

/// Block size and block count of an ext4 filesystem, from its superblock.
pub fn ext4_geometry(sb: &[u8]) -> Result<(u64, u64)> {
    anyhow::ensure!(sb.len() >= 1024, "short superblock");
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap());
    anyhow::ensure!(u16::from_le_bytes([sb[0x38], sb[0x39]]) == 0xEF53, "no ext4 superblock (bad magic)");
    let block_size = 1024u64 << u32_at(0x18);
    let incompat = u32_at(0x60);
    let hi = if incompat & 0x80 != 0 { u64::from(u32_at(0x150)) } else { 0 };
    Ok((block_size, (hi << 32) | u64::from(u32_at(0x4))))
}

/// Reads the ext4 superblock of a device or image (offset 1024).
pub fn read_ext4_geometry(dev: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb).with_context(|| format!("reading the ext4 superblock of {}", dev.display()))?;
    ext4_geometry(&sb).with_context(|| format!("reading the ext4 superblock of {}", dev.display()))
}

/// Blocks the filesystem should have to fill a partition of `part_bytes`, if that is more
/// than it has (with at least 1 MiB to gain, so rounding never triggers a resize).
pub fn ext4_target_blocks(block_size: u64, blocks: u64, part_bytes: u64) -> Option<u64> {
    let target = part_bytes / block_size;
    (target > blocks && (target - blocks) * block_size >= ALIGN_BYTES).then_some(target)
}

/// Online-grows the ext4 filesystem mounted at `mountpoint` to `blocks`.
pub fn resize_ext4(mountpoint: &Path, blocks: u64) -> Result<()> {
    let dir = File::open(mountpoint).with_context(|| format!("opening {}", mountpoint.display()))?;
    ioctl::resize_ext4(dir.as_fd(), blocks).with_context(|| {
        format!("resizing ext4 at {} to {blocks} blocks (EXT4_IOC_RESIZE_FS)", mountpoint.display())
    })?;
    Ok(())
}

/// First-boot GPT growth on the boot disk: returns the growth (if any) after the kernel knows.
pub fn grow_boot_disk(dev_root: &Path, disk: &BootDisk) -> Result<Option<GptGrowth>> {
    let path: PathBuf = dev_root.join(&disk.disk);
    let mut f =
        OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    let Some(g) = grow_gpt(&mut f).with_context(|| format!("growing the GPT on {}", path.display()))? else {
        return Ok(None);
    };
    let how = inform_kernel(&f, &g)?;
    crate::event!(
        "gpt grown",
        disk = disk.disk,
        partition = g.partn,
        from = g.old_bytes(),
        to = g.new_bytes(),
        via = how
    );
    Ok(Some(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use planet_gpt::{types, Guid, Partition};
    use std::os::unix::fs::symlink;

    fn fake_sysfs(root: &Path, parts: &[(&str, &str, u32, &str)]) {
        // parts: (disk, name, partn, label)
        for (disk, name, n, label) in parts {
            let dev = root.join(format!("devices/pci0000:00/virtio/block/{disk}"));
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("uevent"), format!("MAJOR=254\nMINOR=0\nDEVNAME={disk}\nDEVTYPE=disk\n")).unwrap();
            let p = dev.join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("uevent"),
                format!("MAJOR=254\nMINOR={n}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::fs::write(p.join("size"), "4096\n").unwrap();
            let class = root.join("class/block");
            std::fs::create_dir_all(&class).unwrap();
            let _ = symlink(&dev, class.join(disk));
            symlink(&p, class.join(name)).unwrap();
        }
    }

    #[test]
    fn partitions_are_found_by_label() {
        let tmp = tempfile::tempdir().unwrap();
        fake_sysfs(
            tmp.path(),
            &[
                ("vda", "vda1", 1, "esp"),
                ("vda", "vda2", 2, "planet-a"),
                ("vda", "vda3", 3, "planet-b"),
                ("vda", "vda4", 4, "planet-state"),
                ("vdb", "vdb1", 1, "data"),
            ],
        );
        let devs = scan(tmp.path()).unwrap();
        assert_eq!(devs.len(), 7);
        let d = find_boot_disk(&devs, "planet-a", None, tmp.path()).unwrap();
        assert_eq!(d.disk, "vda");
        assert_eq!(d.slot.name, "vda2");
        assert_eq!(d.state.name, "vda4");
        assert_eq!(d.state.partn, Some(4));
        assert_eq!(d.state.size_bytes(), 4096 * 512);
        assert_eq!(find_boot_disk(&devs, "planet-b", None, tmp.path()).unwrap().slot.name, "vda3");
        let err = find_boot_disk(&devs, "planet-c", None, tmp.path()).unwrap_err().to_string();
        assert!(err.contains("planet-c"), "{err}");
    }

    #[test]
    fn two_boot_disks_are_ambiguous() {
        let tmp = tempfile::tempdir().unwrap();
        fake_sysfs(
            tmp.path(),
            &[
                ("vda", "vda2", 2, "planet-a"),
                ("vda", "vda4", 4, "planet-state"),
                ("sda", "sda2", 2, "planet-a"),
                ("sda", "sda4", 4, "planet-state"),
            ],
        );
        let err = find_boot_disk(&scan(tmp.path()).unwrap(), "planet-a", None, tmp.path()).unwrap_err().to_string();
        assert!(err.contains("several disks"), "{err}");
    }

    #[test]
    fn the_pinned_disk_guid_picks_the_boot_disk_among_planet_disks() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev) = (tmp.path().join("sys"), tmp.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        // sda (an installer stick, enumerated first) and vda (this machine's disk) both carry
        // the planet labels; only the GPT disk GUID tells them apart.
        fake_sysfs(
            &sys,
            &[
                ("sda", "sda2", 2, "planet-a"),
                ("sda", "sda4", 4, "planet-state"),
                ("vda", "vda2", 2, "planet-a"),
                ("vda", "vda4", 4, "planet-state"),
            ],
        );
        let (mine, stick) = (Guid::from_random_bytes([0xaa; 16]), Guid::from_random_bytes([0x55; 16]));
        image_with_guid(&dev.join("vda"), 32768, 32768, mine);
        image_with_guid(&dev.join("sda"), 32768, 32768, stick);
        let devs = scan(&sys).unwrap();
        let d = find_boot_disk(&devs, "planet-a", Some(mine), &dev).unwrap();
        assert_eq!((d.disk.as_str(), d.slot.name.as_str(), d.state.name.as_str()), ("vda", "vda2", "vda4"));
        assert_eq!(find_boot_disk(&devs, "planet-a", Some(stick), &dev).unwrap().disk, "sda");
        // A pin no disk carries: an error naming what was found, never another disk.
        let other = Guid::from_random_bytes([0x11; 16]);
        let err = find_boot_disk(&devs, "planet-a", Some(other), &dev).unwrap_err().to_string();
        assert!(err.contains(&other.to_string()) && err.contains(&format!("vda ({mine})")), "{err}");
        // Copies of one image share the GUID: still ambiguous, as without a pin.
        image_with_guid(&dev.join("sda"), 32768, 32768, mine);
        let err = find_boot_disk(&devs, "planet-a", Some(mine), &dev).unwrap_err().to_string();
        assert!(err.contains("several disks") && err.contains("same disk GUID"), "{err}");
        // Old images (no pin): the label rule of before.
        let err = find_boot_disk(&devs, "planet-a", None, &dev).unwrap_err().to_string();
        assert!(err.contains("several disks"), "{err}");
    }

    #[test]
    fn waiting_times_out_with_what_was_seen() {
        let tmp = tempfile::tempdir().unwrap();
        fake_sysfs(tmp.path(), &[("vda", "vda1", 1, "esp")]);
        let mut rounds = 0;
        let err =
            wait_for_boot_disk(tmp.path(), tmp.path(), "planet-a", None, Duration::from_millis(300), || rounds += 1)
                .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("waiting 0s for the boot disk (block devices seen: vda vda1(esp))"), "{text}");
        assert!(rounds >= 1);
    }

    fn image(path: &Path, small_sectors: u64, big_sectors: u64) {
        image_with_guid(path, small_sectors, big_sectors, Guid::from_random_bytes([1; 16]))
    }

    fn image_with_guid(path: &Path, small_sectors: u64, big_sectors: u64, guid: Guid) {
        let mut g = Gpt::new(guid, 512, small_sectors).unwrap();
        let mut add = |name: &str, first: u64, last: u64| {
            g.partitions.push(Partition {
                type_guid: types::parse("linux").unwrap(),
                unique_guid: Guid::from_random_bytes([name.len() as u8; 16]),
                first_lba: first,
                last_lba: last,
                attributes: 0,
                name: name.into(),
            })
        };
        add("esp", 2048, 4095);
        add("planet-a", 4096, 8191);
        add("planet-b", 8192, 12287);
        add(STATE_LABEL, 12288, small_sectors - 2048 - 1);
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
        f.set_len(small_sectors * 512).unwrap();
        g.write_to(&mut f).unwrap();
        f.set_len(big_sectors * 512).unwrap();
    }

    #[test]
    fn gpt_growth_fills_the_disk_once() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("disk.img");
        let (small, big) = (32768u64, 32768 * 8 + 77);
        image(&p, small, big);
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let g = grow_gpt(&mut f).unwrap().expect("first boot grows");
        assert_eq!(g.partn, 4);
        assert_eq!(g.old_first_last, (12288, small - 2048 - 1));
        assert_eq!((g.new_last + 1) % 2048, 0);
        let read = Gpt::read_from(&mut f, 512, big).unwrap();
        assert_eq!(read.backup_header_lba(), big - 1);
        assert_eq!(read.find(STATE_LABEL).unwrap().last_lba, g.new_last);
        assert!(read.last_usable_lba - g.new_last < 2048);
        assert_eq!(g.new_bytes(), (g.new_last + 1 - 12288) * 512);
        assert!(grow_gpt(&mut f).unwrap().is_none(), "later boots leave it alone");
        let mut mbr = [0u8; 512];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut mbr).unwrap();
        assert_eq!(u32::from_le_bytes(mbr[458..462].try_into().unwrap()) as u64, big - 1);
        assert_eq!(mbr[450], 0xEE);
    }

    #[test]
    fn a_table_with_a_reversed_partition_is_refused_not_grown() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("disk.img");
        image(&p, 32768, 65536);
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        // A valid-CRC table whose planet-state ends before it starts (a hostile or broken disk);
        // growth would report its old size as (last + 1 - first), an overflow.
        let mut g = Gpt::read_from(&mut f, 512, 65536).unwrap();
        let state = g.partitions.iter_mut().find(|p| p.name == STATE_LABEL).unwrap();
        state.first_lba = state.last_lba + 100;
        let entries = g.entry_array();
        f.seek(SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &g.header(true, crc32fast_hash(&entries))).unwrap();
        std::io::Write::write_all(&mut f, &entries).unwrap();
        assert!(Gpt::read_from(&mut f, 512, 65536).is_ok());
        let err = format!("{:#}", grow_gpt(&mut f).unwrap_err());
        assert!(err.contains("outside the usable area"), "{err}");
    }

    #[test]
    fn growth_interrupted_before_the_primary_header_is_completed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("disk.img");
        let (small, big) = (32768u64, 32768 * 4);
        image(&p, small, big);
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        // Simulate power loss inside write_grown: new backup and new primary entries are on
        // disk, the primary header still describes the old table (its entry CRC no longer fits).
        let mut grown = Gpt::read_from(&mut f, 512, big).unwrap();
        assert!(grown.grow_to(big, Some(STATE_LABEL), 2048).unwrap());
        let entries = grown.entry_array();
        grown.write_backup(&mut f, &entries, crc32fast_hash(&entries)).unwrap();
        f.seek(SeekFrom::Start(2 * 512)).unwrap();
        std::io::Write::write_all(&mut f, &entries).unwrap();
        assert!(Gpt::read_from(&mut f, 512, big).is_err(), "the primary is now inconsistent");

        let g = grow_gpt(&mut f).unwrap().expect("the interrupted growth is completed");
        assert_eq!(g.new_last, grown.find(STATE_LABEL).unwrap().last_lba);
        let read = Gpt::read_from(&mut f, 512, big).unwrap();
        assert_eq!(read.partitions, grown.partitions);
        assert_eq!(read.backup_header_lba(), big - 1);
        assert!(grow_gpt(&mut f).unwrap().is_none());
    }

    #[test]
    fn a_lost_primary_is_restored_from_the_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev, img) = partitionless_disk(tmp.path());
        image(&img, 32768, 32768);
        let mut f = OpenOptions::new().read(true).write(true).open(&img).unwrap();
        let good = Gpt::read_from(&mut f, 512, 32768).unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 512]).unwrap();
        assert!(Gpt::read_from(&mut f, 512, 32768).is_err());
        assert_eq!(repair_interrupted_growth(&sys, &dev, Some(Guid::from_random_bytes([9; 16]))), 0, "not our GUID");
        assert_eq!(repair_interrupted_growth(&sys, &dev, Some(good.disk_guid)), 1);
        assert_eq!(Gpt::read_from(&mut f, 512, 32768).unwrap(), good);
        assert_eq!(repair_interrupted_growth(&sys, &dev, None), 0, "a valid primary is not rewritten");
        // Without a pin (old images), the label rule still repairs.
        f.seek(SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 512]).unwrap();
        assert_eq!(repair_interrupted_growth(&sys, &dev, None), 1);
        assert_eq!(Gpt::read_from(&mut f, 512, 32768).unwrap(), good);
    }

    /// One whole disk without partitions in sysfs, `vdb`, as the kernel leaves a disk whose
    /// table it could not read; its content is the file `img`.
    fn partitionless_disk(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        let d = sys.join("devices/virtio/block/vdb");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("uevent"), "DEVNAME=vdb\nDEVTYPE=disk\n").unwrap();
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        symlink(&d, sys.join("class/block/vdb")).unwrap();
        let img = dev.join("vdb");
        (sys, dev, img)
    }

    #[test]
    fn a_filesystem_laid_over_an_old_planet_disk_is_never_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev, img) = partitionless_disk(tmp.path());
        image(&img, 32768, 32768);
        let guid = Gpt::read_from(&mut File::open(&img).unwrap(), 512, 32768).unwrap().disk_guid;
        // A whole-disk ext4 made over it: LBA 1 is zero, the superblock (magic 0xEF53 at
        // 1024 + 0x38) sits where the primary entries were; the old backup GPT survives.
        let mut f = OpenOptions::new().read(true).write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 1536]).unwrap();
        f.seek(SeekFrom::Start(1024 + 0x38)).unwrap();
        std::io::Write::write_all(&mut f, &0xEF53u16.to_le_bytes()).unwrap();
        let before = std::fs::read(&img).unwrap();
        for pin in [None, Some(guid)] {
            assert_eq!(repair_interrupted_growth(&sys, &dev, pin), 0, "pin {pin:?}");
            let after = std::fs::read(&img).unwrap();
            assert_eq!(after[1024..2048], before[1024..2048], "the superblock was overwritten (pin {pin:?})");
            assert!(after == before, "the disk was written (pin {pin:?})");
        }
    }

    #[test]
    fn a_disk_without_both_slots_is_not_repaired_without_a_pin() {
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev, img) = partitionless_disk(tmp.path());
        // A backup GPT naming only planet-state (not an image this tool makes).
        let mut g = Gpt::new(Guid::from_random_bytes([3; 16]), 512, 32768).unwrap();
        g.partitions.push(Partition {
            type_guid: types::parse("linux").unwrap(),
            unique_guid: Guid::from_random_bytes([4; 16]),
            first_lba: 2048,
            last_lba: 30000,
            attributes: 0,
            name: STATE_LABEL.into(),
        });
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&img).unwrap();
        f.set_len(32768 * 512).unwrap();
        g.write_to(&mut f).unwrap();
        f.seek(SeekFrom::Start(512)).unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 512]).unwrap();
        assert_eq!(repair_interrupted_growth(&sys, &dev, None), 0);
        assert_eq!(repair_interrupted_growth(&sys, &dev, Some(g.disk_guid)), 1, "the pin names it");
    }

    /// CRC-32 (IEEE), as the GPT uses, without another dependency.
    fn crc32fast_hash(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in data {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn ext4_superblock_is_parsed() {
        let mut sb = vec![0u8; 1024];
        sb[0x4..0x8].copy_from_slice(&5000u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x38..0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(ext4_geometry(&sb).unwrap(), (4096, 5000));
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext4_geometry(&sb).unwrap(), (4096, (1 << 32) + 5000));
        sb[0x38] = 0;
        assert!(ext4_geometry(&sb).is_err());
    }

    #[test]
    fn ext4_target_needs_real_growth() {
        assert_eq!(ext4_target_blocks(4096, 1000, 1000 * 4096), None);
        assert_eq!(ext4_target_blocks(4096, 1000, 1000 * 4096 + 4096 * 10), None);
        assert_eq!(ext4_target_blocks(4096, 1000, 4096 * 2000), Some(2000));
    }
}
