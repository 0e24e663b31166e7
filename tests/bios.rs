//! Legacy BIOS boot (`build --bios`): the same image boots under QEMU's SeaBIOS through GRUB
//! (boot.img in the MBR, core.img in the BIOS boot partition, grub.cfg on the ESP) and under
//! OVMF through systemd-boot. Checked with sgdisk, sfdisk, fsck.vfat and mtools.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

fn bios_image(s: &Scratch, name: &str) -> PathBuf {
    let image = s.path(name);
    build("raw", &fixture("demo.tar"), &image, &["--bios", "--cmdline", "planet.role=dev"]);
    image
}

fn mbr(image: &Path) -> Vec<u8> {
    let mut b = std::fs::read(image).unwrap();
    b.truncate(512);
    b
}

#[test]
fn bios_image_boots_under_seabios_and_under_ovmf() {
    let s = Scratch::new("bios-boot");
    let image = bios_image(&s, "bios.raw");
    ok(Command::new("sgdisk").arg("-v").arg(&image));
    let (_, parts) = sfdisk(&image);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["esp", "bios-boot", "planet-a", "planet-b", "planet-state"]);
    let bios = &parts[1];
    assert_eq!(bios.type_guid, BIOS_BOOT_TYPE);
    assert_eq!(parts[0].start, 2048, "the ESP keeps its place");

    // GRUB's boot.img in the boot code area, pointing at core.img; the protective MBR kept.
    let m = mbr(&image);
    assert_eq!(u64::from_le_bytes(m[0x5c..0x64].try_into().unwrap()), bios.start);
    assert_eq!(m[450], 0xEE, "protective partition type");
    assert_eq!(&m[510..], &[0x55, 0xAA]);
    let core = std::fs::read(&image).unwrap()[(bios.start * 512) as usize..][..512].to_vec();
    assert_eq!(u64::from_le_bytes(core[500..508].try_into().unwrap()), bios.start + 1, "diskboot block list");

    let esp = s.path("esp.img");
    extract_partition(&image, "esp", &esp);
    ok(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let grub = stdout(Command::new("mtype").arg("-i").arg(&esp).arg("::/boot/grub/grub.cfg"));
    assert!(grub.contains("linux /planet-a/vmlinuz console=ttyS0 planet.slot=a planet.role=dev"), "{grub}");
    assert!(grub.contains("initrd /planet-a/initramfs.img"), "{grub}");
    let entry = stdout(Command::new("mtype").arg("-i").arg(&esp).arg("::/loader/entries/planet-0001-a.conf"));
    assert!(entry.contains("options console=ttyS0 planet.slot=a planet.role=dev"), "{entry}");

    let manifest = std::fs::read_to_string(s.path("bios.raw.manifest.json")).unwrap();
    assert!(manifest.contains("\"grub-pc-bin\""), "{manifest}");
    assert!(manifest.contains("\"bios-boot\""), "{manifest}");
    let report = stdout(planet_image().arg("inspect").arg(&image));
    assert!(report.contains("verify:     ok"), "{report}");

    // SeaBIOS (no pflash), no --cmdline: MBR → GRUB → the image's own kernel and options.
    let mut guest = Guest::start(&image, &s, &["--firmware", "bios", "--snapshot"]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("Booting `Planet (slot a)'"), "not booted by GRUB:\n{console}");
    assert!(console.contains("planet.slot=a planet.role=dev"), "{console}");
    drop(guest);

    // The same image, on a disk twice its size, under OVMF: systemd-boot as without --bios,
    // and the first boot grows planet-state to the end of the disk.
    let disk = s.path("disk.raw");
    std::fs::copy(&image, &disk).unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(size * 2).unwrap();
    let mut guest = Guest::start(&disk, &s, &[]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(!console.contains("Booting `Planet"), "UEFI went through GRUB:\n{console}");
    assert!(console.contains("planet.slot=a planet.role=dev"), "{console}");
    assert!(console.contains("planet-init: state grown"), "{console}");
    drop(guest);

    // The grown disk still boots on BIOS: growth left GRUB's boot code in the MBR.
    assert_eq!(&mbr(&disk)[..440], &m[..440]);
    ok(Command::new("sgdisk").arg("-v").arg(&disk));
    let mut guest = Guest::start(&disk, &s, &["--firmware", "bios"]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("Booting `Planet (slot a)'"), "not booted by GRUB:\n{console}");
}

#[test]
fn bios_images_are_reproducible_and_uefi_images_unchanged() {
    let s = Scratch::new("bios-repro");
    let one = bios_image(&s, "one.raw");
    let two = bios_image(&s, "two.raw");
    assert!(std::fs::read(&one).unwrap() == std::fs::read(&two).unwrap(), "two --bios builds differ");

    // Without --bios: no BIOS boot partition, no boot code, the same four partitions.
    let uefi = s.path("uefi.raw");
    build("raw", &fixture("demo.tar"), &uefi, &["--cmdline", "planet.role=dev"]);
    let (_, parts) = sfdisk(&uefi);
    assert!(parts.iter().all(|p| p.type_guid != BIOS_BOOT_TYPE));
    assert_eq!(parts.len(), 4);
    assert!(mbr(&uefi)[..440].iter().all(|b| *b == 0), "boot code without --bios");
    let manifest = std::fs::read_to_string(s.path("uefi.raw.manifest.json")).unwrap();
    assert!(!manifest.contains("grub"), "{manifest}");
}

#[test]
fn bios_refuses_4kn_and_a_missing_grub_mkimage_clearly() {
    let s = Scratch::new("bios-errors");
    let out = planet_image()
        .args(["build", "--target", "raw", "--bios", "--sector-size", "4096", "--rootfs"])
        .arg(fixture("demo.tar"))
        .arg("-o")
        .arg(s.path("x.raw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("512-byte sectors"), "{err}");

    let out = planet_image()
        .args(["build", "--target", "raw", "--bios", "--rootfs"])
        .arg(fixture("demo.tar"))
        .arg("-o")
        .arg(s.path("y.raw"))
        .env("PATH", s.path("empty-path"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grub-mkimage") && err.contains("grub-common"), "{err}");
    assert!(!s.path("y.raw").exists());
}
