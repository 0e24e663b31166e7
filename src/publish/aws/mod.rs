//! AMIs through the EBS direct APIs: no S3, no builder instance. The raw image's non-zero
//! 512 KiB blocks go straight into a new snapshot (StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot), which RegisterImage turns into an AMI.
//!
//! The rest of planet-image is synchronous; this module owns a tokio runtime for the SDK.

pub mod register;
pub mod retry;
pub mod sparse;
pub mod upload;

use crate::manifest::{self, AwsInfo, Manifest};
use crate::pipeline::{self, BuildRequest, Target};
use crate::util::ScratchDir;
use anyhow::{bail, Context, Result};
use aws_config::BehaviorVersion;
use aws_sdk_ebs::config::ProvideCredentials;
use register::{ExistingImage, ImageSpec};
use retry::RetryPolicy;
use std::path::{Path, PathBuf};
use std::time::Duration;
use upload::SnapshotSpec;

/// The kernel arguments of the AWS profile, after the layout's `console=ttyS0`: NVMe I/O never
/// times out (EBS volumes are NVMe on Nitro), and the cloud-init data comes from EC2 IMDSv2.
pub const AMI_CMDLINE: &str = "nvme_core.io_timeout=4294967295 planet.datasource=ec2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMode {
    /// UEFI only (the image has no BIOS boot loader).
    #[default]
    Uefi,
    /// UEFI where the instance type supports it.
    UefiPreferred,
}

/// Everything the AWS publisher needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    pub name: String,
    pub region: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    pub boot_mode: BootMode,
    pub volume_size_gib: Option<u64>,
    pub force: bool,
    pub keep_snapshot: bool,
    pub concurrency: usize,
    pub wait_timeout: Duration,
}

/// Parses `KEY=VALUE` for `--tag`.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The AMI's kernel command line additions, before the user's own `--cmdline`.
pub fn ami_cmdline(extra: Option<&str>) -> String {
    match extra.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) => format!("{AMI_CMDLINE} {e}"),
        None => AMI_CMDLINE.to_string(),
    }
}

/// The StartSnapshot ClientToken: the same image under the same name is the same request.
pub fn client_token(image_digest: &str, name: &str) -> String {
    crate::util::digest::sha256_hex(format!("planet-image-ami\0{image_digest}\0{name}").as_bytes())
}

/// `build --target ami`: builds the raw image (into `output`, or a temporary directory removed
/// afterwards) with the AWS profile's command line, then publishes it.
pub fn build_ami(mut req: BuildRequest, output: Option<PathBuf>, opts: &AwsOptions) -> Result<AmiBuildResult> {
    let publisher = Publisher::connect(opts)?;
    if output.is_none() {
        if let Some(existing) = publisher.existing()? {
            if !opts.force {
                return Ok(AmiBuildResult { aws: publisher.reused(existing), image: None, manifest: None });
            }
        }
    }
    let temp = match &output {
        Some(_) => None,
        None => Some(ScratchDir::new_in(&std::env::temp_dir(), AMI_SCRATCH_PREFIX)?),
    };
    req.output = match (&output, &temp) {
        (Some(o), _) => o.clone(),
        (None, Some(t)) => t.path().join(format!("{}.raw", sanitize(&opts.name))),
        (None, None) => unreachable!(),
    };
    req.target = Target::Ami;
    req.cmdline = Some(ami_cmdline(req.cmdline.as_deref()));
    let built = pipeline::run(&req)?;
    let aws = publisher.publish(&built.image)?;
    if output.is_some() {
        record_in_manifest(&built.manifest, &aws)?;
        Ok(AmiBuildResult { aws, image: Some(built.image), manifest: Some(built.manifest) })
    } else {
        Ok(AmiBuildResult { aws, image: None, manifest: None })
    }
}

/// `publish aws FILE.raw`: an image built before; its manifest, if any, records the AMI.
pub fn publish_file(image: &Path, opts: &AwsOptions) -> Result<AwsInfo> {
    check_raw(image)?;
    let publisher = Publisher::connect(opts)?;
    let aws = publisher.publish(image)?;
    let manifest_path = manifest::path_for(image);
    if manifest_path.is_file() {
        record_in_manifest(&manifest_path, &aws)?;
    }
    Ok(aws)
}

