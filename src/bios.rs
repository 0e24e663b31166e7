//! Legacy BIOS boot (`build --bios`): GRUB for PCs (i386-pc) beside systemd-boot.
//!
//! The BIOS runs the protective MBR's boot code — GRUB's `boot.img` (the first 440 bytes; the
//! partition table and signature stay) — which loads the first sector of `core.img` from the
//! LBA patched into it. That sector (`diskboot.img`) loads the rest of `core.img` by the block
//! list at its end. `core.img` lives raw in a BIOS boot partition (GPT type
//! 21686148-6449-6E6F-744E-656564454649) right after the ESP; its embedded config finds the ESP
//! by its FAT volume serial and reads `/boot/grub/grub.cfg` there, which boots the same slot
//! files and options as the systemd-boot entry. UEFI firmware never looks at any of it.
//!
//! `grub-mkimage` (Debian `grub-common`) makes `core.img` from the modules of the fetched
//! `grub-pc-bin` package; the patching that `grub-bios-setup` would do on a real disk is done
//! here, on the image, with the offsets of GRUB's `include/grub/i386/pc/boot.h`.

use crate::deb;
use crate::esp::SlotBoot;
use crate::util::command::{require_tool, CommandExt};
use anyhow::{bail, ensure, Context, Result};
use planet_config::contract;
use std::path::Path;

/// Where the i386-pc images and modules live in `grub-pc-bin`.
pub const GRUB_PC_DIR: &str = "usr/lib/grub/i386-pc/";
/// The GRUB configuration on the ESP.
pub const GRUB_CFG_PATH: &str = "boot/grub/grub.cfg";
/// Modules built into core.img: disk access, the GPT and FAT, the menu, Linux loading, the
/// ESP search and the serial console.
pub const MODULES: &[&str] =
    &["biosdisk", "part_gpt", "fat", "normal", "linux", "echo", "search", "search_fs_uuid", "serial", "terminal"];

const SECTOR: usize = 512;
/// Boot code area of the MBR; the disk signature and partition table follow.
pub const MBR_CODE_BYTES: usize = 440;
/// boot.img: the BIOS parameter block GRUB skips (kept from the disk, as grub-bios-setup does).
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
/// boot.img: the LBA of core.img's first sector (u64 LE).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: boot drive, 0xff = the drive the BIOS booted from (DL).
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a `jmp` over the check that forces DL to 0x80 for BIOSes that pass a bogus drive;
/// grub-bios-setup replaces it with two NOPs for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// diskboot.img: the first block list entry sits at the end of its sector: start (u64 LE),
/// length in sectors (u16 LE), load segment (u16 LE).
const BLOCKLIST: usize = SECTOR - 12;
/// Where diskboot.img loads the rest of core.img: GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20.
const CORE_SEGMENT: u16 = 0x820;

/// The two pieces installed on the disk.
pub struct BiosBoot {
    /// boot.img, patched: written over the protective MBR's first 440 bytes.
    pub boot_code: Vec<u8>,
    /// core.img, patched for its place: written at the start of the BIOS boot partition.
    pub core: Vec<u8>,
}

/// GRUB's way of showing a FAT volume serial, which `search --fs-uuid` matches.
pub fn fat_uuid(volume_id: u32) -> String {
    format!("{:04x}-{:04x}", volume_id >> 16, volume_id & 0xffff)
}

/// core.img's embedded config: find the ESP by its serial, read its grub.cfg.
pub fn early_config(esp_volume_id: u32) -> String {
    format!("search --no-floppy --fs-uuid --set=root {}\nset prefix=($root)/boot/grub\n", fat_uuid(esp_volume_id))
}

