//! Platform variants booted for real: the GCE archive on virtio-scsi with GCE's SMBIOS strings
//! and a metadata server of the test's own, the bare-metal profile dd'd onto a larger disk
//! behind NVMe and AHCI controllers (with an Ironic-style config drive), and the 4Kn variant.

mod common;

use common::metadata::{header, MetadataServer};
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

#[test]
fn gce_archive_holds_one_sparse_whole_gib_disk_that_boots_on_virtio_scsi() {
    let s = Scratch::new("gce");
    let archive = s.path("planet-gce.tar.gz");
    build("gce", &fixture("demo.tar"), &archive, &["--cmdline", "planet.metadata_url=http://10.0.2.100"]);
    let list = stdout(Command::new("tar").arg("-tvzf").arg(&archive));
    assert_eq!(list.lines().count(), 1, "{list}");
    let fields: Vec<&str> = list.split_whitespace().collect();
    assert_eq!(fields.last(), Some(&"disk.raw"), "{list}");
    let size: u64 = fields[2].parse().unwrap();
    assert!(size > 0 && size % (1 << 30) == 0, "disk.raw is {size} bytes, not whole GiB");
    // GNU tar lists sparse members like regular files; Python's reader tells them apart.
    let py = "import tarfile,sys\nm=tarfile.open(sys.argv[1]).getmembers()[0]\nprint(m.name, m.issparse())";
    assert_eq!(stdout(Command::new("python3").args(["-c", py]).arg(&archive)).trim(), "disk.raw True");
    ok(Command::new("tar").arg("-xSzf").arg(&archive).arg("-C").arg(&s.0));
    let disk = s.path("disk.raw");
    ok(Command::new("sgdisk").arg("-v").arg(&disk));

    let user_data = "#cloud-config\nhostname: gce-1\nplanet:\n  role: dev\n  cloud_provider: gce\n".to_string();
    let server = MetadataServer::start(Box::new(move |_, path, headers| {
        if header(headers, "metadata-flavor") != Some("Google") {
            return Some((403, Vec::new()));
        }
        Some(match path.strip_prefix("/computeMetadata/v1/instance/").unwrap_or("") {
            "attributes/user-data" => (200, user_data.clone().into_bytes()),
            "hostname" => (200, b"gce-1.c.project.internal".to_vec()),
            "id" => (200, b"4242".to_vec()),
            "network-interfaces/0/ip" => (200, b"10.0.2.15".to_vec()),
            _ => (404, Vec::new()),
        })
    }));
    let guestfwd = format!("10.0.2.100:80={}", server.port);
    let mut guest = Guest::start(
        &disk,
        &s,
        &[
            "--disk-bus",
            "scsi",
            "--smbios",
            "type=1,manufacturer=Google,product=Google Compute Engine",
            "--guestfwd",
            &guestfwd,
        ],
    );
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("disk found disk=sda"), "{console}");
    assert!(console.contains("provider=gce") && console.contains("source=gce"), "{console}");
    assert!(console.contains("console=ttyS0,38400n8") || console.contains("ttyS0,38400n8"), "{console}");
}

/// `inspect` output and status for `image` (and `--manifest`, if given); panics are failures.
fn inspect_no_panic(image: &Path, manifest: Option<&Path>) -> (bool, String) {
    let mut cmd = planet_image();
    cmd.arg("inspect").arg(image);
    if let Some(m) = manifest {
        cmd.arg("--manifest").arg(m);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.code() != Some(101) && !text.contains("panicked"),
        "inspect {} panicked:\n{text}",
        image.display()
    );
    (out.status.success(), text)
}

/// A copy of the first `len` bytes of `src`.
fn truncated_copy(src: &Path, dst: &Path, len: u64) {
    let mut f = std::fs::File::open(src).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut f, len), &mut out).unwrap();
}

#[test]
fn inspect_reports_empty_partitions_and_never_panics_on_truncated_or_hostile_images() {
    let s = Scratch::new("inspect-hostile");
    let qcow = s.path("fresh.qcow2");
    build("qcow2", &fixture("demo.tar"), &qcow, &[]);
    // A fresh image: planet-b has no allocated clusters and reads as zeros.
    let (ok_, text) = inspect_no_panic(&qcow, None);
    assert!(ok_, "{text}");
    assert!(text.lines().any(|l| l.contains(" planet-b ") && l.ends_with(" empty")), "{text}");
    assert!(text.contains("verify:     ok"), "{text}");
    let raw = s.path("fresh.raw");
    build("raw", &fixture("demo.tar"), &raw, &[]);
    let (ok_, text) = inspect_no_panic(&raw, None);
    assert!(ok_ && text.contains("verify:     ok"), "{text}");

    // Truncated copies: alone (no manifest beside them) and, once, against the original's.
    for (src, ext) in [(&raw, "raw"), (&qcow, "qcow2")] {
        let len = std::fs::metadata(src).unwrap().len();
        for cut in [100, 600, 4096, 40 * 1024, 1 << 20, len / 2, len - 4096] {
            let copy = s.path(&format!("cut-{cut}.{ext}"));
            truncated_copy(src, &copy, cut);
            let (_, alone) = inspect_no_panic(&copy, None);
            if cut == len / 2 {
                let manifest = PathBuf::from(format!("{}.manifest.json", src.display()));
                let (ok_, text) = inspect_no_panic(&copy, Some(&manifest));
                assert!(!ok_, "a truncated {ext} image at {cut} bytes verified:\n{text}\n{alone}");
            }
            let _ = std::fs::remove_file(&copy);
        }
    }

    // A manifest naming partition 0.
    let manifest = std::fs::read_to_string(format!("{}.manifest.json", raw.display())).unwrap();
    let zero = s.path("zero.manifest.json");
    std::fs::write(&zero, manifest.replacen("\"number\": 1,", "\"number\": 0,", 1)).unwrap();
    let (ok_, text) = inspect_no_panic(&raw, Some(&zero));
    assert!(!ok_ && text.contains("partition 0"), "{text}");
}
