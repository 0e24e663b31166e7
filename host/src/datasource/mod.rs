//! cloud-init datasources: where a machine's configuration comes from when the kernel command
//! line does not give it all. One module per source behind [`Datasource`] (afterburn's shape):
//! NoCloud (a `cidata` filesystem, or `ds=nocloud;s=URL/`), OpenStack ConfigDrive (`config-2`),
//! EC2 (IMDSv2) and GCE. The parsing itself is planet-config's, shared with the builder.

pub mod configdrive;
pub mod ec2;
pub mod gce;
pub mod nocloud;
#[cfg(test)]
mod testserver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use planet_config::cloudconfig::{self, NicInfo};
use planet_config::{CmdlineConfig, NetworkConfig, RawConfig, Source};

/// What a datasource found.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// From user-data (and meta-data defaults such as the hostname).
    pub config: RawConfig,
    /// Static network settings (network-config, network_data.json), already matched to NICs.
    pub network: NetworkConfig,
    pub instance_id: Option<String>,
    /// Things skipped on the way (MIME parts of other types), printed as notices.
    pub notices: Vec<String>,
}

impl Fetched {
    /// Applies user-data bytes: the `#cloud-config` settings win over meta-data defaults.
    pub fn apply_user_data(&mut self, bytes: &[u8]) -> Result<()> {
        let (raw, notices) = cloudconfig::user_data_config(bytes).context("reading the user-data")?;
        self.notices.extend(notices);
        self.config = std::mem::take(&mut self.config).merge(raw);
        Ok(())
    }
}

/// What every source can use.
pub struct Context {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    /// Where filesystems are mounted while they are read.
    pub mount_dir: PathBuf,
    /// `planet.metadata_url=` (tests), else each source's real endpoint.
    pub metadata_url: Option<String>,
    /// `ds=nocloud;s=URL/` from the command line.
    pub nocloud_url: Option<String>,
    pub nics: Vec<NicInfo>,
    pub deadline: Instant,
}

impl Context {
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// One source of cloud-init data.
pub trait Datasource {
    fn name(&self) -> &'static str;
    fn source(&self) -> Source;
    /// Whether the network must be up first (metadata servers, NoCloud over HTTP).
    fn needs_network(&self, _ctx: &Context) -> bool {
        false
    }
    /// Whether this machine shows signs of this source (DMI vendor, a labelled filesystem).
    fn detect(&self, _ctx: &Context) -> bool {
        false
    }
    /// Whether DMI names this source's platform beyond doubt (vendor or product "Amazon EC2",
    /// "Google"): such a source wins over any labelled filesystem, which anyone who can attach
    /// a disk (or a pod formatting a raw block volume) can make. Weaker hints (an EC2-looking
    /// product UUID, which one random UUID in 4096 has) only count in [`Datasource::detect`].
    fn identifies_platform(&self, _ctx: &Context) -> bool {
        false
    }
    /// Reads the data; an error says why this source gave nothing.
    fn fetch(&self, ctx: &Context) -> Result<Fetched>;
}

/// Every source, in the order they are tried when nothing is detected.
pub fn all() -> Vec<Box<dyn Datasource>> {
    vec![Box::new(nocloud::NoCloud), Box::new(configdrive::ConfigDrive), Box::new(ec2::Ec2), Box::new(gce::Gce)]
}

/// Datasource parameters from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// `planet.datasource=nocloud|configdrive|ec2|gce|none`.
    pub choice: Option<String>,
    pub metadata_url: Option<String>,
    pub nocloud_url: Option<String>,
    /// `planet.datasource_timeout=SECONDS`: the total deadline, default 120.
    pub timeout: Duration,
}

impl Params {
    pub fn from_cmdline(line: &str, cmd: &CmdlineConfig) -> Result<Params> {
        let choice = cmd.param("datasource").map(str::to_string);
        if let Some(c) = &choice {
            if !["nocloud", "configdrive", "ec2", "gce", "none", "cmdline"].contains(&c.as_str()) {
                bail!("planet.datasource={c:?} is invalid: expected nocloud, configdrive, ec2, gce or none");
            }
        }
        let timeout = match cmd.param("datasource_timeout") {
            None => Duration::from_secs(120),
            Some(v) => Duration::from_secs(
                v.parse()
                    .map_err(|_| anyhow::anyhow!("planet.datasource_timeout={v:?} is invalid: expected seconds"))?,
            ),
        };
        let mut nocloud_url = None;
        for word in planet_config::split_cmdline(line) {
            if let Some(rest) = word.strip_prefix("ds=") {
                let mut parts = rest.split(';');
                let kind = parts.next().unwrap_or("");
                if kind == "nocloud" || kind == "nocloud-net" {
                    for p in parts {
                        if let Some(u) = p.strip_prefix("s=").or_else(|| p.strip_prefix("seedfrom=")) {
                            nocloud_url = Some(u.to_string());
                        }
                    }
                }
            }
        }
        Ok(Params { choice, metadata_url: cmd.param("metadata_url").map(str::to_string), nocloud_url, timeout })
    }
}