/// `/boot/grub/grub.cfg` on the ESP: one entry per populated slot, with the BLS entry's files and
/// options, the console on the serial port the kernel uses.
pub fn grub_cfg(slots: &[SlotBoot<'_>]) -> String {
    let speed = slots.first().and_then(|s| serial_speed(&s.options)).unwrap_or(115_200);
    let mut cfg = format!(
        "# Legacy BIOS boot (planet-image build --bios). UEFI boots loader/entries/ with systemd-boot;\n\
         # keep both in step.\n\
         serial --unit=0 --speed={speed}\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         set default=planet-{}\n",
        slots.first().map(|s| s.slot).unwrap_or('a')
    );
    for s in slots {
        let (linux, initrd) = (contract::kernel_path(s.slot), contract::initramfs_path(s.slot));
        cfg.push_str(&format!(
            "\nmenuentry '{}' --id planet-{} {{\n\tset gfxpayload=text\n\tlinux /{linux} {}\n\tinitrd /{initrd}\n}}\n",
            s.title, s.slot, s.options
        ));
    }
    cfg
}

/// The speed of `console=ttyS0,SPEED…` on a kernel command line.
fn serial_speed(options: &str) -> Option<u32> {
    options.split_whitespace().filter_map(|a| a.strip_prefix("console=ttyS0,")).next_back().and_then(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Makes boot.img and core.img from the grub-pc-bin package for a BIOS boot partition starting at
/// `core_lba` and `max_bytes` long, with the ESP found by `esp_volume_id`. `work` is a scratch
/// directory.
pub fn build(grub_deb: &Path, work: &Path, core_lba: u64, max_bytes: u64, esp_volume_id: u32) -> Result<BiosBoot> {
    require_tool("grub-mkimage", "grub-common")
        .context("building the legacy BIOS boot path (--bios) needs grub-mkimage")?;
    let dir = work.join("grub-i386-pc");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut boot_img = None;
    deb::for_each_data_entry(grub_deb, |path, _, data| {
        if let Some(name) = path.strip_prefix(GRUB_PC_DIR).filter(|n| !n.is_empty() && !n.contains('/')) {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            if name == "boot.img" {
                boot_img = Some(bytes.clone());
            }
            std::fs::write(dir.join(name), &bytes).with_context(|| format!("extracting {name}"))?;
        }
        Ok(())
    })
    .with_context(|| format!("reading {}", grub_deb.display()))?;
    let boot_img =
        boot_img.with_context(|| format!("{} has no {GRUB_PC_DIR}boot.img: is it grub-pc-bin?", grub_deb.display()))?;

    let early = work.join("grub-early.cfg");
    std::fs::write(&early, early_config(esp_volume_id))?;
    let core_path = work.join("core.img");
    std::process::Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "/boot/grub"])
        .arg("-d")
        .arg(&dir)
        .arg("-c")
        .arg(&early)
        .arg("-o")
        .arg(&core_path)
        .args(MODULES)
        .run_checked()
        .context("making GRUB's core.img")?;
    let mut core = std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    if core.len() as u64 > max_bytes {
        bail!(
            "GRUB's core.img ({} KiB) does not fit the BIOS boot partition ({} KiB): raise bios.size_mib",
            core.len().div_ceil(1024),
            max_bytes / 1024
        );
    }
    patch_core(&mut core, core_lba)?;
    Ok(BiosBoot { boot_code: patch_boot(&boot_img, core_lba)?, core })
}

/// boot.img with core.img's first LBA, reading from the boot drive, the drive check enabled;
/// the first 440 bytes, BPB area zero (a protective MBR has none).
pub fn patch_boot(boot_img: &[u8], core_lba: u64) -> Result<Vec<u8>> {
    ensure!(boot_img.len() == SECTOR, "boot.img is {} bytes, not {SECTOR}", boot_img.len());
    ensure!(boot_img[510..] == [0x55, 0xAA], "boot.img has no boot signature");
    ensure!(
        boot_img[DRIVE_CHECK] == 0xEB || boot_img[DRIVE_CHECK..DRIVE_CHECK + 2] == [0x90, 0x90],
        "boot.img does not have GRUB 2's layout (no jmp at {DRIVE_CHECK:#x})"
    );
    let mut b = boot_img[..MBR_CODE_BYTES].to_vec();
    b[BPB_START..BPB_END].fill(0);
    b[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    b[BOOT_DRIVE] = 0xFF;
    b[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(b)
}

/// core.img's first block list: the sectors after diskboot.img, contiguous on the disk.
pub fn patch_core(core: &mut [u8], core_lba: u64) -> Result<()> {
    ensure!(core.len() > SECTOR, "core.img is only {} bytes", core.len());
    let seg = u16::from_le_bytes([core[BLOCKLIST + 10], core[BLOCKLIST + 11]]);
    ensure!(seg == CORE_SEGMENT, "core.img's first sector is not GRUB's diskboot.img (segment {seg:#x})");
    // The entry before it (growing down) must end the list.
    ensure!(core[BLOCKLIST - 12..BLOCKLIST].iter().all(|b| *b == 0), "core.img's block list is not empty");
    let rest = core.len().div_ceil(SECTOR) - 1;
    let len = u16::try_from(rest).context("core.img is too large for one block list entry")?;
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Writes the boot code over the first 440 bytes of the disk, keeping the protective MBR's
/// disk signature, partition table and boot signature.
pub fn install_boot_code(raw: &Path, boot_code: &[u8]) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    ensure!(boot_code.len() == MBR_CODE_BYTES, "boot code is {} bytes", boot_code.len());
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(raw)?;
    let mut mbr = [0u8; SECTOR];
    f.read_exact(&mut mbr)?;
    ensure!(planet_gpt::is_protective_mbr(&mbr), "{} has no protective MBR", raw.display());
    let mut code = boot_code.to_vec();
    code[BPB_START..BPB_END].copy_from_slice(&mbr[BPB_START..BPB_END]);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&code)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0u8; SECTOR];
        b[0] = 0xEB;
        b[KERNEL_SECTOR] = 1;
        b[BOOT_DRIVE] = 0xFF;
        b[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0xEB, 0x05]);
        b[0x100] = 0xCD;
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn boot_img_gets_the_core_lba_and_the_drive_check() {
        let b = patch_boot(&fake_boot_img(), 4096).unwrap();
        assert_eq!(b.len(), 440);
        assert_eq!(&b[0x5c..0x64], &4096u64.to_le_bytes());
        assert_eq!(b[0x64], 0xFF);
        assert_eq!(&b[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(b[0x100], 0xCD);
        assert!(patch_boot(&[0u8; 512], 1).is_err());
    }

    #[test]
    fn core_block_list_covers_the_rest_of_core() {
        let mut core = vec![0u8; 512 * 10 + 100];
        core[510..512].copy_from_slice(&0x820u16.to_le_bytes());
        core[500] = 2;
        patch_core(&mut core, 4096).unwrap();
        assert_eq!(&core[500..508], &4097u64.to_le_bytes());
        assert_eq!(&core[508..510], &10u16.to_le_bytes());
        assert_eq!(&core[510..512], &0x820u16.to_le_bytes());
        core[511] = 0;
        assert!(patch_core(&mut core, 1).is_err());
    }

    #[test]
    fn grub_cfg_boots_the_slot_with_the_entry_options() {
        let slots = [SlotBoot {
            slot: 'a',
            title: "Planet (slot a)",
            version: "v",
            vmlinuz: b"k",
            initramfs: b"i",
            options: "console=ttyS0,38400n8 planet.slot=a".into(),
        }];
        let cfg = grub_cfg(&slots);
        assert!(cfg.contains("serial --unit=0 --speed=38400\n"), "{cfg}");
        assert!(cfg.contains("\tlinux /planet-a/vmlinuz console=ttyS0,38400n8 planet.slot=a\n"), "{cfg}");
        assert!(cfg.contains("\tinitrd /planet-a/initramfs.img\n"), "{cfg}");
        assert!(cfg.contains("set default=planet-a\n"));
        assert_eq!(serial_speed("console=ttyS0"), None);
        assert_eq!(fat_uuid(0x1234_abcd), "1234-abcd");
        assert!(early_config(0x1234_abcd).contains("--set=root 1234-abcd\n"));
    }
}
