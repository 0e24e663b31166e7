//! `planet-image build`'s pipeline: rootfs → squashfs slot, kernel package → kernel + modules →
//! initramfs, boot loader → ESP, empty ext4 state, all placed by the plan into a sparse raw disk,
//! then converted (qcow2) and described by a manifest. Outputs appear only when complete.
//!
//! The stages that make a slot — the squashfs, the kernel and the initramfs — are functions of
//! their own (`load_layout`, `kernel_package`, `load_planet_init`, `build_slot`, and
//! [`crate::host`], cached by its inputs), shared with `bundle`, which puts the same files into
//! a signed update bundle. The slot and the host are made side by side.

use crate::disk::plan::{self, Plan, BIOS_LABEL};
use crate::disk::{self, Content};
use crate::esp::{self, SlotBoot};
use crate::fetch::{Cache, PackageRecord, SYSTEMD_BOOT_PATH};
use crate::host::{self, HostInputs};
use crate::layout::Layout;
use crate::manifest::{self, ImageInfo, KernelInfo, Manifest, PackageInfo, PartitionInfo, PlanetInitInfo, RootfsInfo};
use crate::rootfs::{RootfsSource, RootfsSummary};
use crate::squashfs::{self, Compression};
use crate::util::atomic::PendingFile;
use crate::util::command::require_tool;
use crate::util::digest::{sha256_file, sha256_hex};
use crate::util::progress::Step;
use crate::util::ScratchDir;
use crate::{deb, initramfs};
use anyhow::{bail, Context, Result};
use planet_config::contract::{ESP_LABEL, SLOT_A_LABEL, SLOT_B_LABEL, STATE_LABEL};
use std::path::{Path, PathBuf};

/// The work directory's name beside the output (same filesystem, so big files never cross
/// devices), removed when the build ends, successfully or not.
pub const WORK_PREFIX: &str = ".planet-image-work-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    /// A raw GPT disk (sparse file), for `dd` onto a disk or any hypervisor.
    Raw,
    /// A qcow2 image, for QEMU/KVM.
    Qcow2,
    /// An AMI registered in your AWS account through the EBS direct APIs (the raw image is
    /// uploaded; it is kept only with -o).
    Ami,
    /// A GCE image archive: disk.raw (whole GiB) as a sparse member of a gzip'd GNU tar.
    Gce,
}

impl Target {
    /// Kernel arguments of the platform profile, after the layout's own.
    fn profile_cmdline(self, layout_cmdline: &str) -> String {
        match self {
            // GCE's serial console runs at 38400 baud; its metadata server is the datasource.
            Target::Gce => {
                let args: Vec<String> = layout_cmdline
                    .split_whitespace()
                    .map(|a| if a == "console=ttyS0" { "console=ttyS0,38400n8".to_string() } else { a.to_string() })
                    .collect();
                format!("{} planet.datasource=gce", args.join(" "))
            }
            _ => layout_cmdline.trim().to_string(),
        }
    }
}

/// Everything `build` needs, already resolved from the command line.
pub struct BuildRequest {
    pub target: Target,
    pub rootfs: PathBuf,
    pub output: PathBuf,
    pub layout: Option<PathBuf>,
    /// Built-in layout when `layout` is not given: `default` or `metal`.
    pub profile: String,
    /// Overrides the layout's logical sector size (512 or 4096).
    pub sector_size: Option<u64>,
    pub cmdline: Option<String>,
    /// Adds legacy BIOS boot (GRUB i386-pc) beside UEFI; the layout's `[bios]` section.
    pub bios: bool,
    pub kernel_package: Option<PathBuf>,
    pub bootloader_package: Option<PathBuf>,
    pub planet_init: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub compression: Compression,
    /// SOURCE_DATE_EPOCH: every timestamp the builder makes up.
    pub epoch: u64,
    /// The release version in the boot entry and the manifest [default: the first 12 hex digits
    /// of the rootfs digest].
    pub release: Option<String>,
    /// A minisign public key (file) that update bundles must be signed with: placed into the
    /// initramfs at `etc/planet/update.pub`.
    pub update_key: Option<PathBuf>,
    /// App packages (`app build`'s .app files) added to the slot, applied in this order.
    pub apps: Vec<PathBuf>,
    /// Use (and fill) the host stage cache in the package cache's `host/`.
    pub host_cache: bool,
}

/// The result, printed on stdout as JSON.
#[derive(Debug, serde::Serialize)]
pub struct BuildResult {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub sha256: String,
    pub disk_size: u64,
}