/// Which sources to try: the one named on the command line; else the one detected (a platform
/// DMI names before a labelled filesystem); else, when the command line already has a role,
/// none (the command line is the configuration); else all of them in order.
pub fn plan(params: &Params, cmd: &CmdlineConfig, ctx: &Context) -> Vec<Box<dyn Datasource>> {
    let mut sources = all();
    match params.choice.as_deref() {
        Some("none") | Some("cmdline") => return Vec::new(),
        Some(name) => {
            sources.retain(|s| s.name() == name);
            return sources;
        }
        None => {}
    }
    if params.nocloud_url.is_some() {
        sources.retain(|s| s.name() == "nocloud");
        return sources;
    }
    if let Some(i) = sources.iter().position(|s| s.identifies_platform(ctx)) {
        return vec![sources.swap_remove(i)];
    }
    if let Some(i) = sources.iter().position(|s| s.detect(ctx)) {
        return vec![sources.swap_remove(i)];
    }
    if cmd.config.role.is_some() {
        return Vec::new();
    }
    sources
}

/// Tries each source until one answers; each failure is printed and added to `why`.
pub fn try_sources(sources: &[&dyn Datasource], ctx: &Context, why: &mut Vec<String>) -> Option<(Source, Fetched)> {
    for s in sources {
        match s.fetch(ctx) {
            Ok(f) => {
                crate::event!("datasource", name = s.name(), instance_id = f.instance_id.as_deref().unwrap_or("none"),);
                for n in &f.notices {
                    crate::event!("datasource notice", name = s.name(), note = n);
                }
                return Some((s.source(), f));
            }
            Err(e) => {
                crate::event!("datasource failed", name = s.name(), error = format!("{e:#}"));
                why.push(format!("{}: {e:#}", s.name()));
            }
        }
    }
    None
}

/// The error when every source failed: which were tried and why each failed.
pub fn none_answered(why: &[String]) -> anyhow::Error {
    anyhow::anyhow!("no cloud-init data: tried {}", why.join("; "))
}

/// The NICs as `match:` rules see them.
pub fn nic_info(sysfs: &Path) -> Vec<NicInfo> {
    crate::net::physical_nics(sysfs)
        .into_iter()
        .map(|n| NicInfo { name: n.name, mac: n.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":") })
        .collect()
}

