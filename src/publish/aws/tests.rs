//! The requests the tool builds, checked in-process (moto does not validate them).

use super::register::{register_image_request, ImageSpec, ROOT_DEVICE};
use super::sparse::{self, BLOCK_SIZE};
use super::upload::{complete_snapshot_request, put_block_request, start_snapshot_request, SnapshotSpec};
use super::*;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm};
use aws_sdk_ec2::types::{ArchitectureValues, BootModeValues, ImdsSupportValues, ResourceType, VolumeType};
use base64::Engine;
use sha2::{Digest, Sha256};

fn ebs() -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::from_conf(
        aws_sdk_ebs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build(),
    )
}

fn ec2() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build(),
    )
}

#[test]
fn complete_snapshot_carries_count_and_linear_checksum() {
    let blocks: Vec<(u64, [u8; 32])> = [(9u64, b"nine".as_slice()), (0, b"zero"), (3, b"three")]
        .iter()
        .map(|(i, d)| (*i, sparse::block_digest(d)))
        .collect();
    let b = complete_snapshot_request(ebs().complete_snapshot(), "snap-1", &blocks);
    let input = b.as_input();
    assert_eq!(input.get_snapshot_id().as_deref(), Some("snap-1"));
    assert_eq!(*input.get_changed_blocks_count(), Some(3));
    // LINEAR: sha256 over the binary digests in block-index order (0, 3, 9), base64.
    let mut h = Sha256::new();
    for d in [b"zero".as_slice(), b"three", b"nine"] {
        h.update(Sha256::digest(d));
    }
    let expected = sparse::base64(&h.finalize());
    assert_eq!(input.get_checksum().as_deref(), Some(expected.as_str()));
    assert_eq!(*input.get_checksum_algorithm(), Some(ChecksumAlgorithm::ChecksumAlgorithmSha256));
    assert_eq!(*input.get_checksum_aggregation_method(), Some(ChecksumAggregationMethod::ChecksumAggregationLinear));
}

#[test]
fn put_block_carries_index_length_and_base64_sha256() {
    let data = vec![7u8; BLOCK_SIZE as usize];
    let digest = sparse::block_digest(&data);
    let b = put_block_request(ebs().put_snapshot_block(), "snap-1", 42, data.clone(), &digest);
    let input = b.as_input();
    assert_eq!(*input.get_block_index(), Some(42));
    assert_eq!(*input.get_data_length(), Some(BLOCK_SIZE as i32));
    let expected = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data));
    assert_eq!(input.get_checksum().as_deref(), Some(expected.as_str()));
    assert_eq!(*input.get_checksum_algorithm(), Some(ChecksumAlgorithm::ChecksumAlgorithmSha256));
}

#[test]
fn start_snapshot_carries_size_tags_description_and_token() {
    let spec = SnapshotSpec {
        volume_size_gib: 3,
        description: "d".into(),
        tags: vec![("team".into(), "infra".into())],
        client_token: client_token("abc", "name"),
    };
    let b = start_snapshot_request(ebs().start_snapshot(), &spec);
    let input = b.as_input();
    assert_eq!(*input.get_volume_size(), Some(3));
    assert_eq!(input.get_description().as_deref(), Some("d"));
    let tags = input.get_tags().clone().unwrap();
    assert_eq!((tags[0].key(), tags[0].value()), (Some("team"), Some("infra")));
    let token = input.get_client_token().clone().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(token, client_token("abc", "name"), "same image and name, same token");
    assert_ne!(token, client_token("abd", "name"));
    assert_ne!(token, client_token("abc", "other"));
}