pub fn run(req: &BuildRequest) -> Result<BuildResult> {
    let layout = load_layout(req.layout.as_deref(), &req.profile, req.sector_size, req.bios)?;
    if let Some(r) = &req.release {
        planet_bundle::check_release(r).context("--release-version")?;
    }
    if let Some(extra) = &req.cmdline {
        // planet-init refuses what does not parse (planet.env above all, whose secrets would
        // be baked into the image and its manifest): say so now, not at the first boot.
        planet_config::CmdlineConfig::parse(extra).map_err(|e| anyhow::anyhow!("--cmdline: {e}"))?;
    }
    let update_key = req.update_key.as_deref().map(load_public_key).transpose()?;
    let cache = Cache::new(req.cache_dir.as_deref())?;
    let kernel_pkg = kernel_package(&cache, &layout, req.kernel_package.as_deref())?;
    let boot_pkg = package(&cache, "bootloader", req.bootloader_package.as_deref())?;
    let bios_pkg = match layout.bios.enabled {
        true => {
            crate::util::command::require_tool("grub-mkimage", "grub-common")
                .context("legacy BIOS boot (--bios) makes GRUB's core.img with grub-mkimage")?;
            Some(cache.package("bios")?)
        }
        false => None,
    };
    let planet_init = load_planet_init(req.planet_init.as_deref())?;
    let source = RootfsSource::detect(&req.rootfs)?;
    if req.target == Target::Qcow2 {
        require_tool("qemu-img", "qemu-utils")?;
    }

    let work = ScratchDir::new_in(&dir_of(&req.output), WORK_PREFIX)?;

    // 1 and 2 side by side: the slot (rootfs → squashfs, streamed) and the host (kernel,
    // modules, initramfs; cached by its inputs).
    let slot_image = work.path().join("planet-a.sqfs");
    let host_inputs = HostInputs {
        kernel_package: &kernel_pkg,
        modules: &layout.kernel.modules,
        planet_init: &planet_init,
        update_key: update_key.as_ref(),
        epoch: req.epoch,
    };
    let host_cache = req.host_cache.then_some(cache.dir.as_path());
    let ((rootfs, slot_bytes), host) = host::beside(&host_inputs, host_cache, || {
        build_slot(&source, &req.apps, &slot_image, req.compression, req.epoch)
    })?;

    crate::util::interrupt::check()?;
    let bootloader = read_from_deb(&boot_pkg.file, SYSTEMD_BOOT_PATH)?;

    // 3. The plan: everything derived from a digest of all inputs.
    let mut options = req.target.profile_cmdline(&layout.boot.cmdline);
    options.push_str(" planet.slot=a");
    if let Some(extra) = req.cmdline.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        options.push(' ');
        options.push_str(extra);
    }
    let layout_text = toml::to_string(&layout)?;
    let mut input_text = format!(
        "rootfs={}\nkernel={}\nbootloader={}\nplanet-init={}\nlayout={}\ncmdline={}\ncompression={}\nepoch={}\n",
        rootfs.sha256,
        kernel_pkg.sha256,
        boot_pkg.sha256,
        sha256_hex(&planet_init),
        layout_text,
        options,
        req.compression,
        req.epoch
    );
    if let Some(b) = &bios_pkg {
        input_text.push_str(&format!("bios={}\n", b.sha256));
    }
    // Only when given, so images built without them stay what they were.
    if let Some(r) = &req.release {
        input_text.push_str(&format!("release={r}\n"));
    }
    if let Some(k) = &update_key {
        input_text.push_str(&format!("update-key={}\n", k.to_base64()));
    }
    for app in &rootfs.apps {
        input_text.push_str(&format!("app={} {}\n", app.name, app.sha256));
    }
    let input_digest = sha256_hex(input_text.as_bytes());
    // The boot entries pin the disk by its GPT GUID (derived from the input digest, as plan() does), so
    // planet-init boots only from this disk even when another planet disk is attached.
    let disk_guid = plan::derive_guid(&input_digest, "disk");
    options.push_str(&format!(" planet.{}={disk_guid}", planet_config::DISK_GUID_PARAM));
    let release = req.release.clone().unwrap_or_else(|| rootfs.sha256[..12].to_string());
    let slots = [SlotBoot {
        slot: 'a',
        title: "Planet (slot a)",
        version: &release,
        vmlinuz: &host.vmlinuz,
        initramfs: &host.initramfs,
        options: options.clone(),
    }];
    let grub_cfg = bios_pkg.as_ref().map(|_| crate::bios::grub_cfg(&slots));
    let extra_files: Vec<(&str, &[u8])> = grub_cfg.iter().map(|c| (crate::bios::GRUB_CFG_PATH, c.as_bytes())).collect();
    let esp_content = esp::content_bytes(&bootloader, &slots);
    let plan = plan::plan(
        &layout,
        esp_content,
        slot_bytes,
        &input_digest,
        if req.target == Target::Gce { 1 << 30 } else { 1 },
    )?;
    anyhow::ensure!(plan.disk_guid == disk_guid, "the disk GUID on the command line is not the table's");

    // 4. ESP and state filesystems.
    let step = Step::start("ESP + state", 0);
    let esp_part = plan.partition(ESP_LABEL);
    let volume_id = u32::from_le_bytes(plan::derive_bytes(&input_digest, "esp-volume-id")[..4].try_into().unwrap());
    let esp_image = esp::build(
        esp_part.size(plan.sector_size),
        plan.sector_size as u16,
        esp_part.first_lba as u32,
        volume_id,
        req.epoch,
        &bootloader,
        &slots,
        &extra_files,
    )?;
    let state_image = work.path().join("state.ext4");
    let state_uuid = plan::derive_guid(&input_digest, "state-fs").to_string().to_lowercase();
    disk::make_state_fs(
        &state_image,
        plan.partition(STATE_LABEL).size(plan.sector_size),
        &state_uuid,
        STATE_LABEL,
        req.epoch,
    )?;
    step.finish("");

    // 4b. Legacy BIOS boot: GRUB's core.img for the BIOS boot partition, boot.img for the MBR.
    let bios_boot = match (&bios_pkg, plan.find(BIOS_LABEL)) {
        (Some(pkg), Some(part)) => {
            let step = Step::start("GRUB for BIOS boot", 0);
            let b = crate::bios::build(&pkg.file, work.path(), part.first_lba, part.size(plan.sector_size), volume_id)?;
            step.finish(&format!("core.img={} KiB", b.core.len().div_ceil(1024)));
            Some(b)
        }
        _ => None,
    };

    crate::util::interrupt::check()?;
    // 5. The disk.
    let step = Step::start("assembling the disk", plan.total_bytes());
    let pending = PendingFile::new(&req.output)?;
    let raw_path = match req.target {
        Target::Raw | Target::Ami => pending.path().to_path_buf(),
        Target::Qcow2 | Target::Gce => work.path().join("disk.raw"),
    };
    let mut contents = vec![
        (ESP_LABEL, Content::Bytes(&esp_image)),
        (SLOT_A_LABEL, Content::File(&slot_image)),
        (SLOT_B_LABEL, Content::Empty),
        (STATE_LABEL, Content::File(&state_image)),
    ];
    if let Some(b) = &bios_boot {
        contents.push((BIOS_LABEL, Content::Bytes(&b.core)));
    }
    disk::assemble(&plan, &contents, &raw_path)?;
    if let Some(b) = &bios_boot {
        crate::bios::install_boot_code(&raw_path, &b.boot_code)
            .with_context(|| format!("writing GRUB's boot.img into the MBR of {}", raw_path.display()))?;
    }
    // One pass over the disk for every partition's digest and the whole disk's.
    let digests = disk::digests(&plan, &raw_path)?;
    let partitions = partition_infos(&plan, &digests);
    let raw_sha256 = digests.whole;
    step.finish(&format!("{} MiB", plan.total_bytes() >> 20));

    match req.target {
        Target::Qcow2 => {
            let step = Step::start("converting to qcow2", 0);
            crate::convert::qcow2(&raw_path, pending.path())?;
            step.finish("");
        }
        Target::Gce => {
            let step = Step::start("packing the GCE archive", 0);
            crate::convert::gce_archive(&raw_path, pending.path(), req.epoch)?;
            step.finish("");
        }
        Target::Raw | Target::Ami => {}
    }

    // A raw image is the disk just hashed.
    let sha256 = match req.target {
        Target::Raw | Target::Ami => raw_sha256.clone(),
        Target::Qcow2 | Target::Gce => sha256_file(pending.path())?,
    };
    let file_size = std::fs::metadata(pending.path())?.len();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        planet_image_version: env!("CARGO_PKG_VERSION").into(),
        image: ImageInfo {
            file: req.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            format: match req.target {
                Target::Raw | Target::Ami => "raw",
                Target::Qcow2 => "qcow2",
                Target::Gce => "gce",
            }
            .into(),
            sha256: sha256.clone(),
            file_size,
            disk_size: plan.total_bytes(),
            sector_size: plan.sector_size,
            disk_guid: plan.disk_guid.to_string(),
            raw_sha256,
        },
        partitions,
        rootfs: RootfsInfo { summary: rootfs.clone(), squashfs_bytes: slot_bytes },
        packages: [Some(&kernel_pkg), Some(&boot_pkg), bios_pkg.as_ref()]
            .into_iter()
            .flatten()
            .map(PackageInfo::from)
            .collect(),
        kernel: KernelInfo {
            version: host.kernel_version.clone(),
            modules: host.modules,
            initramfs_sha256: sha256_hex(&host.initramfs),
            initramfs_bytes: host.initramfs.len() as u64,
        },
        planet_init: PlanetInitInfo { version: env!("CARGO_PKG_VERSION").into(), sha256: sha256_hex(&planet_init) },
        layout,
        cmdline: options,
        compression: req.compression.to_string(),
        source_date_epoch: req.epoch,
        release,
        update_key_id: update_key.as_ref().map(|k| k.key_id_hex()),
        aws: None,
    };
    let manifest_path = manifest::path_for(&req.output);
    let manifest_pending = PendingFile::new(&manifest_path)?;
    std::fs::write(manifest_pending.path(), manifest.to_json()?)?;
    crate::util::interrupt::check()?;
    // The manifest first, the image last: the image's name appearing is what says the build is
    // done. A crash between the two leaves the new manifest beside the old image (or none),
    // which its sha256 shows at once, never a new image described by an old manifest.
    manifest_pending.commit()?;
    pending.commit()?;
    Ok(BuildResult { image: req.output.clone(), manifest: manifest_path, sha256, disk_size: plan.total_bytes() })
}

