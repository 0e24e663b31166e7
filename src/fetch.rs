//! `planet-image fetch`: the Debian packages an image is made of (kernel, boot loader, OVMF
//! firmware for `run`), downloaded with `apt-get download` into a cache and recorded with
//! their versions and digests, so builds are offline and the manifest says what went in.

use crate::deb;
use crate::util::atomic::write_file;
use crate::util::command::{require_tool, CommandExt};
use crate::util::digest::sha256_file;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages fetched by default, by role.
pub const BOOTLOADER_PACKAGE: &str = "systemd-boot-efi";
pub const FIRMWARE_PACKAGE: &str = "ovmf";
/// GRUB for PCs (i386-pc: boot.img, core image parts and modules), for `build --bios`.
pub const BIOS_PACKAGE: &str = "grub-pc-bin";
/// Inside the boot loader package.
pub const SYSTEMD_BOOT_PATH: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const OVMF_CODE: &str = "usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageRecord {
    /// `kernel`, `bootloader`, `firmware` or `bios`.
    pub role: String,
    /// The package that was asked for (for kernels, the meta package such as
    /// `linux-image-cloud-amd64`, which `name` resolves).
    #[serde(default)]
    pub source: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub file: PathBuf,
}

/// The package cache: `$PLANET_IMAGE_CACHE`, else `$XDG_CACHE_HOME/planet-image`, else
/// `~/.cache/planet-image`.
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    pub fn new(dir: Option<&Path>) -> Result<Cache> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => default_cache_dir()?,
        };
        Ok(Cache { dir })
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("packages.json")
    }

    pub fn records(&self) -> Result<Vec<PackageRecord>> {
        let p = self.index_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing {} (delete it and run `planet-image fetch`)", p.display()))
    }

    /// The cached package for `role`, with a hint to fetch when absent.
    pub fn package(&self, role: &str) -> Result<PackageRecord> {
        let rec = self.records()?.into_iter().find(|r| r.role == role).with_context(|| {
            format!("no {role} package in the cache {}: run `planet-image fetch` first", self.dir.display())
        })?;
        if !rec.file.is_file() {
            bail!("the cached {role} package {} is missing: run `planet-image fetch` again", rec.file.display());
        }
        verify(&rec, "planet-image fetch")?;
        Ok(rec)
    }

    pub fn ovmf_code(&self) -> PathBuf {
        self.dir.join("ovmf").join("OVMF_CODE_4M.fd")
    }

    pub fn ovmf_vars(&self) -> PathBuf {
        self.dir.join("ovmf").join("OVMF_VARS_4M.fd")
    }

    /// The cached kernel package that `meta` (e.g. `linux-image-cloud-amd64`) resolves to.
    pub fn kernel_package(&self, meta: &str) -> Result<PackageRecord> {
        let rec = self
            .records()?
            .into_iter()
            .find(|r| r.role == "kernel" && (r.source == meta || r.name == meta || resolves(meta, &r.name)))
            .with_context(|| {
                format!(
                    "no {meta} kernel in the cache {}: run `planet-image fetch --kernel {meta}`",
                    self.dir.display()
                )
            })?;
        if !rec.file.is_file() {
            bail!(
                "the cached kernel {} is missing: run `planet-image fetch --kernel {meta}` again",
                rec.file.display()
            );
        }
        verify(&rec, &format!("planet-image fetch --kernel {meta}"))?;
        Ok(rec)
    }

    /// Downloads the kernels (each meta package and its versioned image), the boot loader, the
    /// firmware and GRUB for legacy BIOS boot, and records them.
    pub fn fetch(&self, kernel_metas: &[String]) -> Result<Vec<PackageRecord>> {
        require_tool("apt-get", "apt")?;
        let debs = self.dir.join("debs");
        std::fs::create_dir_all(&debs).with_context(|| format!("creating the cache {}", debs.display()))?;
        let mut records = Vec::new();
        for meta in kernel_metas {
            let file = self.fetch_kernel(&debs, meta)?;
            let (name, version) = deb::name_and_version(&file)?;
            records.push(PackageRecord {
                role: "kernel".into(),
                source: meta.clone(),
                name,
                version,
                sha256: sha256_file(&file)?,
                file,
            });
        }
        let boot = download(&debs, BOOTLOADER_PACKAGE)?;
        let firmware = download(&debs, FIRMWARE_PACKAGE)?;
        self.extract_ovmf(&firmware)?;
        let bios = download(&debs, BIOS_PACKAGE)?;
        for (role, source, file) in [
            ("bootloader", BOOTLOADER_PACKAGE, boot),
            ("firmware", FIRMWARE_PACKAGE, firmware),
            ("bios", BIOS_PACKAGE, bios),
        ] {
            let (name, version) = deb::name_and_version(&file)?;
            records.push(PackageRecord {
                role: role.into(),
                source: source.into(),
                name,
                version,
                sha256: sha256_file(&file)?,
                file,
            });
        }
        write_file(&self.index_path(), serde_json::to_string_pretty(&records)?.as_bytes())?;
        Ok(records)
    }

    /// The meta package, then the versioned `linux-image-*` it depends on.
    fn fetch_kernel(&self, debs: &Path, kernel_meta: &str) -> Result<PathBuf> {
        let meta = download(debs, kernel_meta)?;
        let depends = deb::control_fields(&meta)?.get("Depends").cloned().unwrap_or_default();
        let image_pkg = depends
            .split(',')
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .map(str::to_string)
            .unwrap_or_else(|| kernel_meta.to_string());
        download(debs, &image_pkg)
    }

    fn extract_ovmf(&self, deb_path: &Path) -> Result<()> {
        let dir = self.dir.join("ovmf");
        std::fs::create_dir_all(&dir)?;
        let mut found = 0;
        deb::for_each_data_entry(deb_path, |path, _, data| {
            let dest = if path == OVMF_CODE {
                self.ovmf_code()
            } else if path == OVMF_VARS {
                self.ovmf_vars()
            } else {
                return Ok(());
            };
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            write_file(&dest, &bytes)?;
            found += 1;
            Ok(())
        })?;
        if found != 2 {
            bail!("{} does not contain {OVMF_CODE} and {OVMF_VARS}", deb_path.display());
        }
        Ok(())
    }
}

