//! Platform variants booted for real: the bare-metal profile dd'd onto a larger disk behind
//! NVMe and AHCI controllers (with an Ironic-style config drive), and the 4Kn variant.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

/// `dd` the image onto a disk file four times its size, as an operator writes it to a server.
fn dd_onto_larger_disk(image: &Path, disk: &Path) {
    let size = std::fs::metadata(image).unwrap().len();
    std::fs::File::create(disk).unwrap().set_len(size * 4).unwrap();
    ok(Command::new("dd").arg(format!("if={}", image.display())).arg(format!("of={}", disk.display())).args([
        "bs=1M",
        "conv=sparse,notrunc",
        "status=none",
    ]));
}

fn metal_image(s: &Scratch) -> PathBuf {
    let image = s.path("metal.raw");
    build("raw", &fixture("demo.tar"), &image, &["--profile", "metal", "--cmdline", "planet.role=dev"]);
    image
}

#[test]
fn metal_image_on_a_larger_nvme_disk_grows_and_starts() {
    let s = Scratch::new("metal-nvme");
    let image = metal_image(&s);
    let manifest = std::fs::read_to_string(s.path("metal.raw.manifest.json")).unwrap();
    assert!(manifest.contains("linux-image-") && manifest.contains("-amd64\""), "{manifest}");
    let disk = s.path("nvme-disk.raw");
    dd_onto_larger_disk(&image, &disk);
    // No --cmdline: firmware, systemd-boot and the image's own entry, as on the server.
    let mut guest = Guest::start(&disk, &s, &["--disk-bus", "nvme"]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("disk found disk=nvme0n1"), "{console}");
    assert!(console.contains("planet-init: state grown"), "{console}");
    guest.wait_for("demo-init: registered", BOOT);
    guest.monitor("system_powerdown");
    assert!(guest.wait_exit(Duration::from_secs(120)).is_some(), "no power-off:\n{}", guest.console());
    let (ss, parts) = sfdisk(&disk);
    let state = parts.iter().find(|p| p.name == "planet-state").unwrap();
    let disk_sectors = std::fs::metadata(&disk).unwrap().len() / ss;
    assert!(disk_sectors - (state.start + state.size) < (2 << 20) / ss, "state does not reach the disk's end");
    ok(Command::new("sgdisk").arg("-v").arg(&disk));
}

#[test]
fn metal_image_on_ahci_takes_the_static_address_of_its_config_drive() {
    let s = Scratch::new("metal-ahci");
    let image = metal_image(&s);
    let disk = s.path("ahci-disk.raw");
    dd_onto_larger_disk(&image, &disk);
    // Ironic writes the image, then a config drive partition at the end of the disk.
    ok(planet_image()
        .args(["seed", "--format", "config-2", "--partition"])
        .arg(&disk)
        .args(["--role", "dev", "--hostname", "metal-1", "--address", "10.0.2.31/24", "--gateway", "10.0.2.2", "-o"])
        .arg(s.path("unused.img")));
    let mut guest = Guest::start(&disk, &s, &["--disk-bus", "ahci"]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("disk found disk=sda"), "{console}");
    assert!(console.contains("address=10.0.2.31/24 gateway=10.0.2.2"), "{console}");
    assert!(console.contains("source=configdrive"), "{console}");
    assert!(console.contains("planet-init: state grown"), "{console}");
}

#[test]
fn four_k_native_variant_boots_through_the_firmware() {
    let s = Scratch::new("4kn");
    let image = s.path("demo-4k.raw");
    build("raw", &fixture("demo.tar"), &image, &["--sector-size", "4096", "--cmdline", "planet.role=dev"]);
    let manifest = std::fs::read_to_string(s.path("demo-4k.raw.manifest.json")).unwrap();
    assert!(manifest.contains("\"sector_size\": 4096"), "{manifest}");
    let report = stdout(planet_image().arg("inspect").arg(&image));
    assert!(report.contains("sector size: 4096") && report.contains("verify:     ok"), "{report}");
    let mut guest = Guest::start(&image, &s, &["--snapshot", "--disk-bus", "nvme", "--block-size", "4096"]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("disk found disk=nvme0n1"), "{console}");
    guest.wait_for("demo-init: registered", BOOT);
}