/// The layout: `--layout FILE` or the profile's, with the command line's overrides.
pub fn load_layout(file: Option<&Path>, profile: &str, sector_size: Option<u64>, bios: bool) -> Result<Layout> {
    let mut layout = Layout::load_profile(file, profile)?;
    if let Some(ss) = sector_size {
        layout.sector_size = ss;
        layout.validate()?;
    }
    if bios {
        layout.bios.enabled = true;
        layout.validate()?;
    }
    Ok(layout)
}

/// The kernel package: the one given, or the layout's from the cache.
pub fn kernel_package(cache: &Cache, layout: &Layout, explicit: Option<&Path>) -> Result<PackageRecord> {
    match explicit {
        Some(file) => package(cache, "kernel", Some(file)),
        None => cache.kernel_package(&layout.kernel.package),
    }
}

/// The static planet-init binary (see `find_planet_init`), checked.
pub fn load_planet_init(explicit: Option<&Path>) -> Result<Vec<u8>> {
    let path = find_planet_init(explicit)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    initramfs::check_static(&bytes).with_context(|| format!("checking {}", path.display()))?;
    Ok(bytes)
}

/// A minisign public key file (`keygen`'s NAME.pub, `minisign -G`'s), or several concatenated
/// (oldest first): the keys of a rotation's overlap window.
pub fn load_public_key(path: &Path) -> Result<planet_bundle::KeyRing> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the public key {}", path.display()))?;
    planet_bundle::KeyRing::parse(&text).with_context(|| format!("reading the public key {}", path.display()))
}