/// Checks a cached package against the sha256 recorded when it was fetched: the manifest lists
/// that digest as what went into the image, so a file changed since (bit rot, tampering) must
/// not be built in under it.
fn verify(rec: &PackageRecord, refetch: &str) -> Result<()> {
    let actual = sha256_file(&rec.file)?;
    if !actual.eq_ignore_ascii_case(&rec.sha256) {
        bail!(
            "the cached {} package {} has changed since it was fetched (sha256 {actual}, recorded {}): \
             delete it and run `{refetch}` again",
            rec.role,
            rec.file.display(),
            rec.sha256
        );
    }
    Ok(())
}

/// Whether a versioned kernel package (`linux-image-6.1.0-56-cloud-amd64`) is the one a meta
/// package (`linux-image-cloud-amd64`) depends on: same flavour, only a version in between.
fn resolves(meta: &str, name: &str) -> bool {
    let (Some(flavour), Some(rest)) = (meta.strip_prefix("linux-image-"), name.strip_prefix("linux-image-")) else {
        return false;
    };
    rest.strip_suffix(flavour).and_then(|v| v.strip_suffix('-')).is_some_and(|v| {
        v.starts_with(|c: char| c.is_ascii_digit()) && v.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    })
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("PLANET_IMAGE_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("planet-image"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set: pass --cache-dir")?;
    Ok(PathBuf::from(home).join(".cache").join("planet-image"))
}

/// `apt-get download NAME` into `dir`; returns the downloaded file.
fn download(dir: &Path, name: &str) -> Result<PathBuf> {
    eprintln!("planet-image: fetching {name}");
    // One version per package in the cache: the one apt resolves now.
    for old in debs_named(dir, name)? {
        std::fs::remove_file(&old).with_context(|| format!("removing the old {}", old.display()))?;
    }
    Command::new("apt-get")
        .args(["download", "-q", name])
        .current_dir(dir)
        .run_checked()
        .with_context(|| format!("downloading {name} (run `apt-get update` if the package is unknown)"))?;
    let mut found = debs_named(dir, name)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("apt-get download {name} left {n} matching .deb files in {}", dir.display()),
    }
}

/// apt names downloads NAME_VERSION_ARCH.deb.
fn debs_named(dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
                .unwrap_or(false)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_cached_package_that_changed_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("linux-image-6.1.0-1-cloud-amd64_6.1.4-1_amd64.deb");
        std::fs::write(&deb, b"!<arch>\nthe package").unwrap();
        let rec = |role: &str| PackageRecord {
            role: role.into(),
            source: "linux-image-cloud-amd64".into(),
            name: "linux-image-6.1.0-1-cloud-amd64".into(),
            version: "6.1.4-1".into(),
            sha256: sha256_file(&deb).unwrap(),
            file: deb.clone(),
        };
        std::fs::write(
            tmp.path().join("packages.json"),
            serde_json::to_string(&[rec("kernel"), rec("bootloader")]).unwrap(),
        )
        .unwrap();
        let cache = Cache::new(Some(tmp.path())).unwrap();
        cache.kernel_package("linux-image-cloud-amd64").unwrap();
        cache.package("bootloader").unwrap();
        // `ar` ignores trailing data: the package still reads, but it is not what was recorded.
        std::fs::OpenOptions::new().append(true).open(&deb).unwrap().write_all(b"x").unwrap();
        for e in
            [cache.kernel_package("linux-image-cloud-amd64").unwrap_err(), cache.package("bootloader").unwrap_err()]
        {
            let e = format!("{e:#}");
            assert!(e.contains(&deb.display().to_string()) && e.contains("changed"), "{e}");
        }
    }

    #[test]
    fn meta_packages_resolve_to_their_own_flavour_only() {
        assert!(super::resolves("linux-image-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64"));
        assert!(super::resolves("linux-image-amd64", "linux-image-6.1.0-56-amd64"));
        assert!(!super::resolves("linux-image-amd64", "linux-image-6.1.0-56-cloud-amd64"));
    }
}