#[test]
fn register_image_fields() {
    let spec = ImageSpec {
        name: "planet-1".into(),
        description: "desc".into(),
        snapshot_id: "snap-0123".into(),
        volume_size_gib: 2,
        boot_mode: BootMode::Uefi,
        tags: vec![("k".into(), "v".into())],
    };
    let b = register_image_request(ec2().register_image(), &spec);
    let i = b.as_input();
    assert_eq!(i.get_name().as_deref(), Some("planet-1"));
    assert_eq!(i.get_description().as_deref(), Some("desc"));
    assert_eq!(*i.get_architecture(), Some(ArchitectureValues::X8664));
    assert_eq!(i.get_root_device_name().as_deref(), Some(ROOT_DEVICE));
    assert_eq!(ROOT_DEVICE, "/dev/xvda");
    assert_eq!(i.get_virtualization_type().as_deref(), Some("hvm"));
    assert_eq!(*i.get_ena_support(), Some(true));
    assert_eq!(i.get_sriov_net_support().as_deref(), Some("simple"));
    assert_eq!(*i.get_boot_mode(), Some(BootModeValues::Uefi));
    assert_eq!(*i.get_imds_support(), Some(ImdsSupportValues::V20));
    let bdm = i.get_block_device_mappings().clone().unwrap();
    assert_eq!(bdm.len(), 1);
    assert_eq!(bdm[0].device_name(), Some("/dev/xvda"));
    let ebs = bdm[0].ebs().unwrap();
    assert_eq!(ebs.snapshot_id(), Some("snap-0123"));
    assert_eq!(ebs.volume_size(), Some(2));
    assert_eq!(ebs.delete_on_termination(), Some(true));
    assert_eq!(ebs.volume_type(), Some(&VolumeType::Gp3));
    let ts = i.get_tag_specifications().clone().unwrap();
    assert_eq!(ts[0].resource_type(), Some(&ResourceType::Image));
    assert_eq!((ts[0].tags()[0].key(), ts[0].tags()[0].value()), (Some("k"), Some("v")));

    let b = register_image_request(
        ec2().register_image(),
        &ImageSpec { boot_mode: BootMode::UefiPreferred, tags: vec![], ..spec },
    );
    assert_eq!(*b.as_input().get_boot_mode(), Some(BootModeValues::UefiPreferred));
    assert!(b.as_input().get_tag_specifications().is_none());
}

#[test]
fn changed_block_count_is_the_non_zero_blocks_of_a_sparse_image() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(100 * BLOCK_SIZE).unwrap();
    for i in [1u64, 2, 50, 99] {
        f.write_all_at(&[i as u8 + 1; 10], i * BLOCK_SIZE + 100).unwrap();
    }
    f.write_all_at(&vec![0; 4096], 70 * BLOCK_SIZE).unwrap(); // data, but zero: skipped
    let f = std::fs::File::open(&p).unwrap();
    let ext = sparse::data_extents(&f, 100 * BLOCK_SIZE).unwrap();
    let blocks: Vec<(u64, [u8; 32])> = sparse::candidate_blocks(&ext)
        .into_iter()
        .filter_map(|i| sparse::read_block(&f, 100 * BLOCK_SIZE, i).unwrap().map(|b| (i, sparse::block_digest(&b))))
        .collect();
    assert_eq!(blocks.iter().map(|b| b.0).collect::<Vec<_>>(), vec![1, 2, 50, 99]);
    let b = complete_snapshot_request(ebs().complete_snapshot(), "s", &blocks);
    assert_eq!(*b.as_input().get_changed_blocks_count(), Some(4));
}

#[test]
fn ami_cmdline_and_tags() {
    assert_eq!(ami_cmdline(None), "nvme_core.io_timeout=4294967295 planet.datasource=ec2");
    assert_eq!(ami_cmdline(Some(" planet.role=node ")), format!("{AMI_CMDLINE} planet.role=node"));
    assert_eq!(parse_tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
    assert!(parse_tag("=x").is_err());
    assert!(parse_tag("novalue").is_err());
}

#[test]
fn qcow2_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.qcow2");
    std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
    let e = check_raw(&p).unwrap_err().to_string();
    assert!(e.contains("qcow2") && e.contains("--target raw"), "{e}");
}

/// `build --target ami` without -o: another user's directory under the old predictable name is
/// never used; ours is new, private and named unpredictably.
#[test]
fn the_ami_temp_dir_is_private_and_never_an_existing_one() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = tempfile::tempdir().unwrap();
    let squat = base.path().join(format!("{AMI_SCRATCH_PREFIX}{}", std::process::id()));
    std::fs::create_dir(&squat).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
    let squat_ino = std::fs::metadata(&squat).unwrap().ino();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let t = ScratchDir::new_in(base.path(), AMI_SCRATCH_PREFIX);
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = match t {
        Ok(t) => t,
        // As root, 0555 does not stop mkdir; as another user it does, which is also safe.
        Err(e) => panic!("{e:#}"),
    };
    let m = std::fs::metadata(t.path()).unwrap();
    assert_ne!(m.ino(), squat_ino, "the pre-made directory was reused");
    assert_eq!(m.permissions().mode() & 0o777, 0o700);
    let path = t.path().to_path_buf();
    drop(t);
    assert!(!path.exists());
    assert!(squat.exists(), "someone else's directory is left alone");
}