/// Stage 1, the slot: the rootfs streamed into a squashfs at `out`; its summary and size.
pub fn build_slot(
    source: &RootfsSource,
    apps: &[PathBuf],
    out: &Path,
    compression: Compression,
    epoch: u64,
) -> Result<(RootfsSummary, u64)> {
    let step = Step::start("rootfs → squashfs", 0);
    let summary = squashfs::write_slot_image(out, compression, epoch, |tar| source.stream_canonical_tar(tar, apps))
        .with_context(|| format!("building the slot image from {}", source.path().display()))?;
    let bytes = std::fs::metadata(out)?.len();
    step.finish(&format!("entries={} squashfs={} MiB", summary.entries, bytes >> 20));
    Ok((summary, bytes))
}

/// The directory a file is written into (`.` for a bare name).
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The manifest's partition entries: the plan's, with the digests taken of the disk.
pub fn partition_infos(plan: &Plan, digests: &disk::DiskDigests) -> Vec<PartitionInfo> {
    plan.partitions
        .iter()
        .zip(&digests.partitions)
        .enumerate()
        .map(|(i, (p, sha256))| PartitionInfo {
            number: i as u32 + 1,
            label: p.label.to_string(),
            type_guid: p.type_guid.to_string(),
            guid: p.unique_guid.to_string(),
            offset: p.offset(plan.sector_size),
            size: p.size(plan.sector_size),
            sha256: sha256.clone(),
        })
        .collect()
}

