//! Booting built images for real: QEMU + OVMF (TCG when KVM does not work), through
//! systemd-boot, to planet-init.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn image_boots_through_uefi_to_planet_init() {
    let s = Scratch::new("boot-started");
    let image = s.path("demo.qcow2");
    build("qcow2", &fixture("demo.tar"), &image, &[]);
    // No --cmdline: the ESP's own entry is booted by systemd-boot, as on a real machine.
    let mut guest = Guest::start(&image, &s, &["--timeout", "240"]);
    let console = guest.wait_for("planet-init: started", Duration::from_secs(180));
    let first = console.lines().find(|l| l.starts_with("planet-init:")).unwrap();
    assert!(first.starts_with("planet-init: started"), "first host line is {first:?}");
}

#[test]
fn another_planet_disk_attached_is_ignored_by_disk_guid() {
    let s = Scratch::new("boot-two-disks");
    let image = s.path("demo.qcow2");
    build("qcow2", &fixture("demo.tar"), &image, &["--cmdline", "planet.role=dev"]);
    let manifest = std::fs::read_to_string(s.path("demo.qcow2.manifest.json")).unwrap();
    let guid = manifest.split("\"disk_guid\": \"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    assert!(manifest.contains(&format!("planet.disk_guid={guid}")), "{manifest}");
    // Another build (so another disk GUID) attached as a second disk, as an installer stick
    // left in or another node's volume: before the pin, "several disks" powered the machine off.
    let other = s.path("other.raw");
    build("raw", &fixture("demo.tar"), &other, &["--cmdline", "planet.hostname=other"]);
    let mut guest = Guest::start(&image, &s, &["--timeout", "300", "--seed", other.to_str().unwrap()]);
    let console = guest.wait_for("planet-init: root mounted", Duration::from_secs(280));
    let ignored = console.lines().find(|l| l.starts_with("planet-init: other planet disks ignored"));
    let ignored = ignored.unwrap_or_else(|| panic!("no line naming the other disk:\n{console}"));
    assert!(ignored.contains(&format!("disk_guid={guid}")), "{ignored}");
    let found = console.lines().find(|l| l.starts_with("planet-init: disk found")).unwrap();
    let disk = found.split("disk=").nth(1).unwrap().split(' ').next().unwrap();
    assert!(!ignored.ends_with(&format!("disks={disk}")), "the boot disk {disk} was ignored: {ignored}");
}
