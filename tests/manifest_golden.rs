//! The `FILE.manifest.json` format, pinned by a golden file: `inspect` and `publish` read
//! manifests that older builders wrote, so any change to the format must be a deliberate one.
//! The manifest is built from fixed values (a real build's digests and version vary).
//!
//! After an intended change, regenerate the file and review its diff:
//! `UPDATE_GOLDEN=1 cargo test --test manifest_golden`.

use std::path::PathBuf;

use planet_config::app::SlotApp;
use planet_image::layout::{BiosSpec, BootSpec, EspSpec, KernelSpec, Layout, SlotSpec, StateSpec};
use planet_image::manifest::{
    AwsInfo, ImageInfo, KernelInfo, Manifest, PackageInfo, PartitionInfo, PlanetInitInfo, RootfsInfo, FORMAT_VERSION,
};
use planet_image::rootfs::RootfsSummary;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/manifest.json")
}

/// A fixed 64-hex-digit digest, different for each `tag`.
fn digest(tag: u8) -> String {
    format!("{tag:02x}").repeat(32)
}

fn partition(number: u32, label: &str, type_guid: &str, offset_mib: u64, size_mib: u64) -> PartitionInfo {
    PartitionInfo {
        number,
        label: label.into(),
        type_guid: type_guid.into(),
        guid: format!("6f0c8a6e-1c7b-4b8e-9d3a-00000000000{number}"),
        offset: offset_mib << 20,
        size: size_mib << 20,
        sha256: digest(number as u8),
    }
}

/// A manifest with every field set, optional ones included, as a BIOS-capable build that was
/// also published to AWS would have.
fn full_manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        planet_image_version: "0.1.0".into(),
        image: ImageInfo {
            file: "planet.qcow2".into(),
            format: "qcow2".into(),
            sha256: digest(0xa0),
            file_size: 412_090_368,
            disk_size: 1_140_850_688,
            sector_size: 512,
            disk_guid: "0d1f3a52-7c1e-4d55-8b9a-2f6e5c4b3a21".into(),
            raw_sha256: digest(0xa1),
        },
        partitions: vec![
            partition(1, "esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", 1, 256),
            partition(2, "bios-boot", "21686148-6449-6e6f-744e-656564454649", 257, 1),
            partition(3, "planet-a", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 258, 384),
            partition(4, "planet-b", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", 642, 384),
            partition(5, "planet-state", "0fc63daf-8483-4772-8e79-3d69d8477de4", 1026, 62),
        ],
        rootfs: RootfsInfo {
            summary: RootfsSummary {
                source: "planet-release.tar.gz".into(),
                format: "tar.gz".into(),
                sha256: digest(0xb0),
                planet_release: true,
                has_planet_launcher: true,
                entries: 41_023,
                file_bytes: 1_203_334_912,
                apps: vec![SlotApp { name: "web".into(), version: "2.0".into(), sha256: digest(0xb1) }],
            },
            squashfs_bytes: 261_095_424,
        },
        packages: vec![
            PackageInfo {
                role: "kernel".into(),
                name: "linux-image-6.1.0-28-cloud-amd64".into(),
                version: "6.1.119-1".into(),
                sha256: digest(0xc0),
            },
            PackageInfo {
                role: "bootloader".into(),
                name: "systemd-boot-efi".into(),
                version: "252.33-1~deb12u1".into(),
                sha256: digest(0xc1),
            },
            PackageInfo {
                role: "bios".into(),
                name: "grub-pc-bin".into(),
                version: "2.06-13+deb12u1".into(),
                sha256: digest(0xc2),
            },
        ],
        kernel: KernelInfo {
            version: "6.1.0-28-cloud-amd64".into(),
            modules: 212,
            initramfs_sha256: digest(0xd0),
            initramfs_bytes: 9_437_184,
        },
        planet_init: PlanetInitInfo { version: "0.1.0".into(), sha256: digest(0xd1) },
        layout: Layout {
            name: "default".into(),
            sector_size: 512,
            align_mib: 1,
            esp: EspSpec { size_mib: None },
            slots: SlotSpec { size_mib: None, headroom_percent: 50, min_mib: 64, type_guid: "root-x86-64".into() },
            state: StateSpec { size_mib: 62, type_guid: "linux".into() },
            kernel: KernelSpec {
                package: "linux-image-cloud-amd64".into(),
                modules: vec!["kernel/drivers/virtio/".into(), "kernel/fs/squashfs/".into()],
            },
            boot: BootSpec { cmdline: "console=ttyS0".into() },
            bios: BiosSpec { enabled: true, size_mib: 1 },
        },
        cmdline: "console=ttyS0 planet.role=dev".into(),
        compression: "zstd:15".into(),
        source_date_epoch: 1_700_000_000,
        release: "2.0.1".into(),
        update_key_id: Some(digest(0xe0)[..16].to_string()),
        aws: Some(AwsInfo {
            ami_id: "ami-0123456789abcdef0".into(),
            snapshot_id: Some("snap-0123456789abcdef0".into()),
            region: "eu-west-1".into(),
            name: "planet-2.0.1".into(),
            blocks_uploaded: 1_992,
            bytes_sent: 1_044_381_696,
            requests: 1_993,
            reused: false,
        }),
    }
}

/// The first line where `got` and `want` differ, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let (mut g, mut w) = (got.lines(), want.lines());
    for n in 1.. {
        match (g.next(), w.next()) {
            (None, None) => return "none (line endings?)".into(),
            (a, b) if a != b => return format!("line {n}: got {a:?}, the golden file has {b:?}"),
            _ => {}
        }
    }
    unreachable!()
}

#[test]
fn the_manifest_format_matches_the_golden_file() {
    let got = full_manifest().to_json().unwrap();
    let path = golden_path();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        got == want,
        "the manifest format changed; first difference at {}.\nIf intended, regenerate with \
         UPDATE_GOLDEN=1 cargo test --test manifest_golden and review the diff.",
        first_difference(&got, &want)
    );
}

#[test]
fn the_golden_manifest_reads_back_unchanged() {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        return; // The file is being rewritten by the test above, perhaps at this moment.
    }
    let m = Manifest::load(&golden_path()).unwrap();
    assert_eq!(m.to_json().unwrap(), std::fs::read_to_string(golden_path()).unwrap());
    assert_eq!(m.partitions, full_manifest().partitions);
    assert_eq!(m.aws, full_manifest().aws);
    assert_eq!(m.rootfs.summary.apps[0].name, "web");
}

/// Builds without the optional parts write manifests that older readers took: no `release`,
/// `update_key_id`, `aws`, `apps` or `bios` keys at all, rather than empty ones.
#[test]
fn unset_optional_fields_are_left_out() {
    let mut m = full_manifest();
    m.release.clear();
    m.update_key_id = None;
    m.aws = None;
    m.rootfs.summary.apps.clear();
    m.layout.bios.enabled = false;
    let v: serde_json::Value = serde_json::from_str(&m.to_json().unwrap()).unwrap();
    for key in ["release", "update_key_id", "aws"] {
        assert!(v.get(key).is_none(), "{key} is written: {v}");
    }
    assert!(v["rootfs"].get("apps").is_none(), "{}", v["rootfs"]);
    assert!(v["layout"].get("bios").is_none(), "{}", v["layout"]);
    assert_eq!(v["rootfs"]["squashfs_bytes"], 261_095_424);
}
