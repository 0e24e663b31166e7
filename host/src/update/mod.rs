//! The update agent: moves a running machine to a new Planet release and back.
//!
//! * At boot ([`prepare`]) it reads the ESP's entries: which release runs, whether this boot is
//!   a trial (the running slot's entry still carries a boot counter), whether systemd-boot just
//!   fell back from a failed release (the other slot's newer entry has no tries left), and
//!   whether an install was cut short.
//! * During a trial it blesses the entry (drops the counter) once the container has stayed up
//!   with its health check passing for `bless_after`; if the container exits, or health is not
//!   reached within `trial_timeout`, it reboots so the counter runs down.
//! * The container's own rollout agent may end a trial at once (`fail-trial` on the socket)
//!   instead of waiting for the counter, or bring back the other slot's release
//!   (`rollback-to`), which then runs its own trial.
//! * Otherwise it takes bundles from `planet.update.url` every `check_every` and from a Unix
//!   socket bind-mounted into the container, verifies them before writing a byte of the boot
//!   path, installs them into the other slot with a counted entry, and reboots.
//!
//! Every step is a `planet-init: update …` console line and lands in `status.json`, next to the
//! socket.

pub mod esp;
pub mod install;
pub mod socket;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use planet_bundle::KeyRing;
use planet_config::bootentry::{EntryName, Tries, DEFAULT_TRIES};
use planet_config::contract::{self, ESP_LABEL};
use planet_config::UpdateConfig;

use self::esp::{Entry, Esp};
use self::install::Target;
use crate::disk::{self, BootDisk};
use crate::event;
use crate::mounts::Mount;

