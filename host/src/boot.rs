//! The boot sequence. Every input — command line, sysfs, /dev, module tables, where things are
//! mounted — comes from a [`BootEnv`], so the steps can be pointed at fake trees in tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use planet_config::{CmdlineConfig, PlanetConfig, Source, DISK_GUID_PARAM};
use planet_gpt::Guid;

use crate::coldplug::{Coldplug, KernelLoader, ModuleIndex};
use crate::disk::{self, BootDisk};
use crate::launcher::{self, LaunchSpec};
use crate::mounts::{self, Mount};
use crate::supervise::{self, Policy};
use crate::{container_kernel, datasource, event, net, sys, update};

/// Where planet-init finds and puts things.
#[derive(Clone, Debug)]
pub struct BootEnv {
    /// The host root the early mounts go under (`/`).
    pub root: PathBuf,
    pub cmdline: PathBuf,
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    /// `/lib/modules`; the running kernel's release is appended.
    pub modules: PathBuf,
    /// Working directory for the slot, state and composed root mounts.
    pub run: PathBuf,
    pub cgroup: PathBuf,
}

impl BootEnv {
    pub fn system() -> BootEnv {
        BootEnv {
            root: "/".into(),
            cmdline: "/proc/cmdline".into(),
            sysfs: "/sys".into(),
            dev: "/dev".into(),
            modules: "/lib/modules".into(),
            run: "/run/planet".into(),
            cgroup: "/sys/fs/cgroup".into(),
        }
    }

    pub fn slot_dir(&self) -> PathBuf {
        self.run.join("slot")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.run.join("state")
    }
    /// The Planet root. A release's launcher insists on a path containing `/rootfs/`.
    pub fn root_dir(&self) -> PathBuf {
        self.run.join("rootfs")
    }
}

/// Host parameters from the command line (`planet.slot`, timeouts, restart policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostParams {
    pub slot: char,
    pub disk_timeout: Duration,
    pub stop_timeout: Duration,
    pub max_restarts: u32,
    /// `planet.disk_guid`: the GPT disk GUID of the image's own disk (see [`disk::find_boot_disk`]).
    pub disk_guid: Option<Guid>,
}

impl HostParams {
    pub fn from_cmdline(c: &CmdlineConfig) -> Result<HostParams> {
        let slot = match c.param("slot") {
            None | Some("a") => 'a',
            Some("b") => 'b',
            Some(other) => bail!("planet.slot={other:?} is invalid: expected a or b"),
        };
        let secs = |key: &str, default: u64| -> Result<Duration> {
            match c.param(key) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| anyhow::anyhow!("planet.{key}={v:?} is invalid: expected seconds")),
            }
        };
        let max_restarts = match c.param("max_restarts") {
            None => 5,
            Some(v) => {
                v.parse().map_err(|_| anyhow::anyhow!("planet.max_restarts={v:?} is invalid: expected a number"))?
            }
        };
        let disk_guid = match c.param(DISK_GUID_PARAM) {
            None => None,
            Some(v) => Some(v.parse::<Guid>().map_err(|_| {
                anyhow::anyhow!("planet.{DISK_GUID_PARAM}={v:?} is invalid: expected a GUID like 01234567-89AB-4CDE-8F01-23456789ABCD")
            })?),
        };
        Ok(HostParams {
            slot,
            disk_timeout: secs("disk_timeout", 30)?,
            stop_timeout: secs("stop_timeout", 30)?,
            max_restarts,
            disk_guid,
        })
    }

    pub fn slot_label(&self) -> String {
        planet_config::contract::slot_label(self.slot)
    }
}

/// Reads the command line: the raw text, its configuration and the host parameters.
pub fn read_cmdline(env: &BootEnv) -> Result<(String, CmdlineConfig, HostParams)> {
    let line = std::fs::read_to_string(&env.cmdline).with_context(|| format!("reading {}", env.cmdline.display()))?;
    let cmd = CmdlineConfig::parse(&line).context("reading the kernel command line")?;
    let params = HostParams::from_cmdline(&cmd)?;
    Ok((line, cmd, params))
}

/// Reads and validates the command line alone (no datasource).
pub fn read_config(env: &BootEnv) -> Result<(CmdlineConfig, HostParams, PlanetConfig)> {
    let (_, cmd, params) = read_cmdline(env)?;
    let cfg = cmd.config.validate(Source::Cmdline, "planet.").context("validating the configuration")?;
    Ok((cmd, params, cfg))
}

