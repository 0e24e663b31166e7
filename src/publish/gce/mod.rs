//! GCE images: the archive of `build --target gce` goes to Cloud Storage in a resumable upload,
//! then `images.insert` makes an image of it. Synchronous (ureq + rustls), like the rest of
//! planet-image outside the AWS SDK.

pub mod auth;
pub mod http;
pub mod images;
pub mod upload;

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

pub const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";
pub const COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com";

/// Everything `publish gce` needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct GceOptions {
    pub bucket: String,
    pub project: String,
    pub name: String,
    pub family: Option<String>,
    pub description: Option<String>,
    /// Object name in the bucket [default: NAME.tar.gz].
    pub object: Option<String>,
    pub chunk_size: u64,
    pub storage_endpoint: Option<String>,
    pub compute_endpoint: Option<String>,
    pub wait_timeout: Duration,
}

#[derive(Debug, serde::Serialize)]
pub struct GceResult {
    pub image: String,
    pub project: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    pub self_link: String,
    pub operation: String,
    /// gs://BUCKET/OBJECT
    pub object: String,
    pub source: String,
    pub bytes_uploaded: u64,
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    pub resumes: u32,
}

/// An endpoint from a flag or `STORAGE_EMULATOR_HOST`-style value: `host:port` gets `http://`.
pub fn normalize_endpoint(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// GCE takes a gzip'd tar holding disk.raw: refuse anything that is not gzip.
pub fn check_archive(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening the archive {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).with_context(|| format!("reading {}", path.display()))?;
    if n < 2 || magic != [0x1f, 0x8b] {
        bail!(
            "{} is not a gzip'd tar: GCE images are made from the archive of `planet-image build --target gce -o IMAGE.tar.gz`",
            path.display()
        );
    }
    Ok(f.metadata()?.len())
}

/// `publish gce FILE.tar.gz`: upload, insert, wait.
pub fn publish_file(archive: &Path, opts: &GceOptions) -> Result<GceResult> {
    images::check_name("--name", &opts.name)?;
    if let Some(f) = &opts.family {
        images::check_name("--family", f)?;
    }
    if opts.bucket.trim().is_empty() || opts.project.trim().is_empty() {
        bail!("--bucket and --project are required");
    }
    if opts.chunk_size == 0 || opts.chunk_size % upload::CHUNK_ALIGN != 0 {
        bail!("--chunk-size must be a positive multiple of 256 KiB");
    }
    let size = check_archive(archive)?;
    let object = opts.object.clone().unwrap_or_else(|| format!("{}.tar.gz", opts.name));
    let storage = opts.storage_endpoint.as_deref().map(normalize_endpoint).unwrap_or_else(|| STORAGE_ENDPOINT.into());
    let compute = opts.compute_endpoint.as_deref().map(normalize_endpoint).unwrap_or_else(|| COMPUTE_ENDPOINT.into());
    if !auth::sends_credentials(&storage, false) {
        eprintln!(
            "planet-image: the storage endpoint {storage} is plain HTTP (an emulator?): no credentials are sent to it"
        );
    }
    if !auth::sends_credentials(&compute, true) {
        bail!("--compute-endpoint {compute} is plain HTTP to another machine: the access token goes over HTTPS (or to a loopback stand-in) only");
    }
    let http = http::Http::new(Duration::from_secs(120));
    let token = auth::access_token(&http, &auth::Environment::from_process())?;
    eprintln!(
        "planet-image: uploading {} ({:.1} MiB) to gs://{}/{object} with credentials of {}",
        archive.display(),
        size as f64 / (1024.0 * 1024.0),
        opts.bucket,
        token.source
    );
    let stats = upload::Upload {
        http: &http,
        token: &token,
        storage: &storage,
        bucket: &opts.bucket,
        object: &object,
        chunk_size: opts.chunk_size,
        policy: upload::RetryPolicy::default(),
    }
    .run(archive)?;
    let source = images::source_url(&opts.bucket, &object);
    let body = images::insert_body(&opts.name, opts.family.as_deref(), opts.description.as_deref(), &source);
    let compute_client = images::Compute { http: &http, token: &token, endpoint: &compute, project: &opts.project };
    let inserted = compute_client.insert_and_wait(&body, opts.wait_timeout)?;
    eprintln!("planet-image: image {} is ready in {}", opts.name, opts.project);
    Ok(GceResult {
        image: opts.name.clone(),
        project: opts.project.clone(),
        family: opts.family.clone(),
        self_link: inserted.self_link,
        operation: inserted.operation,
        object: format!("gs://{}/{object}", opts.bucket),
        source,
        bytes_uploaded: stats.bytes,
        bytes_sent: stats.bytes_sent,
        chunks_sent: stats.chunks_sent,
        resumes: stats.resumes,
    })
}