/// Runs the release's [`HEALTH_COMMAND`] in the container under `root`: `None` when the release
/// has none, else whether it exited 0. The first line of its output says why not, on the console
/// once per change.
pub fn release_health(root: &Path) -> Option<bool> {
    static LAST: Mutex<String> = Mutex::new(String::new());
    let host_path = root.join(HEALTH_COMMAND.trim_start_matches('/'));
    std::fs::symlink_metadata(&host_path).ok()?;
    let (ok, detail) = match crate::enter::run_in_container(&[HEALTH_COMMAND], HEALTH_TIMEOUT) {
        Ok((0, _)) => (true, "ok".to_string()),
        Ok((code, out)) => {
            let text = String::from_utf8_lossy(&out);
            let why = text.lines().find(|l| l.contains("FAIL")).or(text.lines().last()).unwrap_or("").trim();
            (false, format!("exit {code}: {why}"))
        }
        Err(e) => (false, format!("{e:#}")),
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if *last != detail {
        event!("health", healthy = ok, detail = detail);
        *last = detail;
    }
    Some(ok)
}

/// Where the image puts the key bundles must be signed with.
pub const KEY_PATH: &str = "/etc/planet/update.pub";
/// The directory holding the socket and status file, as the container sees it.
pub const CONTAINER_DIR: &str = "/var/lib/planet-update";

static REBOOT: Mutex<Option<String>> = Mutex::new(None);
static TRIAL: AtomicBool = AtomicBool::new(false);
static CONTAINER_SINCE: Mutex<Option<Instant>> = Mutex::new(None);

/// Asks PID 1's supervisor to stop the container and reboot.
pub fn request_reboot(reason: &str) {
    let mut r = REBOOT.lock().unwrap_or_else(|e| e.into_inner());
    if r.is_none() {
        *r = Some(reason.to_string());
    }
}

/// The pending reboot request, if any (the supervisor polls it).
pub fn reboot_requested() -> Option<String> {
    REBOOT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Whether this boot is a new release on trial: a failure must reboot, not power off or retry,
/// so the boot counter decides.
pub fn on_trial() -> bool {
    TRIAL.load(Ordering::SeqCst)
}

/// The supervisor reports the container's life here; the blessing needs it.
pub fn container_started() {
    *CONTAINER_SINCE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
}

pub fn container_exited() {
    *CONTAINER_SINCE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn container_since() -> Option<Instant> {
    *CONTAINER_SINCE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where things are on this machine.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The ESP's block device, mounted at `esp_mount` while in use; `None`: `esp_mount` is
    /// already the ESP's directory (tests).
    pub esp_dev: Option<PathBuf>,
    pub esp_mount: PathBuf,
    /// `<state>/update`: staging, the install marker, the failed-release list.
    pub state_dir: PathBuf,
    /// `/run/planet/update`: socket and status, bind-mounted into the container.
    pub run_dir: PathBuf,
    pub key: PathBuf,
    /// `/sys/firmware/efi` exists: booted through UEFI (systemd-boot counts tries).
    pub uefi: bool,
    /// The composed Planet root, where the release's health command is looked for.
    pub container_root: PathBuf,
}

/// A release that knows what "healthy" means for it ships this command: exit status 0 when
/// the machine is healthy. The Kubernetes release's checks the role's components (the API
/// server's `/readyz`; the kubelet's `/healthz` and its Node `Ready`).
pub const HEALTH_COMMAND: &str = "/usr/libexec/planet/health";
/// How long one run of the health command may take.
/// kubectl alone takes seconds to start on an emulated CPU.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// The agent's view of the machine after [`prepare`].
pub struct Agent {
    cfg: UpdateConfig,
    paths: Paths,
    /// The keys the running release trusts (its initramfs's key file), before revocations.
    key: Option<KeyRing>,
    running_slot: char,
    target: Option<Target>,
    /// The running release (its entry's `version`).
    release: String,
    /// The running entry's name at boot and its kernel options.
    entry: Option<EntryName>,
    options: String,
    /// This boot is a release on trial, not yet blessed. The agent's own copy of [`TRIAL`]
    /// (which the supervisor reads), so tests can put one agent on trial without the others.
    trial: AtomicBool,
    /// The trial was ended by a `fail-trial` request: the entry is bad and a reboot is asked
    /// for, so nothing may bless it any more.
    trial_ended: AtomicBool,
    /// Serialises installs, blessing and status writes.
    busy: Mutex<Status>,
    trial_started: Instant,
    /// How a reboot is asked for ([`request_reboot`]; tests record it instead).
    reboot: fn(&str),
    /// How much room a download has ([`staging_room`]; tests must not depend on how full the
    /// disk of the machine running them is).
    room: fn(&Path) -> Result<install::Room>,
}

/// What `status.json` says.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    pub state: String,
    pub release: String,
    pub slot: String,
    pub entry: String,
    pub trial: bool,
    /// Releases that failed their trial on this machine (never installed again), so the
    /// container's rollout agent can tell its target failed here.
    pub failed: Vec<String>,
    pub message: String,
    pub updated: u64,
}

/// Mounts the ESP for the duration of `f`.
fn with_esp<T>(paths: &Paths, f: impl FnOnce(&Esp) -> Result<T>) -> Result<T> {
    let Some(dev) = &paths.esp_dev else { return f(&Esp::new(&paths.esp_mount)) };
    std::fs::create_dir_all(&paths.esp_mount)?;
    Mount::new(&dev.display().to_string(), &paths.esp_mount, "vfat")
        .flags(libc::MS_NOATIME | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)
        .data("umask=0077")
        .perform()
        .context("mounting the ESP")?;
    let r = f(&Esp::new(&paths.esp_mount));
    // Then unmount (which writes back the FAT).
    crate::sys::sync();
    if let Err(e) = crate::sys::umount(&paths.esp_mount, 0) {
        event!("update esp unmount failed", error = e);
    }
    r
}

/// Finds the ESP and the other slot on the boot disk.
pub fn locate(sysfs: &Path, dev: &Path, bd: &BootDisk, running_slot: char) -> Result<(PathBuf, Target)> {
    let devs = disk::scan(sysfs)?;
    let on_disk = |label: &str| {
        devs.iter().find(|d| d.parent.as_deref() == Some(bd.disk.as_str()) && d.partname.as_deref() == Some(label))
    };
    let esp = on_disk(ESP_LABEL)
        .with_context(|| format!("the boot disk {} has no partition labelled {ESP_LABEL}", bd.disk))?;
    let other = if running_slot == 'a' { 'b' } else { 'a' };
    let label = contract::slot_label(other);
    let slot =
        on_disk(&label).with_context(|| format!("the boot disk {} has no partition labelled {label}", bd.disk))?;
    let running_dev = on_disk(&contract::slot_label(running_slot)).map(|d| dev.join(&d.name));
    Ok((dev.join(&esp.name), Target { slot: other, dev: dev.join(&slot.name), bytes: slot.size_bytes(), running_dev }))
}

/// The bytes of the squashfs at the start of `dev` (its superblock's `bytes_used`, rounded up to
/// the 4 KiB the image file was padded to); `None` when `dev` does not start with a squashfs.
fn squashfs_len(dev: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 48];
    std::fs::File::open(dev).ok()?.read_exact_at(&mut sb, 0).ok()?;
    (&sb[..4] == b"hsqs").then(|| u64::from_le_bytes(sb[40..48].try_into().expect("8 bytes")).next_multiple_of(4096))
}

/// The running kernel and initramfs, copied off the ESP for a chunked download.
const RUNNING_COPIES: [(&str, &str); 2] =
    [(contract::KERNEL_FILE, "running-vmlinuz"), (contract::INITRAMFS_FILE, "running-initramfs.img")];

fn read_failed(state_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("failed"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Adds `release` to the failed list durably (temporary file, fsync, rename, directory fsync):
/// the list must survive a power cut that the rollback's entry removal survives.
fn record_failed(state_dir: &Path, release: &str) -> Result<()> {
    let mut failed = read_failed(state_dir);
    if !failed.iter().any(|f| f == release) {
        failed.push(release.to_string());
    }
    write_list(state_dir, "failed", &failed).context("recording the failed release")
}

/// Writes one item per line to `state_dir/name`, durably.
fn write_list(state_dir: &Path, name: &str, items: &[String]) -> Result<()> {
    use std::io::Write as _;
    let text = items.join("\n") + "\n";
    esp::write_durably(state_dir, name, |f| f.write_all(text.as_bytes()).map_err(Into::into))
}

/// Key ids revoked by bundles this machine verified (`revoked-keys` on the state partition): they
/// stay revoked across releases and reboots.
fn read_revoked(state_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("revoked-keys"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_ascii_uppercase())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Applies the revocations a verified prelude carries: a key may revoke only keys older than
/// itself in `ring` (listed before it), so a stolen old key cannot lock out its successor. Returns
/// the ids newly revoked.
fn apply_revocations(state_dir: &Path, ring: &KeyRing, prelude: &planet_bundle::Prelude) -> Result<Vec<String>> {
    if prelude.revokes.is_empty() {
        return Ok(Vec::new());
    }
    let Some((signer, _)) = ring.find(&prelude.key_id) else { return Ok(Vec::new()) };
    let mut revoked = read_revoked(state_dir);
    let mut new = Vec::new();
    for id in &prelude.revokes {
        match ring.find(id) {
            Some((rank, _)) if rank < signer => {
                if !revoked.contains(id) {
                    revoked.push(id.clone());
                    new.push(id.clone());
                }
            }
            _ => event!(
                "update revocation ignored",
                key = id,
                by = prelude.key_id,
                reason = "a key revokes only keys older than itself in this machine's key file"
            ),
        }
    }
    if !new.is_empty() {
        write_list(state_dir, "revoked-keys", &revoked).context("recording revoked keys")?;
        for id in &new {
            event!("update key revoked", key = id, by = prelude.key_id);
        }
    }
    Ok(new)
}

/// Removes staging files a power cut or crash left (`incoming.planet`, `incoming.planet.tmp`):
/// they would hold space the next download's check counts as used.
fn remove_staging_leftovers(state_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(state_dir) else { return };
    for e in dir.flatten() {
        if e.file_name().to_string_lossy().starts_with("incoming.planet") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => event!("update staging removed", file = e.path().display()),
                Err(err) => event!("update staging not removed", file = e.path().display(), error = err),
            }
        }
    }
}

/// Free bytes of the state filesystem and the reserve a download must leave.
fn staging_room(state_dir: &Path) -> Result<install::Room> {
    let st =
        crate::sys::mount::statvfs(state_dir).map_err(|e| anyhow::anyhow!("statvfs {}: {e}", state_dir.display()))?;
    let frsize = st.f_frsize as u64;
    Ok(install::Room {
        free: (st.f_bavail as u64).saturating_mul(frsize),
        reserve: install::reserve_bytes((st.f_blocks as u64).saturating_mul(frsize)),
    })
}

/// The boot-time part: what runs, what happened to the last update. Never fatal to the boot: a
/// machine whose ESP cannot be read still runs its release (the agent is then off).
pub fn prepare(paths: Paths, sysfs: &Path, dev: &Path, bd: &BootDisk, running_slot: char) -> Agent {
    let key = match std::fs::read_to_string(&paths.key) {
        Ok(text) => match KeyRing::parse(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                event!("update key invalid", path = paths.key.display(), error = format!("{e:#}"));
                None
            }
        },
        Err(_) => None,
    };
    let _ = std::fs::create_dir_all(&paths.state_dir);
    let _ = std::fs::create_dir_all(&paths.run_dir);
    remove_staging_leftovers(&paths.state_dir);
    let mut agent = Agent {
        cfg: UpdateConfig::default(),
        key,
        running_slot,
        target: None,
        release: "unknown".into(),
        entry: None,
        options: std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim().to_string(),
        trial: AtomicBool::new(false),
        trial_ended: AtomicBool::new(false),
        busy: Mutex::new(Status::default()),
        trial_started: Instant::now(),
        reboot: request_reboot,
        room: staging_room,
        paths,
    };
    let located = locate(sysfs, dev, bd, running_slot);
    let r = located.and_then(|(esp_dev, target)| {
        agent.paths.esp_dev = Some(esp_dev);
        agent.target = Some(target);
        let paths = agent.paths.clone();
        with_esp(&paths, |esp| agent.inspect_boot(esp))
    });
    if let Err(e) = r {
        event!("update unavailable", error = format!("{e:#}"));
    }
    let trial = agent.entry.as_ref().is_some_and(|e| e.tries.is_some());
    agent.trial.store(trial, Ordering::SeqCst);
    TRIAL.store(trial, Ordering::SeqCst);
    event!(
        "release",
        running = agent.release,
        slot = running_slot,
        entry = agent.entry.as_ref().map(|e| e.file_name()).unwrap_or_else(|| "none".into()),
        trial = trial
    );
    agent.set_status(if trial { "trial" } else { "idle" }, "");
    agent
}

impl Agent {
    /// An agent over directories and files instead of devices (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(
        paths: Paths,
        key: Option<KeyRing>,
        target: Target,
        release: &str,
        reboot: fn(&str),
    ) -> Agent {
        Agent {
            cfg: UpdateConfig::default(),
            paths,
            key,
            running_slot: if target.slot == 'a' { 'b' } else { 'a' },
            target: Some(target),
            release: release.into(),
            entry: None,
            options: "console=ttyS0 planet.slot=a".into(),
            trial: AtomicBool::new(false),
            trial_ended: AtomicBool::new(false),
            busy: Mutex::new(Status::default()),
            trial_started: Instant::now(),
            reboot,
            room: |_| Ok(install::Room { free: 1 << 40, reserve: 64 << 20 }),
        }
    }

    /// Reads the entries at boot and reports rollbacks and interrupted installs.
    fn inspect_boot(&mut self, esp: &Esp) -> Result<()> {
        let entries = esp.entries()?;
        let mine: Option<&Entry> = entries.iter().find(|e| e.name.slot == self.running_slot);
        if let Some(e) = mine {
            self.release = e.version.clone();
            self.entry = Some(e.name.clone());
            if !e.options.is_empty() {
                self.options = e.options.clone();
            }
        }
        let my_generation = mine.map(|e| e.name.generation).unwrap_or(0);
        for e in entries.iter().filter(|e| e.name.slot != self.running_slot) {
            if e.name.is_bad() && e.name.generation > my_generation {
                event!(
                    "update rolled back",
                    failed = e.version,
                    running = self.release,
                    entry = e.name,
                    reason = "the new release used up its boot tries"
                );
                record_failed(&self.paths.state_dir, &e.version)?;
                esp.remove_entry(&e.name)?;
            }
        }
        let marker = self.paths.state_dir.join("installing");
        if let Ok(text) = std::fs::read_to_string(&marker) {
            event!(
                "update interrupted",
                install = text.trim(),
                running = self.release,
                note = "the other slot was left without a boot entry"
            );
            if std::fs::remove_file(&marker).is_ok() {
                let _ = esp::sync_dir(&self.paths.state_dir);
            }
        }
        Ok(())
    }

    /// Writes the status unless an install holds the lock (it writes its own): never waits.
    fn set_status(&self, state: &str, message: &str) {
        let mut s = match self.busy.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        self.write_status(&mut s, state, message);
    }

    fn write_status(&self, s: &mut Status, state: &str, message: &str) {
        *s = Status {
            state: state.into(),
            release: self.release.clone(),
            slot: self.running_slot.to_string(),
            entry: self.entry.as_ref().map(|e| e.file_name()).unwrap_or_default(),
            trial: self.trial(),
            failed: read_failed(&self.paths.state_dir),
            message: message.into(),
            updated: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        let text = serde_json::to_string_pretty(&*s).unwrap_or_default() + "\n";
        let tmp = self.paths.run_dir.join("status.json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, self.paths.run_dir.join("status.json"));
        }
    }

    /// Starts the agent's threads with the machine's settings: the trial/poll loop and the
    /// socket server.
    pub fn start(mut self, cfg: &UpdateConfig) -> Arc<Agent> {
        self.cfg = cfg.clone();
        self.trial_started = Instant::now();
        let agent = Arc::new(self);
        if agent.cfg.allow_downgrade {
            event!(
                "update setting ignored",
                key = "planet.update.allow_downgrade",
                reason = "cloud-init data can come from anyone on the network path; a downgrade needs an \
                          explicit `install --allow-downgrade` on the update socket"
            );
        }
        let a = agent.clone();
        let _ = std::thread::Builder::new().name("update".into()).spawn(move || contained("update", || a.run_loop()));
        match socket::listen(&agent.paths.run_dir) {
            Ok(listener) => {
                let a = agent.clone();
                let _ = std::thread::Builder::new()
                    .name("update-socket".into())
                    .spawn(move || contained("update-socket", || a.serve(listener)));
            }
            Err(e) => event!("update socket unavailable", error = format!("{e:#}")),
        }
        agent
    }

    fn run_loop(&self) {
        // `None`: no more checks (`check_every` reaches past what the clock can count).
        let mut next_check = Some(Instant::now());
        let mut healthy_since: Option<Instant> = None;
        let mut last_probe = Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
        let mut health_interval = Duration::from_secs(15);
        loop {
            // A trial ended on request: the entry is bad and the reboot asked for; a blessing
            // or a timeout now would undo or repeat that.
            if self.trial_ended.load(Ordering::SeqCst) {
                return;
            }
            if self.trial() {
                let since = container_since();
                if since.is_none() {
                    healthy_since = None;
                } else if last_probe.elapsed() >= Duration::from_secs(2) {
                    last_probe = Instant::now();
                    if self.healthy() {
                        healthy_since.get_or_insert(Instant::now());
                    } else {
                        healthy_since = None;
                    }
                }
                match healthy_since {
                    Some(t) if t.elapsed() >= self.cfg.bless_after => self.bless(),
                    _ if self.trial_started.elapsed() >= self.cfg.trial_timeout => {
                        event!(
                            "update trial failed",
                            release = self.release,
                            reason = format!("not healthy within {}s", self.cfg.trial_timeout.as_secs())
                        );
                        self.set_status("trial-failed", "not healthy within the trial timeout");
                        (self.reboot)("update trial failed");
                        return;
                    }
                    _ => {}
                }
            } else {
                // Outside a trial the health is only reported (a console line when it changes):
                // often until the machine is first healthy, then once a minute.
                if container_since().is_some() && last_probe.elapsed() >= health_interval {
                    last_probe = Instant::now();
                    if self.healthy() {
                        health_interval = Duration::from_secs(60);
                    }
                }
                if let Some(url) = self.cfg.url.clone() {
                    if next_check.is_some_and(|t| Instant::now() >= t) {
                        next_check = Instant::now().checked_add(self.cfg.check_every);
                        self.check_url(&url);
                    }
                }
            }
            if reboot_requested().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The health check: the configured URL answers 2xx; without one, the release's
    /// [`HEALTH_COMMAND`] run inside the container exits 0; for a release without one, the
    /// container runs.
    fn healthy(&self) -> bool {
        let Some(url) = &self.cfg.health_url else {
            if container_since().is_none() {
                return false;
            }
            return release_health(&self.paths.container_root).unwrap_or(true);
        };
        let Ok(ep) = crate::http::Endpoint::parse(url, None) else { return false };
        let path = if ep.prefix.is_empty() { "/" } else { "" };
        matches!(
            crate::http::request(&ep, "GET", path, &[], Duration::from_secs(3)),
            Ok(r) if (200..300).contains(&r.status)
        )
    }

    fn bless(&self) {
        let mut st = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock `fail_trial` takes: the entry it marked bad stays bad.
        if self.trial_ended.load(Ordering::SeqCst) {
            return;
        }
        let r = with_esp(&self.paths, |esp| {
            let mine = esp
                .entries()?
                .into_iter()
                .find(|e| e.name.slot == self.running_slot)
                .context("the running slot has no boot entry")?;
            let blessed = mine.name.blessed();
            if mine.name != blessed {
                esp.rename_entry(&mine.name, &blessed)?;
            }
            Ok(blessed)
        });
        match r {
            Ok(name) => {
                self.trial.store(false, Ordering::SeqCst);
                TRIAL.store(false, Ordering::SeqCst);
                event!("update blessed", release = self.release, slot = self.running_slot, entry = name);
                self.write_status(&mut st, "idle", &format!("release {} blessed", self.release));
            }
            Err(e) => {
                // Without the blessing the next boot would count down: try again, then give up.
                event!("update bless failed", error = format!("{e:#}"));
                self.write_status(&mut st, "trial", &format!("blessing failed: {e:#}"));
            }
        }
    }

    /// What a chunked download can take chunks from: the running slot's squashfs, and the
    /// running kernel and initramfs (copied off the ESP into the staging directory; removed by
    /// [`Agent::drop_local_data`]). What cannot be read is left out: it is only fetched instead.
    pub fn local_data(&self) -> Vec<planet_bundle::assemble::LocalData> {
        use planet_bundle::assemble::LocalData;
        let mut v = Vec::new();
        if let Some(dev) = self.target.as_ref().and_then(|t| t.running_dev.clone()) {
            let len = squashfs_len(&dev);
            v.push(LocalData::file(dev, len));
        }
        let r = with_esp(&self.paths, |esp| {
            for (name, copy) in RUNNING_COPIES {
                let to = self.paths.state_dir.join(copy);
                std::fs::copy(esp.slot_dir(self.running_slot).join(name), &to)
                    .with_context(|| format!("copying the running {name} off the ESP"))?;
                v.push(LocalData::file(to, None));
            }
            Ok(())
        });
        if let Err(e) = r {
            event!("update local chunks", error = format!("{e:#}"));
        }
        v
    }

    /// Removes what [`Agent::local_data`] copied.
    pub fn drop_local_data(&self) {
        for (_, copy) in RUNNING_COPIES {
            let _ = std::fs::remove_file(self.paths.state_dir.join(copy));
        }
    }

    fn check_url(&self, url: &str) {
        event!("update check", url = url);
        let local = || self.local_data();
        let r = self
            .install_from(false, |dest, keys, room, wanted| install::download(url, dest, keys, room, wanted, &local));
        self.drop_local_data();
        match r {
            Ok(Some(entry)) => self.reboot_into(&entry),
            Ok(None) => {}
            Err(e) => {
                event!("update refused", source = url, error = format!("{e:#}"));
                self.set_status("refused", &format!("{e:#}"));
            }
        }
    }

    /// Takes a bundle through `fetch` (download or socket), installs it; `None` when the
    /// bundle is not wanted (same or older release: not an error worth a status change).
    /// `allow_downgrade` only from an explicit socket request (the operator's channel). Never
    /// waits for another install: a second one at the same time is refused.
    pub fn install_from(
        &self,
        allow_downgrade: bool,
        fetch: impl FnOnce(
            &Path,
            &KeyRing,
            install::Room,
            &mut dyn FnMut(&planet_bundle::Prelude) -> Result<()>,
        ) -> Result<(planet_bundle::Prelude, planet_bundle::Header)>,
    ) -> Result<Option<EntryName>> {
        let (ring, target) = self.can_install()?;
        let mut st = match self.busy.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => bail!("another update is in progress"),
        };
        let dest = self.paths.state_dir.join("incoming.planet");
        let screen = self.screen(ring, allow_downgrade)?;
        let mut not_wanted = false;
        let mut wanted = |p: &planet_bundle::Prelude| -> Result<()> {
            screen.judge(p, &mut not_wanted)?;
            event!("update downloading", release = p.release, bytes = p.total_bytes);
            self.write_status(&mut Status::default(), "downloading", &format!("release {}", p.release));
            Ok(())
        };
        let (keys, room) = (screen.keys.clone(), screen.room);
        let fetched = fetch(&dest, &keys, room, &mut wanted);
        let (_, header) = match fetched {
            Ok(v) => v,
            Err(e) if not_wanted => {
                event!("update skipped", reason = format!("{e:#}"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        event!("update verified", release = header.release, kernel = header.kernel);
        self.write_status(&mut st, "installing", &format!("release {}", header.release));
        let marker = self.paths.state_dir.join("installing");
        let r = with_esp(&self.paths, |esp| {
            install::install(&install::InstallPlan {
                staged: &dest,
                header: &header,
                target: &target,
                esp,
                options: &self.options,
                tries: DEFAULT_TRIES,
                marker: &marker,
            })
        });
        let _ = std::fs::remove_file(&dest);
        let entry = r?;
        event!("update installed", release = header.release, slot = target.slot, entry = entry);
        self.write_status(&mut st, "installed", &format!("release {} in slot {}", header.release, target.slot));
        Ok(Some(entry))
    }

    /// Whether this machine can install at all: the keys it trusts and the slot it would write.
    fn can_install(&self) -> Result<(&KeyRing, Target)> {
        let Some(ring) = &self.key else {
            bail!("this image was built without --update-key: it trusts no bundle");
        };
        if !self.paths.uefi {
            bail!("this machine booted through legacy BIOS (GRUB); updates need UEFI boot (systemd-boot counts the tries)");
        }
        if self.trial() {
            bail!("release {} is still on trial; updates wait until it is blessed", self.release);
        }
        let target = self.target.clone().context("the other slot was not found at boot")?;
        Ok((ring, target))
    }

    /// What an offered bundle's signed prelude is judged against, read once per offer.
    fn screen<'a>(&'a self, ring: &'a KeyRing, allow_downgrade: bool) -> Result<Screen<'a>> {
        Ok(Screen {
            agent: self,
            ring,
            keys: ring.without(&read_revoked(&self.paths.state_dir)),
            room: (self.room)(&self.paths.state_dir)?,
            failed: read_failed(&self.paths.state_dir),
            now: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            allow_downgrade,
        })
    }

    /// Checks the bundle at `url` as an install would, on its first 4 KiB only (one range
    /// request): signed by a trusted key, fresh, wanted here, with room on the state partition.
    /// Nothing is written; the rollout asks this before it drains the machine. `signed` is set
    /// once a prelude signed by a trusted key was read (what went wrong before that is no
    /// business of the client's).
    pub fn check_remote(&self, url: &str, allow_downgrade: bool, signed: &mut bool) -> Result<planet_bundle::Prelude> {
        let (ring, _) = self.can_install()?;
        let screen = self.screen(ring, allow_downgrade)?;
        let mut not_wanted = false;
        install::check_remote(url, &screen.keys, screen.room, |p| {
            *signed = true;
            screen.judge(p, &mut not_wanted)
        })
    }

    /// Whether this boot is still a release on trial (neither blessed nor failed yet).
    fn trial(&self) -> bool {
        self.trial.load(Ordering::SeqCst)
    }

    /// Ends this boot's trial at once, on the container's verdict, instead of letting the boot
    /// counter run down three times: the running entry is renamed to "no tries left", so
    /// systemd-boot boots the other slot, whose agent reports `update rolled back` and records
    /// the release as failed. Returns the bad entry; the caller asks for the reboot.
    pub fn fail_trial(&self, reason: &str) -> Result<EntryName> {
        let not_on_trial = || anyhow::anyhow!("release {} is not on trial", self.release);
        if !self.trial() {
            return Err(not_on_trial());
        }
        let mut st = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // Again under the lock: a blessing (or another fail-trial) may have just finished.
        if !self.trial() || self.trial_ended.load(Ordering::SeqCst) {
            return Err(not_on_trial());
        }
        let running = self.entry.clone().context("the running slot had no boot entry at boot")?;
        let bad = with_esp(&self.paths, |esp| {
            let entries = esp.entries()?;
            let mine = entries
                .iter()
                .find(|e| e.name.slot == running.slot && e.name.generation == running.generation)
                .with_context(|| format!("the running entry {running} is gone from the ESP"))?;
            let Some(tries) = mine.name.tries else {
                bail!("the running entry {} has no boot counter; nothing to fail", mine.name);
            };
            // Marking the only bootable entry bad would not fall back: systemd-boot boots it anyway.
            if !entries.iter().any(|e| e.name.slot != running.slot && !e.name.is_bad()) {
                bail!("the other slot has no bootable entry to fall back to");
            }
            let bad = EntryName { tries: Some(Tries { left: 0, done: tries.done.max(1) }), ..mine.name.clone() };
            if mine.name != bad {
                esp.rename_entry(&mine.name, &bad)?;
            }
            Ok(bad)
        })?;
        self.trial_ended.store(true, Ordering::SeqCst);
        event!("update trial failed", release = self.release, reason = reason, entry = bad);
        self.write_status(&mut st, "trial-failed", reason);
        Ok(bad)
    }

    /// Brings back the release the other slot still holds: its entry is renamed to a new
    /// generation with a fresh boot counter, so systemd-boot boots it first and it runs its own
    /// trial (and falls back here if that fails). An operator's request on the socket, like a
    /// downgrade, so an older release is fine; one that failed here is not. Returns the entry.
    pub fn rollback_to(&self, release: &str) -> Result<EntryName> {
        if !self.paths.uefi {
            bail!("this machine booted through legacy BIOS (GRUB); a rollback needs UEFI boot (systemd-boot counts the tries)");
        }
        if self.trial() {
            bail!("release {} is still on trial; updates wait until it is blessed", self.release);
        }
        let mut st = match self.busy.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => bail!("another update is in progress"),
        };
        if planet_bundle::compare_releases(release, &self.release) == std::cmp::Ordering::Equal {
            bail!("release {release} is already running");
        }
        if read_failed(&self.paths.state_dir).iter().any(|f| f == release) {
            bail!("release {release} already failed its trial on this machine; it is not booted again");
        }
        let slot = if self.running_slot == 'a' { 'b' } else { 'a' };
        let (from, to) = with_esp(&self.paths, |esp| {
            let entries = esp.entries()?;
            let from = entries
                .iter()
                .find(|e| e.name.slot == slot && e.version == release && !e.name.is_bad())
                .with_context(|| format!("no entry of release {release} in slot {slot} (it was replaced or failed)"))?;
            esp.check_boot_files(&from.name)?;
            let generation = esp.next_generation()?;
            let to = EntryName::counted(generation, slot, DEFAULT_TRIES);
            esp.rename_entry(&from.name, &to)?;
            Ok((from.name.clone(), to))
        })?;
        event!("update rollback", release = release, running = self.release, slot = slot, from = from, entry = to);
        self.write_status(&mut st, "rollback", &format!("to release {release} in slot {slot}"));
        Ok(to)
    }

    /// Reboots into a freshly installed entry, at once or when the window opens.
    pub fn reboot_into(&self, entry: &EntryName) {
        if let Some(w) = self.cfg.reboot_window {
            loop {
                let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let minute = ((secs % 86400) / 60) as u32;
                if planet_config::update::in_window(w, minute) {
                    break;
                }
                event!("update waiting", entry = entry, window = format!("{}-{} UTC", fmt_hm(w.0), fmt_hm(w.1)));
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        event!("update rebooting", entry = entry);
        (self.reboot)(&format!("update to {entry}"));
    }
}

/// Runs an update thread's body; a panic in it is reported and ends only that thread (updates
/// stop until the next boot), never the machine. (PID 1's panic hook, in main.rs, must leave
/// threads other than the main one to this.)
fn contained(thread: &str, body: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        event!(
            "update agent stopped",
            thread = thread,
            error = format!("panic: {why}"),
            note = "updates are off until the next boot; the machine keeps running"
        );
    }
}

fn fmt_hm(m: u32) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// The checks an offered bundle's prelude meets before any of it is fetched or written.
struct Screen<'a> {
    agent: &'a Agent,
    ring: &'a KeyRing,
    /// The trusted keys less the revoked ones.
    keys: KeyRing,
    room: install::Room,
    failed: Vec<String>,
    now: u64,
    allow_downgrade: bool,
}

impl Screen<'_> {
    /// Accepts `p` or says why not; `not_wanted` is set when it is merely not wanted here
    /// (same, older or failed release), which is no error worth a status change.
    fn judge(&self, p: &planet_bundle::Prelude, not_wanted: &mut bool) -> Result<()> {
        // Signed by a trusted key: its revocations hold whether or not the bundle is wanted.
        apply_revocations(&self.agent.paths.state_dir, self.ring, p)?;
        install::check_fresh(&p.release, p.expires, self.now)?;
        if let Err(e) = install::check_wanted(&p.release, &self.agent.release, self.allow_downgrade, &self.failed) {
            *not_wanted = true;
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 13: the failed list is replaced through a new file (then renamed), never
    /// rewritten in place: here `failed` is a symlink, which an in-place write would follow.
    #[test]
    fn the_failed_list_is_replaced_by_rename() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, t.path().join("failed")).unwrap();
        record_failed(t.path(), "3").unwrap();
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched\n");
        assert!(std::fs::symlink_metadata(t.path().join("failed")).unwrap().is_file());
        record_failed(t.path(), "4").unwrap();
        record_failed(t.path(), "3").unwrap();
        assert_eq!(read_failed(t.path()), ["untouched", "3", "4"]);
        assert!(!t.path().join("failed.tmp").exists());
    }

    /// Finding 12: staging files a power cut left are removed at boot; nothing else is.
    /// The room the agent gets on a machine is what statvfs says of the state filesystem: free
    /// bytes no more than its size, and a reserve of a tenth of it (at least 64 MiB).
    #[test]
    fn staging_room_reads_the_state_filesystem() {
        let t = tempfile::tempdir().unwrap();
        let room = staging_room(t.path()).unwrap();
        assert!(room.reserve >= 64 << 20, "{}", room.reserve);
        assert!(
            room.free <= room.reserve.saturating_mul(10).max(64 << 20) + (1 << 20),
            "{} {}",
            room.free,
            room.reserve
        );
        assert!(staging_room(&t.path().join("missing")).unwrap_err().to_string().contains("statvfs"));
    }

    #[test]
    fn staging_leftovers_are_removed() {
        let t = tempfile::tempdir().unwrap();
        for f in ["incoming.planet", "incoming.planet.tmp", "failed", "revoked-keys", "installing"] {
            std::fs::write(t.path().join(f), "x").unwrap();
        }
        remove_staging_leftovers(t.path());
        let mut left: Vec<String> =
            std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["failed", "installing", "revoked-keys"]);
    }

    /// Finding 8: revocations apply only to keys older than the signer, and last.
    #[test]
    fn only_newer_keys_revoke_older_ones() {
        let t = tempfile::tempdir().unwrap();
        let keys: Vec<planet_bundle::SecretKey> =
            (1..=3).map(|n| planet_bundle::SecretKey::from_seed([n; 32], [n; 8])).collect();
        let ring = KeyRing::parse(&keys.iter().map(|k| k.public().to_text()).collect::<String>()).unwrap();
        let part = t.path().join("part");
        std::fs::write(&part, b"x").unwrap();
        let prelude = |signer: usize, revokes: Vec<String>| {
            let out = t.path().join("b.planet");
            let sections: [(&str, &Path); 3] = [("rootfs", &part), ("vmlinuz", &part), ("initramfs", &part)];
            let claims = planet_bundle::Claims { expires: None, revokes, head: None };
            planet_bundle::write_bundle_with(&out, "9", 1, "6.1", &sections, &keys[signer], &claims).unwrap();
            planet_bundle::verify_file_ring(&out, &ring).unwrap().0
        };
        let state = t.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let id = |i: usize| keys[i].key_id_hex();
        // Key 2 (the middle one) revokes key 3 (newer: ignored) and key 1 (older: revoked).
        assert_eq!(apply_revocations(&state, &ring, &prelude(1, vec![id(2), id(0)])).unwrap(), [id(0)]);
        assert_eq!(read_revoked(&state), [id(0)]);
        // Again: nothing new. Then key 3 revokes key 2.
        assert!(apply_revocations(&state, &ring, &prelude(1, vec![id(0)])).unwrap().is_empty());
        assert_eq!(apply_revocations(&state, &ring, &prelude(2, vec![id(1)])).unwrap(), [id(1)]);
        assert_eq!(read_revoked(&state), [id(0), id(1)]);
        assert_eq!(ring.without(&read_revoked(&state)).keys(), &[keys[2].public()]);
    }

    /// The update threads' panics end only that thread.
    #[test]
    fn a_panicking_update_thread_is_contained() {
        let h = std::thread::spawn(|| contained("update", || panic!("boom")));
        assert!(h.join().is_ok());
    }
}