/// Modules the boot needs that no device asks for (vfat and iso9660 for seeds and config
/// drives, with the code pages vfat asks for; the crc32c ext4's metadata checksums request
/// through the crypto API, which has no modprobe to call here when ext4 is a module).
const FILESYSTEM_MODULES: [&str; 9] = [
    "fs-squashfs",
    "fs-overlay",
    "crypto-crc32c",
    "fs-ext4",
    "fs-vfat",
    "fs-iso9660",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// Coldplug until a pass loads nothing new (bus drivers reveal more devices).
fn coldplug_settle(cp: &mut Coldplug<KernelLoader>, sysfs: &Path) -> usize {
    let mut total = 0;
    for _ in 0..10 {
        let n = cp.round(sysfs);
        total += n;
        if n == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    total
}

/// Mounts the slot read-only, the state partition, and the overlay root; growth of the state
/// filesystem happens between (it needs the filesystem mounted).
pub fn mount_root(env: &BootEnv, bd: &BootDisk) -> Result<()> {
    let slot_dev = env.dev.join(&bd.slot.name);
    let state_dev = env.dev.join(&bd.state.name);
    Mount::new(&slot_dev.display().to_string(), env.slot_dir(), "squashfs")
        .flags(libc::MS_RDONLY | libc::MS_NODEV)
        .perform()?;
    Mount::new(&state_dev.display().to_string(), env.state_dir(), "ext4").flags(libc::MS_NOATIME).perform()?;
    grow_state_fs(&state_dev, &env.state_dir());
    let upper = env.state_dir().join("overlay/upper");
    let work = env.state_dir().join("overlay/work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", env.slot_dir().display(), upper.display(), work.display());
    Mount::new("overlay", env.root_dir(), "overlay").data(&data).perform()?;
    event!("root mounted", path = env.root_dir().display(), slot = bd.slot.name, state = bd.state.name);
    Ok(())
}

/// Grows the mounted state ext4 to its partition when the partition is larger (first boot, or
/// a boot after power was lost between the GPT and filesystem steps). Failure is reported,
/// not fatal: a small state partition still boots.
fn grow_state_fs(dev: &Path, mountpoint: &Path) {
    let r = (|| -> Result<()> {
        let (bs, blocks) = disk::read_ext4_geometry(dev)?;
        let f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
        let (part_bytes, _) = disk::device_geometry(&f)?;
        match disk::ext4_target_blocks(bs, blocks, part_bytes) {
            Some(target) => {
                disk::resize_ext4(mountpoint, target)?;
                event!("state grown", from = bs * blocks, to = bs * target);
            }
            None => println!("{} state size={} (no growth needed)", crate::console::PREFIX, bs * blocks),
        }
        Ok(())
    })();
    if let Err(e) = r {
        event!("state growth failed", error = format!("{e:#}"));
    }
}

/// A name for machines nobody named: stable across boots (from the first NIC's MAC).
pub fn default_hostname(nics: &[net::Nic]) -> String {
    match nics.first() {
        Some(n) => format!("planet-{:02x}{:02x}{:02x}", n.mac[3], n.mac[4], n.mac[5]),
        None => "planet".into(),
    }
}

/// The whole boot; returns when the machine should power off or reboot (the caller then runs
/// [`shutdown`], on success and on error alike).
pub fn run(env: &BootEnv) -> Result<supervise::StopReason> {
    mounts::mount_early(&env.root).context("mounting the API filesystems")?;
    supervise::block_signals()?;
    let (line, cmd, params) = read_cmdline(env)?;
    let ds_params = datasource::Params::from_cmdline(&line, &cmd)?;

    let kver = sys::kernel_release().context("reading the kernel release")?;
    let mod_dir = env.modules.join(&kver);
    let index = match ModuleIndex::load(&mod_dir) {
        Ok(i) => i,
        Err(e) => {
            event!("coldplug unavailable", error = format!("{e:#}"));
            ModuleIndex::default()
        }
    };
    let mut cp = Coldplug::new(index, KernelLoader);
    for m in FILESYSTEM_MODULES {
        cp.load(m);
    }
    let n = coldplug_settle(&mut cp, &env.sysfs);
    event!("coldplug done", kernel = kver, loaded = n);

    let bd = disk::wait_for_boot_disk(
        &env.sysfs,
        &env.dev,
        &params.slot_label(),
        params.disk_guid,
        params.disk_timeout,
        || {
            cp.round(&env.sysfs);
            disk::repair_interrupted_growth(&env.sysfs, &env.dev, params.disk_guid);
        },
    )?;
    event!("disk found", disk = bd.disk, slot = bd.slot.name, state = bd.state.name);
    if let Err(e) = disk::grow_boot_disk(&env.dev, &bd) {
        event!("state growth failed", error = format!("{e:#}"));
    }
    mount_root(env, &bd).context("mounting the Planet root")?;
    // Which release runs, whether it is on trial, what became of the last update.
    let agent = update::prepare(
        update::Paths {
            esp_dev: None,
            esp_mount: env.run.join("esp"),
            state_dir: env.state_dir().join("update"),
            run_dir: env.run.join("update"),
            key: env.root.join(update::KEY_PATH.trim_start_matches('/')),
            uefi: env.sysfs.join("firmware/efi").exists(),
            container_root: env.root_dir(),
        },
        &env.sysfs,
        &env.dev,
        &bd,
        params.slot,
    );

    // Devices that appeared late (input devices once evdev is in) get their modules too.
    coldplug_settle(&mut cp, &env.sysfs);

    // Cloud-init data: local sources (seeds, config drives) before the network, since they may
    // give static addresses; metadata servers after it.
    let mut ctx = datasource::Context {
        sysfs: env.sysfs.clone(),
        dev: env.dev.clone(),
        mount_dir: env.run.join("datasource"),
        metadata_url: ds_params.metadata_url.clone(),
        nocloud_url: ds_params.nocloud_url.clone(),
        nics: datasource::nic_info(&env.sysfs),
        deadline: supervise::deadline_after(ds_params.timeout),
    };
    let sources = datasource::plan(&ds_params, &cmd, &ctx);
    let (remote, local): (Vec<&dyn datasource::Datasource>, Vec<&dyn datasource::Datasource>) =
        sources.iter().map(|s| s.as_ref()).partition(|s| s.needs_network(&ctx));
    let mut why = Vec::new();
    let mut found = datasource::try_sources(&local, &ctx, &mut why);
    // Command-line addresses first: they override the datasource's for the same interface.
    let mut network_cfg = cmd.config.network.clone();
    if let Some((_, f)) = &found {
        network_cfg.addresses.extend(f.network.addresses.iter().cloned());
        network_cfg.dns.extend(f.network.dns.iter().copied());
    }
    let network = net::bring_up(&env.sysfs, &network_cfg).context("bringing up the network")?;
    if found.is_none() && !remote.is_empty() {
        ctx.deadline = supervise::deadline_after(ds_params.timeout);
        found = datasource::try_sources(&remote, &ctx, &mut why);
    }
    if found.is_none() && !sources.is_empty() {
        return Err(datasource::none_answered(&why));
    }
    let (source, raw) = match found {
        Some((source, f)) => (source, f.config.merge(cmd.config.clone())),
        None => (Source::Cmdline, cmd.config.clone()),
    };
    let mut raw = raw;
    raw.network = network_cfg;
    let mut cfg =
        raw.validate(source, "planet.").with_context(|| format!("validating the configuration from {source}"))?;
    if cfg.public_ip.is_none() {
        cfg.public_ip = network.primary_ip().map(Into::into);
    }
    let hostname = cfg.hostname.clone().unwrap_or_else(|| default_hostname(&net::physical_nics(&env.sysfs)));
    sys::sethostname(&hostname).with_context(|| format!("setting the hostname to {hostname}"))?;
    cfg.hostname = Some(hostname.clone());
    write_host_etc(&env.root, &hostname, &network.resolv_conf());
    event!("hostname", name = hostname);
    crate::console::emit("config", &cfg.log_fields());

    container_kernel::prepare(&mut cp, &env.root.join("proc/sys"));
    let cgroup = match launcher::builtin::prepare_cgroup(&env.cgroup, "planet") {
        Ok(d) => Some(d),
        Err(e) => {
            event!("cgroup unavailable", error = format!("{e:#}"));
            None
        }
    };
    let _agent = agent.start(&cfg.update);
    let mut volumes = launcher::volumes(&env.state_dir());
    volumes.push(launcher::Volume { source: env.run.join("update"), target: update::CONTAINER_DIR });
    let spec =
        LaunchSpec { root: env.root_dir(), config: cfg, volumes, resolv_conf: network.resolv_conf(), hostname, cgroup };
    let policy = Policy { max_restarts: params.max_restarts, stop_timeout: params.stop_timeout };
    crate::enter::start(&env.sysfs, &env.dev);
    let reason = supervise::supervise(|| launcher::launch(&spec), policy, &env.dev)?;
    event!("shutdown", reason = reason);
    Ok(reason)
}

/// The host's own /etc (a release launcher may read resolv.conf and hosts from it).
fn write_host_etc(root: &Path, hostname: &str, resolv: &str) {
    let etc = root.join("etc");
    let _ = std::fs::create_dir_all(&etc);
    let _ = std::fs::write(etc.join("resolv.conf"), resolv);
    let _ = std::fs::write(etc.join("hostname"), format!("{hostname}\n"));
    let _ = std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n"));
}

/// Stops everything and unmounts the Planet mounts so ext4 is clean. Safe to call on any
/// path out of the boot, including after a fatal error.
pub fn shutdown(env: &BootEnv) {
    supervise::kill_everything(Duration::from_secs(3));
    match mounts::unmount_all_under(&env.run) {
        Ok(n) => event!("unmounted", count = n, path = env.run.display()),
        Err(e) => event!("unmount failed", error = format!("{e:#}")),
    }
    crate::sys::sync();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_params_default_and_validate() {
        let p = HostParams::from_cmdline(&CmdlineConfig::parse("console=ttyS0").unwrap()).unwrap();
        assert_eq!(
            p,
            HostParams {
                slot: 'a',
                disk_timeout: Duration::from_secs(30),
                stop_timeout: Duration::from_secs(30),
                max_restarts: 5,
                disk_guid: None,
            }
        );
        let p = HostParams::from_cmdline(
            &CmdlineConfig::parse("planet.disk_guid=11111111-2222-4333-8444-555555555555").unwrap(),
        )
        .unwrap();
        assert_eq!(p.disk_guid.unwrap().to_string(), "11111111-2222-4333-8444-555555555555");
        let e = HostParams::from_cmdline(&CmdlineConfig::parse("planet.disk_guid=nope").unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("planet.disk_guid=\"nope\" is invalid"), "{e}");
        let p =
            HostParams::from_cmdline(&CmdlineConfig::parse("planet.slot=b planet.stop_timeout=5").unwrap()).unwrap();
        assert_eq!(p.slot_label(), "planet-b");
        assert_eq!(p.stop_timeout, Duration::from_secs(5));
        let e = HostParams::from_cmdline(&CmdlineConfig::parse("planet.slot=c").unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "planet.slot=\"c\" is invalid: expected a or b");
    }

    #[test]
    fn config_errors_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let mut env = BootEnv::system();
        env.cmdline = tmp.path().join("cmdline");
        std::fs::write(&env.cmdline, "console=ttyS0 planet.slot=a planet.role=node\n").unwrap();
        let e = read_config(&env).unwrap_err();
        assert_eq!(format!("{e:#}"), "validating the configuration: planet.master_ip is required for role node");
        std::fs::write(&env.cmdline, "console=ttyS0 planet.slot=a planet.role=dev\n").unwrap();
        let (_, p, c) = read_config(&env).unwrap();
        assert_eq!(p.slot, 'a');
        assert!(c.env.is_empty());
        // Secrets never belong on the command line: refused, the value not repeated.
        std::fs::write(&env.cmdline, "console=ttyS0 planet.slot=a planet.role=dev planet.env=A=hunter2\n").unwrap();
        let e = format!("{:#}", read_config(&env).unwrap_err());
        assert!(e.contains("planet.env is not accepted on the kernel command line") && !e.contains("hunter2"), "{e}");
        std::fs::write(
            &env.cmdline,
            "console=ttyS0 planet.slot=a planet.role=node planet.master_ip=10.0.0.1 \
             planet.join_token=q4w8zt.m2x7c5v9b1n3k6j0\n",
        )
        .unwrap();
        let e = format!("{:#}", read_config(&env).unwrap_err());
        assert!(e.contains("planet.join_token is not accepted on the kernel command line"), "{e}");
        assert!(!e.contains("q4w8zt") && !e.contains("m2x7c5"), "{e}");
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        // planet.datasource_timeout / planet.stop_timeout of u64::MAX seconds.
        let far = supervise::deadline_after(Duration::from_secs(u64::MAX));
        assert!(far > std::time::Instant::now() + Duration::from_secs(365 * 86400));
        let ds = datasource::Params::from_cmdline(
            "planet.datasource_timeout=18446744073709551615",
            &CmdlineConfig::parse("planet.datasource_timeout=18446744073709551615").unwrap(),
        );
        if let Ok(p) = ds {
            let _ = supervise::deadline_after(p.timeout);
        }
    }

    #[test]
    fn root_path_ends_in_rootfs() {
        assert_eq!(BootEnv::system().root_dir(), Path::new("/run/planet/rootfs"));
    }

    #[test]
    fn default_hostname_uses_the_mac() {
        let n = net::Nic { name: "eth0".into(), mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56] };
        assert_eq!(default_hostname(&[n]), "planet-123456");
        assert_eq!(default_hostname(&[]), "planet");
    }
}
