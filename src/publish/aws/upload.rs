//! The snapshot: StartSnapshot, the image's non-zero 512 KiB blocks with PutSnapshotBlock (many
//! in flight, each retried on its own), CompleteSnapshot with the changed-block count and the
//! LINEAR aggregate checksum.

use super::retry::{with_retries, RetryPolicy};
use super::sparse::{self, BLOCK_SIZE};
use crate::util::progress::Step;
use anyhow::{Context, Result};
use aws_sdk_ebs::operation::complete_snapshot::builders::CompleteSnapshotFluentBuilder;
use aws_sdk_ebs::operation::put_snapshot_block::builders::PutSnapshotBlockFluentBuilder;
use aws_sdk_ebs::operation::start_snapshot::builders::StartSnapshotFluentBuilder;
use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// What StartSnapshot asks for.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    pub volume_size_gib: u64,
    pub description: String,
    pub tags: Vec<(String, String)>,
    pub client_token: String,
}

/// The StartSnapshot request for `spec` (pure: the builder is only filled in).
pub fn start_snapshot_request(b: StartSnapshotFluentBuilder, spec: &SnapshotSpec) -> StartSnapshotFluentBuilder {
    let mut b = b
        .volume_size(spec.volume_size_gib as i64)
        .description(&spec.description)
        .client_token(&spec.client_token)
        .timeout(60);
    for (k, v) in &spec.tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b
}

/// The PutSnapshotBlock request for one block and its binary SHA-256.
pub fn put_block_request(
    b: PutSnapshotBlockFluentBuilder,
    snapshot_id: &str,
    index: u64,
    data: Vec<u8>,
    digest: &[u8; 32],
) -> PutSnapshotBlockFluentBuilder {
    b.snapshot_id(snapshot_id)
        .block_index(index as i32)
        .data_length(data.len() as i32)
        .block_data(ByteStream::from(data))
        .checksum(sparse::base64(digest))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
}

/// The CompleteSnapshot request: how many blocks were written and their LINEAR aggregate.
pub fn complete_snapshot_request(
    b: CompleteSnapshotFluentBuilder,
    snapshot_id: &str,
    blocks: &[(u64, [u8; 32])],
) -> CompleteSnapshotFluentBuilder {
    b.snapshot_id(snapshot_id)
        .changed_blocks_count(blocks.len() as i32)
        .checksum(sparse::linear_aggregate(blocks))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
}

pub async fn start_snapshot(ebs: &aws_sdk_ebs::Client, spec: &SnapshotSpec, policy: &RetryPolicy) -> Result<String> {
    let (_, r) = with_retries(policy, "starting the snapshot (EBS StartSnapshot)", || {
        start_snapshot_request(ebs.start_snapshot(), spec).send()
    })
    .await;
    r?.snapshot_id.context("StartSnapshot returned no snapshot id")
}

/// What the upload did.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Each block written, by index, with its binary SHA-256.
    pub blocks: Vec<(u64, [u8; 32])>,
    /// Block payload bytes over every attempt, retries included.
    pub bytes_sent: u64,
    /// PutSnapshotBlock attempts.
    pub requests: u64,
    /// Blocks read (those overlapping data; the rest of the file is holes).
    pub blocks_read: u64,
}

/// Uploads every non-zero block of the raw image at `path` to `snapshot_id`.
pub async fn upload_blocks(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    path: &Path,
    concurrency: usize,
    policy: &RetryPolicy,
) -> Result<UploadStats> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len();
    let extents =
        sparse::data_extents(&file, size).with_context(|| format!("mapping the data of {}", path.display()))?;
    let candidates = sparse::candidate_blocks(&extents);
    let file = Arc::new(file);
    let step = Step::start("uploading blocks", candidates.len() as u64 * BLOCK_SIZE);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set: tokio::task::JoinSet<Result<Option<BlockDone>>> = tokio::task::JoinSet::new();
    let mut stats = UploadStats { blocks_read: candidates.len() as u64, ..Default::default() };
    let mut processed = 0u64;

    let mut absorb = |r: Result<Result<Option<BlockDone>>, tokio::task::JoinError>, stats: &mut UploadStats| {
        let r = r.context("an upload task panicked")??;
        processed += 1;
        step.set_position(processed * BLOCK_SIZE);
        if let Some(done) = r {
            stats.blocks.push((done.index, done.digest));
            stats.bytes_sent += done.bytes_sent;
            stats.requests += done.attempts as u64;
        }
        anyhow::Ok(())
    };

    for index in candidates {
        // On SIGINT/SIGTERM the caller's error path deletes the pending snapshot.
        crate::util::interrupt::check()?;
        while let Some(r) = set.try_join_next() {
            absorb(r, &mut stats)?;
        }
        let permit = sem.clone().acquire_owned().await.context("the upload semaphore closed")?;
        let (ebs, file, policy, snapshot_id) = (ebs.clone(), file.clone(), *policy, snapshot_id.to_string());
        set.spawn(async move {
            let _permit = permit;
            let read = tokio::task::spawn_blocking(move || -> Result<Option<(Vec<u8>, [u8; 32])>> {
                Ok(sparse::read_block(&file, size, index)?.map(|b| {
                    let d = sparse::block_digest(&b);
                    (b, d)
                }))
            })
            .await
            .context("a block reader panicked")??;
            let Some((data, digest)) = read else { return Ok(None) };
            let len = data.len() as u64;
            let what = format!("writing block {index} (EBS PutSnapshotBlock)");
            let (attempts, r) = with_retries(&policy, &what, || {
                put_block_request(ebs.put_snapshot_block(), &snapshot_id, index, data.clone(), &digest).send()
            })
            .await;
            r?;
            Ok(Some(BlockDone {
                index,
                digest,
                attempts: attempts.attempts,
                bytes_sent: len * attempts.attempts as u64,
            }))
        });
    }
    while let Some(r) = set.join_next().await {
        absorb(r, &mut stats)?;
    }
    crate::util::interrupt::check()?;
    stats.blocks.sort_by_key(|(i, _)| *i);
    step.finish(&format!(
        "blocks={} of {} read, {:.1} MiB sent in {} requests",
        stats.blocks.len(),
        stats.blocks_read,
        stats.bytes_sent as f64 / (1 << 20) as f64,
        stats.requests
    ));
    Ok(stats)
}

struct BlockDone {
    index: u64,
    digest: [u8; 32],
    attempts: u32,
    bytes_sent: u64,
}

pub async fn complete_snapshot(
    ebs: &aws_sdk_ebs::Client,
    snapshot_id: &str,
    blocks: &[(u64, [u8; 32])],
    policy: &RetryPolicy,
) -> Result<()> {
    let (_, r) = with_retries(policy, "completing the snapshot (EBS CompleteSnapshot)", || {
        complete_snapshot_request(ebs.complete_snapshot(), snapshot_id, blocks).send()
    })
    .await;
    let out = r?;
    if let Some(aws_sdk_ebs::types::Status::Error) = out.status {
        anyhow::bail!("CompleteSnapshot reported the snapshot {snapshot_id} in error");
    }
    Ok(())
}