/// DMI strings (`sys_vendor`, `product_name`, `product_uuid`, …), empty when unreadable.
pub fn dmi(sysfs: &Path, field: &str) -> String {
    std::fs::read_to_string(sysfs.join("class/dmi/id").join(field)).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Calls `f` until it succeeds, with backoff 0.5, 1, 2, 4… s (at most 5 s), until the deadline.
pub fn retry<T>(ctx: &Context, what: &str, mut f: impl FnMut(Duration) -> Result<Attempt<T>>) -> Result<T> {
    let mut delay = Duration::from_millis(500);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let per_try = ctx.remaining().min(Duration::from_secs(5));
        let last = match f(per_try) {
            Ok(Attempt::Done(v)) => return Ok(v),
            Ok(Attempt::Fatal(e)) => return Err(e),
            Err(e) => e,
        };
        if ctx.remaining() <= delay {
            return Err(last).with_context(|| {
                format!("{what}: no answer within the deadline ({attempts} attempts; planet.datasource_timeout)")
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The outcome of one try inside [`retry`]: an `Err` is retried, these are not.
pub enum Attempt<T> {
    Done(T),
    Fatal(anyhow::Error),
}

// ---- filesystems with a label ----

/// A filesystem found by its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    pub device: String,
    pub fstype: &'static str,
}

/// The label and type of a vfat or iso9660 filesystem from its first 64 KiB (+2 KiB).
pub fn probe_label(head: &[u8]) -> Option<(String, &'static str)> {
    // ISO 9660: primary volume descriptor at 32 KiB, "CD001", volume id at +40 (32 bytes).
    if head.len() >= 32768 + 72 && &head[32769..32774] == b"CD001" && head[32768] == 1 {
        let id = String::from_utf8_lossy(&head[32768 + 40..32768 + 72]).trim().to_string();
        return Some((id, "iso9660"));
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        // FAT32: "FAT32   " at 0x52, label at 0x47; FAT12/16: "FAT" at 0x36, label at 0x2B.
        if &head[0x52..0x57] == b"FAT32" && head[0x42] == 0x29 {
            return Some((String::from_utf8_lossy(&head[0x47..0x52]).trim().to_string(), "vfat"));
        }
        if &head[0x36..0x39] == b"FAT" && head[0x26] == 0x29 {
            return Some((String::from_utf8_lossy(&head[0x2B..0x36]).trim().to_string(), "vfat"));
        }
    }
    None
}

/// Block devices (disks and partitions) carrying a filesystem labelled one of `labels`.
pub fn find_labelled(ctx: &Context, labels: &[&str]) -> Vec<Labelled> {
    let mut out = Vec::new();
    for b in crate::disk::scan(&ctx.sysfs).unwrap_or_default() {
        if b.size_512 == 0 || b.name.starts_with("loop") || b.name.starts_with("ram") {
            continue;
        }
        let path = ctx.dev.join(&b.name);
        let Ok(mut f) = std::fs::File::open(&path) else { continue };
        let mut head = vec![0u8; 34816];
        let mut n = 0;
        while n < head.len() {
            match std::io::Read::read(&mut f, &mut head[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        head.truncate(n);
        if let Some((label, fstype)) = probe_label(&head) {
            if labels.contains(&label.as_str()) {
                out.push(Labelled { device: b.name.clone(), fstype });
            }
        }
    }
    out
}

/// Mounts a labelled filesystem read-only, runs `f` on its root, unmounts.
pub fn with_mounted<T>(ctx: &Context, fs: &Labelled, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let target = ctx.mount_dir.join(&fs.device);
    crate::mounts::Mount::new(&ctx.dev.join(&fs.device).display().to_string(), &target, fs.fstype)
        .flags(libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC)
        .perform()?;
    let r = f(&target);
    let _ = crate::sys::umount(&target, 0);
    let _ = std::fs::remove_dir(&target);
    r
}

/// Largest seed file read (user-data is decoded within 1 MiB; JSON and YAML files are small).
const MAX_SEED_FILE: u64 = 4 << 20;

/// Reads an optional seed file: `Ok(None)` when it does not exist. The seed is a filesystem
/// anyone may have made: a symlink (to `/dev/zero`, say) is refused rather than followed, only
/// a regular file is read, and at most [`MAX_SEED_FILE`] bytes of it.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    // A symlinked directory on the seed (`openstack -> /`) would lead out of it just the same.
    if let Some(dir) = path.parent() {
        match dir.canonicalize() {
            Ok(real) if real != dir => bail!("{} has a symbolic link in its path; seed files must not", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
    }
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            bail!("{} is a symbolic link; seed files must be regular files", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let meta = f.metadata().with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() > MAX_SEED_FILE {
        bail!("{} is {} bytes, more than the {MAX_SEED_FILE} a seed file may have", path.display(), meta.len());
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&f, MAX_SEED_FILE + 1), &mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    if out.len() as u64 > MAX_SEED_FILE {
        bail!("{} grew past {MAX_SEED_FILE} bytes while being read", path.display());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(sysfs: &Path) -> Context {
        Context {
            sysfs: sysfs.to_path_buf(),
            dev: sysfs.join("dev"),
            mount_dir: sysfs.join("mnt"),
            metadata_url: None,
            nocloud_url: None,
            nics: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(1),
        }
    }

    /// The first sectors of a FAT32 filesystem labelled `CIDATA`, as `probe_label` reads them.
    fn cidata_fat() -> Vec<u8> {
        let mut fat = vec![0u8; 34816];
        fat[0x42] = 0x29;
        fat[0x47..0x52].copy_from_slice(b"CIDATA     ");
        fat[0x52..0x5A].copy_from_slice(b"FAT32   ");
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat
    }

    #[test]
    fn fat_and_iso_labels_are_found() {
        let fat = cidata_fat();
        assert_eq!(probe_label(&fat), Some(("CIDATA".into(), "vfat")));
        let mut iso = vec![0u8; 34816];
        iso[32768] = 1;
        iso[32769..32774].copy_from_slice(b"CD001");
        iso[32768 + 40..32768 + 72].copy_from_slice(b"config-2                        ");
        assert_eq!(probe_label(&iso), Some(("config-2".into(), "iso9660")));
        assert_eq!(probe_label(&[0u8; 4096]), None);
    }

    #[test]
    fn params_and_plan() {
        let line = "console=ttyS0 planet.datasource_timeout=7 ds=nocloud;s=http://10.0.2.100/seed/";
        let cmd = CmdlineConfig::parse(line).unwrap();
        let p = Params::from_cmdline(line, &cmd).unwrap();
        assert_eq!(p.timeout, Duration::from_secs(7));
        assert_eq!(p.nocloud_url.as_deref(), Some("http://10.0.2.100/seed/"));
        let tmp = tempfile::tempdir().unwrap();
        let names = |v: Vec<Box<dyn Datasource>>| v.iter().map(|s| s.name()).collect::<Vec<_>>();
        assert_eq!(names(plan(&p, &cmd, &ctx(tmp.path()))), ["nocloud"]);
        let cmd = CmdlineConfig::parse("planet.role=dev").unwrap();
        let p = Params::from_cmdline("planet.role=dev", &cmd).unwrap();
        assert!(plan(&p, &cmd, &ctx(tmp.path())).is_empty());
        let cmd = CmdlineConfig::parse("").unwrap();
        let p = Params::from_cmdline("", &cmd).unwrap();
        assert_eq!(names(plan(&p, &cmd, &ctx(tmp.path()))), ["nocloud", "configdrive", "ec2", "gce"]);
        let dmi = tmp.path().join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "Google\n").unwrap();
        assert_eq!(names(plan(&p, &cmd, &ctx(tmp.path()))), ["gce"]);
        let cmd = CmdlineConfig::parse("planet.datasource=bogus").unwrap();
        assert!(Params::from_cmdline("", &cmd).is_err());
    }

    #[test]
    fn seed_files_are_regular_files_of_bounded_size() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        let d = real.as_path();
        assert_eq!(read_optional(&d.join("missing")).unwrap(), None);
        assert_eq!(read_optional(&d.join("no/such/dir/file")).unwrap(), None);
        std::fs::write(d.join("user-data"), "#cloud-config\n").unwrap();
        assert_eq!(read_optional(&d.join("user-data")).unwrap().unwrap(), b"#cloud-config\n");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        let e = read_optional(&d.join("zero")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = read_optional(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::os::unix::fs::symlink("/etc", d.join("etc")).unwrap();
        let e = read_optional(&d.join("etc/hostname")).unwrap_err().to_string();
        assert!(e.contains("symbolic link in its path"), "{e}");
        std::fs::create_dir(d.join("dir")).unwrap();
        assert!(read_optional(&d.join("dir")).is_err());
        let big = std::fs::File::create(d.join("big")).unwrap();
        big.set_len(50 << 30).unwrap();
        let e = read_optional(&d.join("big")).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn a_platform_named_by_dmi_wins_over_a_labelled_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A disk vdb carrying a vfat filesystem labelled CIDATA.
        let block = root.join("class/block/vdb");
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(block.join("size"), "2048\n").unwrap();
        std::fs::write(block.join("uevent"), "MAJOR=254\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n").unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        let fat = cidata_fat();
        std::fs::write(root.join("dev/vdb"), &fat).unwrap();
        let cmd = CmdlineConfig::parse("").unwrap();
        let p = Params::from_cmdline("", &cmd).unwrap();
        let names = |v: Vec<Box<dyn Datasource>>| v.iter().map(|s| s.name()).collect::<Vec<_>>();
        let c = ctx(root);
        assert!(!find_labelled(&c, &["CIDATA"]).is_empty(), "the fake disk is not seen");
        assert_eq!(names(plan(&p, &cmd, &c)), ["nocloud"]);
        let dmi = root.join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        // A product UUID that merely starts with "ec2" (as one random UUID in 4096 does) is not
        // enough to ignore the seed.
        std::fs::write(dmi.join("product_uuid"), "EC2A1B2C-0000-4000-8000-000000000000\n").unwrap();
        assert_eq!(names(plan(&p, &cmd, &c)), ["nocloud"]);
        std::fs::write(dmi.join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(names(plan(&p, &cmd, &c)), ["ec2"]);
        std::fs::write(dmi.join("sys_vendor"), "Google\n").unwrap();
        assert_eq!(names(plan(&p, &cmd, &c)), ["gce"]);
        // The operator can still choose NoCloud explicitly.
        let cmd = CmdlineConfig::parse("planet.datasource=nocloud").unwrap();
        let p = Params::from_cmdline("", &cmd).unwrap();
        assert_eq!(names(plan(&p, &cmd, &c)), ["nocloud"]);
    }

    #[test]
    fn failures_name_every_source() {
        struct Broken(&'static str);
        impl Datasource for Broken {
            fn name(&self) -> &'static str {
                self.0
            }
            fn source(&self) -> Source {
                Source::NoCloud
            }
            fn fetch(&self, _: &Context) -> Result<Fetched> {
                bail!("nothing here")
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (Broken("a"), Broken("b"));
        let mut why = Vec::new();
        assert!(try_sources(&[&a, &b], &ctx(tmp.path()), &mut why).is_none());
        assert_eq!(none_answered(&why).to_string(), "no cloud-init data: tried a: nothing here; b: nothing here");
    }
}
