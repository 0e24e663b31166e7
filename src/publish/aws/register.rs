//! EC2 side: the region check, finding an AMI of the same name, waiting for the snapshot,
//! RegisterImage, and cleaning up (deregistering, deleting snapshots).

use super::retry::describe;
use super::BootMode;
use crate::util::progress::Step;
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, ImdsSupportValues, ResourceType,
    SnapshotState, Tag, TagSpecification, VolumeType,
};
use std::time::{Duration, Instant};

pub const ROOT_DEVICE: &str = "/dev/xvda";

/// What RegisterImage asks for.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub description: String,
    pub snapshot_id: String,
    pub volume_size_gib: u64,
    pub boot_mode: BootMode,
    pub tags: Vec<(String, String)>,
}

/// The RegisterImage request for `spec` (pure: the builder is only filled in).
pub fn register_image_request(b: RegisterImageFluentBuilder, spec: &ImageSpec) -> RegisterImageFluentBuilder {
    let root = BlockDeviceMapping::builder()
        .device_name(ROOT_DEVICE)
        .ebs(
            EbsBlockDevice::builder()
                .snapshot_id(&spec.snapshot_id)
                .volume_size(spec.volume_size_gib as i32)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .build(),
        )
        .build();
    let mut b = b
        .name(&spec.name)
        .description(&spec.description)
        .architecture(ArchitectureValues::X8664)
        .root_device_name(ROOT_DEVICE)
        .block_device_mappings(root)
        .virtualization_type("hvm")
        .ena_support(true)
        .sriov_net_support("simple")
        .boot_mode(match spec.boot_mode {
            BootMode::Uefi => BootModeValues::Uefi,
            BootMode::UefiPreferred => BootModeValues::UefiPreferred,
        })
        .imds_support(ImdsSupportValues::V20);
    if !spec.tags.is_empty() {
        let mut ts = TagSpecification::builder().resource_type(ResourceType::Image);
        for (k, v) in &spec.tags {
            ts = ts.tags(Tag::builder().key(k).value(v).build());
        }
        b = b.tag_specifications(ts.build());
    }
    b
}

/// An AMI already registered by this account.
#[derive(Debug, Clone)]
pub struct ExistingImage {
    pub ami_id: String,
    pub snapshot_id: Option<String>,
}

/// The region must be one this account can use: DescribeRegions lists the enabled ones.
pub async fn check_region(ec2: &aws_sdk_ec2::Client, region: &str) -> Result<()> {
    let out = ec2.describe_regions().send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach EC2 in region {region:?} ({}); set AWS_REGION or pass --region with an existing region, \
             e.g. us-east-1",
            describe(&e)
        )
    })?;
    let names: Vec<&str> = out.regions().iter().filter_map(|r| r.region_name()).collect();
    if !names.is_empty() && !names.contains(&region) {
        bail!(
            "the region {region:?} does not exist or is not enabled for this account; set AWS_REGION or pass \
             --region with one of: {}",
            names.join(", ")
        );
    }
    Ok(())
}

/// The account's own AMI named `name`, if any.
pub async fn find_image(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<Option<ExistingImage>> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("looking for an AMI named {name:?} (EC2 DescribeImages): {}", describe(&e)))?;
    let Some(img) = out.images().iter().find(|i| i.name() == Some(name)) else { return Ok(None) };
    let ami_id = img.image_id().context("DescribeImages returned an image without an id")?.to_string();
    let root = img.root_device_name().unwrap_or(ROOT_DEVICE);
    let snapshot_id = img
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .or_else(|| img.block_device_mappings().first())
        .and_then(|m| m.ebs())
        .and_then(|e| e.snapshot_id())
        .map(str::to_string);
    Ok(Some(ExistingImage { ami_id, snapshot_id }))
}

/// Waits until the snapshot is `completed`, at most `timeout`, with progress on stderr.
pub async fn wait_snapshot(ec2: &aws_sdk_ec2::Client, snapshot_id: &str, timeout: Duration) -> Result<()> {
    let step = Step::start("waiting for the snapshot", 0);
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    let mut last_progress = String::new();
    loop {
        crate::util::interrupt::check()?;
        let out = ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await.map_err(|e| {
            anyhow::anyhow!("describing the snapshot {snapshot_id} (EC2 DescribeSnapshots): {}", describe(&e))
        })?;
        if let Some(s) = out.snapshots().first() {
            match s.state() {
                Some(SnapshotState::Completed) => {
                    step.finish(&format!("{snapshot_id} completed"));
                    return Ok(());
                }
                Some(SnapshotState::Error) => {
                    bail!("the snapshot {snapshot_id} failed: {}", s.state_message().unwrap_or("no state message"))
                }
                _ => {
                    let p = s.progress().unwrap_or("").to_string();
                    if p != last_progress {
                        eprintln!("planet-image: snapshot {snapshot_id} {p}");
                        last_progress = p;
                    }
                }
            }
        }
        if started.elapsed() >= timeout {
            bail!(
                "the snapshot {snapshot_id} was not completed after {}s; pass a longer --wait-timeout \
                 (with --keep-snapshot the snapshot stays for `aws ec2 describe-snapshots`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

pub async fn register(ec2: &aws_sdk_ec2::Client, spec: &ImageSpec) -> Result<String> {
    let out = register_image_request(ec2.register_image(), spec)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("registering the AMI {:?} (EC2 RegisterImage): {}", spec.name, describe(&e)))?;
    out.image_id.context("RegisterImage returned no image id")
}

pub async fn deregister(ec2: &aws_sdk_ec2::Client, image: &ExistingImage) -> Result<()> {
    ec2.deregister_image().image_id(&image.ami_id).send().await.map_err(|e| {
        anyhow::anyhow!("deregistering the AMI {} (EC2 DeregisterImage): {}", image.ami_id, describe(&e))
    })?;
    if let Some(snap) = &image.snapshot_id {
        delete_snapshot(ec2, snap).await?;
    }
    Ok(())
}

pub async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<()> {
    ec2.delete_snapshot()
        .snapshot_id(snapshot_id)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("deleting the snapshot {snapshot_id} (EC2 DeleteSnapshot): {}", describe(&e)))?;
    Ok(())
}
