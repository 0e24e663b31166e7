//! `FILE.manifest.json` beside every image: what went in (rootfs, packages, layout, planet-init)
//! and the digests of what came out, so `inspect` can verify an image later.

use crate::fetch::PackageRecord;
use crate::layout::Layout;
use crate::rootfs::RootfsSummary;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub planet_image_version: String,
    pub image: ImageInfo,
    pub partitions: Vec<PartitionInfo>,
    pub rootfs: RootfsInfo,
    pub packages: Vec<PackageInfo>,
    pub kernel: KernelInfo,
    pub planet_init: PlanetInitInfo,
    pub layout: Layout,
    pub cmdline: String,
    pub compression: String,
    pub source_date_epoch: u64,
    /// The release version (`build --release-version`, else the first 12 hex digits of the rootfs
    /// digest), as in the boot entry's `version` line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release: String,
    /// The id of the key update bundles must be signed with (`build --update-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_key_id: Option<String>,
    /// The AMI made from this image (`build --target ami -o`, `publish aws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsInfo>,
}

/// An AMI registered from the image; also the JSON result of `build --target ami` and
/// `publish aws`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AwsInfo {
    pub ami_id: String,
    pub snapshot_id: Option<String>,
    pub region: String,
    pub name: String,
    /// Blocks written to the snapshot (0 when an existing AMI was reused).
    pub blocks_uploaded: u64,
    /// Block payload bytes sent, retries included.
    pub bytes_sent: u64,
    /// PutSnapshotBlock requests sent, retries included.
    pub requests: u64,
    /// An AMI of that name already existed and was reported instead of uploading.
    pub reused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub file: String,
    /// `raw` or `qcow2`.
    pub format: String,
    pub sha256: String,
    /// Size of the image file in bytes.
    pub file_size: u64,
    /// Size of the disk it represents.
    pub disk_size: u64,
    pub sector_size: u64,
    pub disk_guid: String,
    /// Digest of the raw disk, whatever the container format (qcow2 stores the same disk).
    pub raw_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// The rootfs stage's summary plus the size of the squashfs it became.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsInfo {
    #[serde(flatten)]
    pub summary: RootfsSummary,
    pub squashfs_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackageInfo {
    pub role: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl From<&PackageRecord> for PackageInfo {
    fn from(r: &PackageRecord) -> Self {
        PackageInfo { role: r.role.clone(), name: r.name.clone(), version: r.version.clone(), sha256: r.sha256.clone() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelInfo {
    pub version: String,
    pub modules: usize,
    pub initramfs_sha256: String,
    pub initramfs_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanetInitInfo {
    pub version: String,
    pub sha256: String,
}

/// The manifest's path for an image: `FILE.manifest.json`.
pub fn path_for(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the manifest {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing the manifest {}", path.display()))
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }
}