#[derive(Debug, serde::Serialize)]
pub struct AmiBuildResult {
    #[serde(flatten)]
    pub aws: AwsInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
}

fn record_in_manifest(path: &Path, aws: &AwsInfo) -> Result<()> {
    let mut m = Manifest::load(path)?;
    m.aws = Some(aws.clone());
    crate::util::atomic::write_file(path, m.to_json()?.as_bytes())
        .with_context(|| format!("recording the AMI in the manifest {}", path.display()))
}

/// The EBS direct APIs take a raw disk: refuse qcow2 (and anything a manifest says is not raw).
pub fn check_raw(image: &Path) -> Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(image).with_context(|| format!("opening the image {}", image.display()))?;
    let n = f.read(&mut magic).with_context(|| format!("reading {}", image.display()))?;
    if n == 4 && &magic == b"QFI\xfb" {
        bail!(
            "{} is a qcow2 image; the EBS direct APIs take a raw disk: build with --target raw (or convert it: \
             qemu-img convert -f qcow2 -O raw {} IMAGE.raw)",
            image.display(),
            image.display()
        );
    }
    let mp = manifest::path_for(image);
    if mp.is_file() {
        let m = Manifest::load(&mp)?;
        if m.image.format != "raw" {
            bail!("{} is a {} image (says {}); publish a raw image", image.display(), m.image.format, mp.display());
        }
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// A connection to one region of one account, and the runtime the SDK runs on.
struct Publisher {
    rt: tokio::runtime::Runtime,
    ebs: aws_sdk_ebs::Client,
    ec2: aws_sdk_ec2::Client,
    region: String,
    opts: AwsOptions,
    policy: RetryPolicy,
}

impl Publisher {
    /// Loads credentials and region from the standard chain, checks both before anything else.
    fn connect(opts: &AwsOptions) -> Result<Publisher> {
        if opts.name.trim().is_empty() {
            bail!("--name is required: the AMI's name (unique in the account and region)");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("planet-image-aws")
            .build()
            .context("starting the AWS client runtime")?;
        let (conf, region) = rt.block_on(load_config(opts.region.as_deref()))?;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build();
        // EBS calls are retried here, block by block; the SDK's own retries would hide them.
        let ebs_conf = aws_sdk_ebs::config::Builder::from(&conf)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts.clone())
            .build();
        let ec2_conf = aws_sdk_ec2::config::Builder::from(&conf)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(timeouts)
            .build();
        let ec2 = aws_sdk_ec2::Client::from_conf(ec2_conf);
        rt.block_on(register::check_region(&ec2, &region))?;
        Ok(Publisher {
            ebs: aws_sdk_ebs::Client::from_conf(ebs_conf),
            ec2,
            region,
            opts: opts.clone(),
            policy: RetryPolicy::default(),
            rt,
        })
    }

    fn existing(&self) -> Result<Option<ExistingImage>> {
        self.rt.block_on(register::find_image(&self.ec2, &self.opts.name))
    }

    fn reused(&self, existing: ExistingImage) -> AwsInfo {
        eprintln!(
            "planet-image: the AMI {:?} already exists in {} as {}; reusing it (--force replaces it)",
            self.opts.name, self.region, existing.ami_id
        );
        AwsInfo {
            ami_id: existing.ami_id,
            snapshot_id: existing.snapshot_id,
            region: self.region.clone(),
            name: self.opts.name.clone(),
            blocks_uploaded: 0,
            bytes_sent: 0,
            requests: 0,
            reused: true,
        }
    }

    fn publish(&self, image: &Path) -> Result<AwsInfo> {
        check_raw(image)?;
        let existing = self.existing()?;
        if let Some(e) = existing.clone().filter(|_| !self.opts.force) {
            return Ok(self.reused(e));
        }
        let size = std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?.len();
        let volume_size_gib = sparse::volume_size_gib(size, self.opts.volume_size_gib)?;
        let digest = image_digest(image, size)?;
        let description = self.opts.description.clone().unwrap_or_else(|| {
            format!("planet-image {} {}", env!("CARGO_PKG_VERSION"), &digest[..digest.len().min(12)])
        });
        let spec = SnapshotSpec {
            volume_size_gib,
            description: description.clone(),
            tags: self.opts.tags.clone(),
            client_token: client_token(&digest, &self.opts.name),
        };
        let snapshot_id = self.rt.block_on(upload::start_snapshot(&self.ebs, &spec, &self.policy))?;
        eprintln!("planet-image: snapshot {snapshot_id} started ({volume_size_gib} GiB) in {}", self.region);
        let result = self.rt.block_on(async {
            let stats =
                upload::upload_blocks(&self.ebs, &snapshot_id, image, self.opts.concurrency, &self.policy).await?;
            upload::complete_snapshot(&self.ebs, &snapshot_id, &stats.blocks, &self.policy).await?;
            register::wait_snapshot(&self.ec2, &snapshot_id, self.opts.wait_timeout).await?;
            if let Some(old) = &existing {
                eprintln!("planet-image: --force: deregistering {} and deleting its snapshot", old.ami_id);
                register::deregister(&self.ec2, old).await?;
            }
            let ami_id = register::register(
                &self.ec2,
                &ImageSpec {
                    name: self.opts.name.clone(),
                    description,
                    snapshot_id: snapshot_id.clone(),
                    volume_size_gib,
                    boot_mode: self.opts.boot_mode,
                    tags: self.opts.tags.clone(),
                },
            )
            .await?;
            anyhow::Ok((ami_id, stats))
        });
        match result {
            Ok((ami_id, stats)) => {
                eprintln!("planet-image: registered {ami_id} ({:?}) in {}", self.opts.name, self.region);
                Ok(AwsInfo {
                    ami_id,
                    snapshot_id: Some(snapshot_id),
                    region: self.region.clone(),
                    name: self.opts.name.clone(),
                    blocks_uploaded: stats.blocks.len() as u64,
                    bytes_sent: stats.bytes_sent,
                    requests: stats.requests,
                    reused: false,
                })
            }
            Err(e) if self.opts.keep_snapshot => {
                Err(e.context(format!("publishing {} (the snapshot {snapshot_id} is kept)", image.display())))
            }
            Err(e) => {
                let cleanup = match self.rt.block_on(register::delete_snapshot(&self.ec2, &snapshot_id)) {
                    Ok(()) => format!("the snapshot {snapshot_id} was deleted; --keep-snapshot keeps it"),
                    Err(d) => format!("deleting the snapshot {snapshot_id} failed too: {d:#}"),
                };
                Err(e.context(format!("publishing {} ({cleanup})", image.display())))
            }
        }
    }
}

/// The image's digest: the manifest's raw sha256 when it describes this file, else a digest of
/// its data extents (holes are not read).
fn image_digest(image: &Path, size: u64) -> Result<String> {
    let mp = manifest::path_for(image);
    if let Ok(m) = Manifest::load(&mp) {
        if m.image.format == "raw" && m.image.file_size == size {
            return Ok(m.image.raw_sha256);
        }
    }
    sparse::sparse_digest(image)
}

const CREDENTIALS_HELP: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE \
    (for an SSO profile, run `aws sso login` first)";

async fn load_config(region: Option<&str>) -> Result<(aws_config::SdkConfig, String)> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    let conf = loader.load().await;
    let region = conf
        .region()
        .map(|r| r.to_string())
        .filter(|r| !r.is_empty())
        .context("no AWS region: set AWS_REGION (or a region in your AWS profile) or pass --region")?;
    let provider = conf.credentials_provider().with_context(|| format!("no AWS credentials: {CREDENTIALS_HELP}"))?;
    if let Err(e) = provider.provide_credentials().await {
        // The provider chain's error names the sources tried, never a secret.
        bail!("no AWS credentials found ({}): {CREDENTIALS_HELP}", retry::error_chain(&e));
    }
    Ok((conf, region))
}

/// The raw image of `build --target ami` without `-o` goes to a private scratch directory.
const AMI_SCRATCH_PREFIX: &str = "planet-image-ami-";

#[cfg(test)]
mod tests;
