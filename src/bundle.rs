//! Signed update bundles (crate `planet-bundle`): `keygen` makes the key pair, `bundle` builds the
//! next release's slot image, kernel and initramfs with the same stages as `build` and signs them,
//! and `inspect` shows (and with a key verifies) a bundle.

use crate::fetch::Cache;
use crate::host::HostInputs;
use crate::pipeline::{self, WORK_PREFIX};
use crate::rootfs::RootfsSource;
use crate::squashfs::Compression;
use crate::util::ScratchDir;
use anyhow::{bail, Context, Result};
use planet_bundle::{Claims, KeyRing, SecretKey};
use rand::RngCore;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The result of `keygen`, printed on stdout as JSON.
#[derive(Debug, serde::Serialize)]
pub struct KeygenResult {
    pub key_id: String,
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
}

/// Writes `NAME.key` (mode 0600) and `NAME.pub`; refuses to overwrite either.
pub fn keygen(name: &Path) -> Result<KeygenResult> {
    let secret_path = with_suffix(name, ".key");
    let public_path = with_suffix(name, ".pub");
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            bail!("{} exists: refusing to overwrite a key (remove it or choose another name)", p.display());
        }
    }
    let mut seed = [0u8; 32];
    let mut key_id = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    rand::rngs::OsRng.fill_bytes(&mut key_id);
    let key = SecretKey::from_seed(seed, key_id);
    write_new(&secret_path, key.to_text().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, key.public().to_text().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok(KeygenResult { key_id: key.key_id_hex(), secret_key: secret_path, public_key: public_path })
}

fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` (never replacing a file) with `mode`, writes and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// Everything `bundle` needs, resolved from the command line.
pub struct BundleRequest {
    pub rootfs: PathBuf,
    pub key: PathBuf,
    pub update_key: Option<PathBuf>,
    pub release: Option<String>,
    pub output: PathBuf,
    pub layout: Option<PathBuf>,
    pub profile: String,
    pub kernel_package: Option<PathBuf>,
    pub planet_init: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub compression: Compression,
    pub epoch: u64,
    /// `--expires` as given (a date, a time or a duration from now).
    pub expires: Option<String>,
    /// `--revoke`: key ids the bundle revokes on machines that trust its signer.
    pub revokes: Vec<String>,
    /// App packages the next release carries in its slot (`--app`), applied in this order.
    pub apps: Vec<PathBuf>,
    /// Use (and fill) the host stage cache in the package cache's `host/`.
    pub host_cache: bool,
    /// Index every section by content-defined chunks (`--no-chunks` turns it off).
    pub chunks: bool,
    /// `--estimate-from`: the earlier bundle whose machines' download is estimated.
    pub estimate_from: Option<PathBuf>,
}

/// The result of `bundle`, printed on stdout as JSON.
#[derive(Debug, serde::Serialize)]
pub struct BundleResult {
    pub bundle: PathBuf,
    pub release: String,
    pub kernel: String,
    /// The key that signed the bundle.
    pub key_id: String,
    /// The keys the new release's initramfs trusts for later bundles (comma-separated).
    pub update_key_id: String,
    /// When machines start refusing the bundle (Unix seconds), if ever.
    pub expires: Option<u64>,
    /// The same, as a UTC date.
    pub expires_utc: Option<String>,
    /// Key ids this bundle revokes.
    pub revokes: Vec<String>,
    pub total_bytes: u64,
    /// Whether the sections carry chunk indexes (machines can fetch only what changed).
    pub chunked: bool,
    pub sections: Vec<SectionInfo>,
    /// The apps in the slot, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<planet_config::app::SlotApp>,
    /// What a machine on `--estimate-from`'s release downloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<DownloadEstimate>,
}

/// `--estimate-from`: the download of a machine that holds the old bundle's sections.
#[derive(Debug, serde::Serialize)]
pub struct DownloadEstimate {
    pub from: PathBuf,
    /// Bytes fetched: the bundle's start (prelude, header, chunk indexes) and the chunks the
    /// machine does not hold.
    pub download_bytes: u64,
    /// The same as a share of the whole bundle, in percent.
    pub download_percent: f64,
    pub chunks: u64,
    pub fetch_chunks: u64,
}

/// What a machine holding `old`'s sections downloads to make the chunked bundle `new`.
pub fn estimate_download(new: &Path, old: &Path) -> Result<DownloadEstimate> {
    let (t, start) = planet_bundle::assemble::estimate(new, old)
        .with_context(|| format!("estimating the download from {}", old.display()))?;
    let total = std::fs::metadata(new).with_context(|| format!("reading {}", new.display()))?.len();
    let download_bytes = start + t.fetch_bytes;
    Ok(DownloadEstimate {
        from: old.to_path_buf(),
        download_bytes,
        download_percent: (download_bytes as f64 * 10_000.0 / total.max(1) as f64).round() / 100.0,
        chunks: t.chunks,
        fetch_chunks: t.fetch_chunks,
    })
}

#[derive(Debug, serde::Serialize)]
pub struct SectionInfo {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

impl From<&planet_bundle::Section> for SectionInfo {
    fn from(s: &planet_bundle::Section) -> Self {
        SectionInfo { name: s.name.clone(), offset: s.offset, size: s.size, sha256: s.sha256.clone() }
    }
}

pub fn run(req: &BundleRequest) -> Result<BundleResult> {
    let Some(release) = req.release.as_deref() else {
        bail!(
            "--release-version VERSION is required: machines install only bundles newer than the release \
             they run (natural order: 1.10 > 1.9), so every bundle needs its version"
        )
    };
    planet_bundle::check_release(release).context("--release-version")?;
    let key_text =
        std::fs::read_to_string(&req.key).with_context(|| format!("reading the secret key {}", req.key.display()))?;
    let key = SecretKey::parse(&key_text).with_context(|| format!("reading the secret key {}", req.key.display()))?;
    let update_key: KeyRing = match &req.update_key {
        Some(path) => pipeline::load_public_key(path)?,
        None => key.public().into(),
    };
    let claims = claims(req.expires.as_deref(), &req.revokes, &update_key, &key)?;
    if let Some(old) = &req.estimate_from {
        // Checked before the build, not after it.
        planet_bundle::read_unverified(old)
            .with_context(|| format!("--estimate-from {}: not a readable update bundle", old.display()))?;
        if !req.chunks {
            bail!("--estimate-from needs a chunked bundle: drop --no-chunks");
        }
    }
    let layout = pipeline::load_layout(req.layout.as_deref(), &req.profile, None, false)?;
    let cache = Cache::new(req.cache_dir.as_deref())?;
    let kernel_pkg = pipeline::kernel_package(&cache, &layout, req.kernel_package.as_deref())?;
    let planet_init = pipeline::load_planet_init(req.planet_init.as_deref())?;
    let source = RootfsSource::detect(&req.rootfs)?;

    let work = ScratchDir::new_in(&pipeline::dir_of(&req.output), WORK_PREFIX)?;
    let slot_image = work.path().join("rootfs.sqfs");
    // The slot and the host side by side, as `build` makes them.
    let host_inputs = HostInputs {
        kernel_package: &kernel_pkg,
        modules: &layout.kernel.modules,
        planet_init: &planet_init,
        update_key: Some(&update_key),
        epoch: req.epoch,
    };
    let host_cache = req.host_cache.then_some(cache.dir.as_path());
    let ((slot_summary, slot_bytes), host) = crate::host::beside(&host_inputs, host_cache, || {
        pipeline::build_slot(&source, &req.apps, &slot_image, req.compression, req.epoch)
    })?;
    if let Some(mib) = layout.slots.size_mib {
        if slot_bytes > mib << 20 {
            bail!(
                "the slot image is {} MiB, larger than the layout's {mib} MiB slots: machines with this \
                 layout cannot install it",
                slot_bytes.div_ceil(1 << 20)
            );
        }
    }
    let vmlinuz_path = work.path().join("vmlinuz");
    let initramfs_path = work.path().join("initramfs.img");
    std::fs::write(&vmlinuz_path, &host.vmlinuz).with_context(|| format!("writing {}", vmlinuz_path.display()))?;
    std::fs::write(&initramfs_path, &host.initramfs)
        .with_context(|| format!("writing {}", initramfs_path.display()))?;

    let step = crate::util::progress::Step::start("signing the bundle", 0);
    let sections: [(&str, &Path); 3] = [
        (planet_bundle::SECTION_ROOTFS, &slot_image),
        (planet_bundle::SECTION_KERNEL, &vmlinuz_path),
        (planet_bundle::SECTION_INITRAMFS, &initramfs_path),
    ];
    let options = planet_bundle::WriteOptions {
        claims,
        chunks: req.chunks.then_some(planet_bundle::chunks::ChunkParams::DEFAULT),
    };
    planet_bundle::write_bundle_opts(&req.output, release, req.epoch, &host.kernel_version, &sections, &key, &options)
        .with_context(|| format!("writing the bundle {}", req.output.display()))?;
    step.finish("");

    // Read back what was written, as a machine will.
    let (prelude, header) = planet_bundle::verify_file(&req.output, &key.public())
        .with_context(|| format!("verifying the bundle just written, {}", req.output.display()))?;
    let estimate = match &req.estimate_from {
        Some(old) => {
            let e = estimate_download(&req.output, old)?;
            eprintln!(
                "a machine running the release of {} downloads {} bytes of this bundle's {} ({}%: {} of {} chunks)",
                old.display(),
                e.download_bytes,
                prelude.total_bytes,
                e.download_percent,
                e.fetch_chunks,
                e.chunks
            );
            Some(e)
        }
        None => None,
    };
    Ok(BundleResult {
        bundle: req.output.clone(),
        release: prelude.release,
        kernel: header.kernel.clone(),
        key_id: prelude.key_id,
        update_key_id: update_key.key_id_hex(),
        expires: prelude.expires,
        expires_utc: prelude.expires.map(planet_bundle::format_utc),
        revokes: prelude.revokes,
        total_bytes: prelude.total_bytes,
        chunked: prelude.head.is_some(),
        sections: header.sections.iter().map(SectionInfo::from).collect(),
        apps: slot_summary.apps,
        estimate,
    })
}

/// The signed claims from `--expires` and `--revoke`, checked before anything is built.
fn claims(expires: Option<&str>, revokes: &[String], update_key: &KeyRing, key: &SecretKey) -> Result<Claims> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let expires = expires.map(|t| planet_bundle::parse_expiry(t, now)).transpose().context("--expires")?;
    let mut ids = Vec::new();
    for r in revokes {
        let id = r.trim().to_ascii_uppercase();
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--revoke {r:?}: expected a key id, 16 hex digits as keygen and minisign print it");
        }
        if id == key.key_id_hex() {
            bail!("--revoke {id}: that is the key signing this bundle (--key)");
        }
        if update_key.find(&id).is_some() {
            bail!("--revoke {id}: the new release's --update-key file still trusts that key; drop it from the file");
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > planet_bundle::MAX_REVOKES {
        bail!("--revoke: at most {} keys per bundle", planet_bundle::MAX_REVOKES);
    }
    Ok(Claims { expires, revokes: ids, head: None })
}

/// Whether `path` starts with the bundle magic.
pub fn is_bundle_file(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = Vec::new();
    Read::by_ref(&mut f).take(planet_bundle::MAGIC.len() as u64).read_to_end(&mut magic)?;
    Ok(planet_bundle::is_bundle(&magic))
}

/// What `inspect` prints for a bundle.
#[derive(Debug, serde::Serialize)]
pub struct BundleInspection {
    pub bundle: PathBuf,
    pub format: u32,
    pub release: String,
    pub created: u64,
    pub kernel: String,
    /// The key that signed it.
    pub key_id: String,
    /// When machines start refusing the bundle (Unix seconds); `null`: never.
    pub expires: Option<u64>,
    /// The same as a UTC date.
    pub expires_utc: Option<String>,
    /// Whether that time has passed by this computer's clock.
    pub expired: bool,
    /// Key ids the bundle revokes on machines that trust its signer.
    pub revokes: Vec<String>,
    pub total_bytes: u64,
    /// Whether the sections carry chunk indexes (`chunks-*` sections; docs/updates.md).
    pub chunked: bool,
    pub sections: Vec<SectionInfo>,
    /// Signature, size and section digests checked against `--key`; without one, nothing is.
    pub verified: bool,
    /// With `--estimate-from`: what a machine on that bundle's release downloads for this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<DownloadEstimate>,
}

/// A bundle's prelude and header; with `key`, everything verified (an error if anything fails);
/// with `estimate_from` (an earlier bundle), the download of a machine on its release.
pub fn inspect(path: &Path, key: Option<&Path>, estimate_from: Option<&Path>) -> Result<BundleInspection> {
    let (prelude, header) = match key {
        Some(k) => {
            let keys: KeyRing = pipeline::load_public_key(k)?;
            planet_bundle::verify_file_ring(path, &keys)
                .with_context(|| format!("verifying the update bundle {}", path.display()))?
        }
        None => planet_bundle::read_unverified(path).with_context(|| format!("reading {}", path.display()))?,
    };
    Ok(BundleInspection {
        bundle: path.to_path_buf(),
        format: prelude.format,
        release: prelude.release.clone(),
        created: header.created,
        kernel: header.kernel.clone(),
        key_id: prelude.key_id.clone(),
        expires: prelude.expires,
        expires_utc: prelude.expires.map(planet_bundle::format_utc),
        expired: prelude.expires.is_some_and(|t| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) >= t
        }),
        revokes: prelude.revokes.clone(),
        total_bytes: prelude.total_bytes,
        chunked: prelude.head.is_some(),
        sections: header.sections.iter().map(SectionInfo::from).collect(),
        verified: prelude.is_verified(),
        estimate: estimate_from.map(|old| estimate_download(path, old)).transpose()?,
    })
}