fn package(cache: &Cache, role: &str, explicit: Option<&Path>) -> Result<PackageRecord> {
    match explicit {
        Some(file) => {
            let (name, version) = deb::name_and_version(file)
                .with_context(|| format!("reading the {role} package {}", file.display()))?;
            Ok(PackageRecord {
                role: role.into(),
                source: file.display().to_string(),
                name,
                version,
                sha256: sha256_file(file)?,
                file: file.to_path_buf(),
            })
        }
        None => cache.package(role),
    }
}

fn read_from_deb(deb_path: &Path, inner: &str) -> Result<Vec<u8>> {
    let mut found = None;
    deb::for_each_data_entry(deb_path, |path, _, data| {
        if path == inner {
            let mut b = Vec::new();
            data.read_to_end(&mut b)?;
            found = Some(b);
        }
        Ok(())
    })?;
    found.with_context(|| format!("{} does not contain {inner}", deb_path.display()))
}

/// Where the Debian package puts planet-init: a package-private executable, so under
/// /usr/lib/PACKAGE (FHS: "internal binaries that are not intended to be executed directly").
pub const PACKAGED_PLANET_INIT: &str = "/usr/lib/planet-image/planet-init";

/// The planet-init a build uses and why that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanetInit {
    pub path: PathBuf,
    /// How it was found, for `--version` and errors: "--planet-init", "$PLANET_INIT", ...
    pub source: &'static str,
}

/// planet-init: `--planet-init`, `$PLANET_INIT`, beside this executable, `../lib/planet-image/`
/// from this executable's directory (an install under /usr or /usr/local), this workspace's
/// static build (when planet-image runs from its target directory), or the package's
/// /usr/lib/planet-image/planet-init. The first two are taken as given (a wrong one is an
/// error later, naming it); the others only if they are static executables.
pub fn find_planet_init(explicit: Option<&Path>) -> Result<PathBuf> {
    locate_planet_init(explicit).map(|p| p.path)
}

/// `find_planet_init`, saying where the binary came from.
pub fn locate_planet_init(explicit: Option<&Path>) -> Result<PlanetInit> {
    if let Some(p) = explicit {
        return Ok(PlanetInit { path: p.to_path_buf(), source: "--planet-init" });
    }
    if let Some(p) = std::env::var_os("PLANET_INIT").filter(|p| !p.is_empty()) {
        return Ok(PlanetInit { path: PathBuf::from(p), source: "$PLANET_INIT" });
    }
    let exe = std::env::current_exe().context("locating the planet-image executable")?;
    let dir = exe.parent().context("the executable has no directory")?;
    let mut candidates = vec![(dir.join("planet-init"), "beside planet-image")];
    if let Some(prefix) = dir.parent() {
        let installed = prefix.join("lib/planet-image/planet-init");
        let source = if installed == Path::new(PACKAGED_PLANET_INIT) {
            "the planet-image package"
        } else {
            "installed beside planet-image"
        };
        candidates.push((installed, source));
    }
    if let (Some(profile), Some(target)) = (dir.file_name(), dir.parent()) {
        // planet-init ships as a release build (build_all); a same-profile one is a fallback.
        let static_dir = target.join("x86_64-unknown-linux-gnu");
        candidates.push((static_dir.join("release").join("planet-init"), "this workspace's build"));
        if profile != "release" {
            candidates.push((static_dir.join(profile).join("planet-init"), "this workspace's build"));
        }
    }
    candidates.push((PathBuf::from(PACKAGED_PLANET_INIT), "the planet-image package"));
    let mut seen = Vec::new();
    for (c, source) in candidates {
        if seen.contains(&c) {
            continue;
        }
        if c.is_file() && std::fs::read(&c).map(|b| initramfs::check_static(&b).is_ok()).unwrap_or(false) {
            return Ok(PlanetInit { path: c, source });
        }
        seen.push(c);
    }
    bail!(
        "no static planet-init found (looked at {}); install the planet-image package (it has \
         {PACKAGED_PLANET_INIT}), set $PLANET_INIT or pass --planet-init, or in a checkout build it with \
         `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p planet-host --target x86_64-unknown-linux-gnu`",
        seen.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}
