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
