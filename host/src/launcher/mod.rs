//! Launching Planet: a Planet release runs its own launcher in place; any other rootfs is run
//! by the built-in launcher as a namespaced container.

pub mod builtin;
pub mod planet_release;

use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use planet_config::PlanetConfig;

/// Directories that must outlive the overlay (and be real ext4, not overlayfs, for docker and
/// etcd): bind-mounted from the state partition.
pub const VOLUME_TARGETS: [&str; 4] = ["/var/lib/etcd", "/var/lib/docker", "/var/lib/containerd", "/var/lib/kubelet"];

/// A state directory mounted at `target` inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub target: &'static str,
}

/// The persistent volumes, kept under `<state>/volumes/<name>`.
pub fn volumes(state: &Path) -> Vec<Volume> {
    VOLUME_TARGETS
        .iter()
        .map(|t| Volume { source: state.join("volumes").join(t.rsplit('/').next().unwrap_or(t)), target: t })
        .collect()
}

/// Owner and permission bits (setuid, setgid and sticky included) of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// `st_mode & 0o7777`.
    pub mode: u32,
}

impl Ownership {
    fn of(m: &std::fs::Metadata) -> Ownership {
        Ownership { uid: m.uid(), gid: m.gid(), mode: m.mode() & 0o7777 }
    }
}

/// What a volume's source directory is made to look like before it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePrep {
    pub source: PathBuf,
    /// The owner and mode of the directory the volume covers in the composed root; `None`
    /// when the root has no directory there (nothing, or a symlink or file, which is not
    /// followed): the source is then only created if missing, root-owned 0755 (PID 1's umask
    /// is 022), as before volumes took their owner from the root.
    pub ownership: Option<Ownership>,
}

/// Reads the owner and mode of the directory each volume covers in the composed root at
/// `root`, so that stock services find their state directory as their package made it (Debian
/// ships `/var/lib/etcd` as etcd:etcd 0700, and its etcd.service, running as `etcd`, must be
/// able to create `/var/lib/etcd/default` on the volume).
///
/// Only reads: call it before anything is mounted over the targets (the built-in launcher
/// mounts the volumes in the container's own mount namespace, so the root seen here is the
/// overlay's).
pub fn volume_plan(root: &Path, volumes: &[Volume]) -> Result<Vec<VolumePrep>> {
    volumes
        .iter()
        .map(|v| {
            let covered = root.join(v.target.trim_start_matches('/'));
            let ownership = match std::fs::symlink_metadata(&covered) {
                Ok(m) if m.is_dir() => Some(Ownership::of(&m)),
                Ok(_) => None,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => None,
                Err(e) => return Err(e).with_context(|| format!("reading the owner of {}", covered.display())),
            };
            Ok(VolumePrep { source: v.source.clone(), ownership })
        })
        .collect()
}

/// Creates the volume's source directory if missing and gives its top directory the planned
/// owner and mode; what is inside it is left alone. Returns whether anything changed.
pub fn apply_volume(prep: &VolumePrep) -> Result<bool> {
    let src = &prep.source;
    let mut changed = match std::fs::create_dir(src) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(src).with_context(|| format!("creating {}", src.display()))?;
            true
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", src.display())),
    };
    let Some(want) = prep.ownership else { return Ok(changed) };
    let m = std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    if !m.is_dir() {
        bail!("volume {} is not a directory", src.display());
    }
    let have = Ownership::of(&m);
    if (have.uid, have.gid) != (want.uid, want.gid) {
        std::os::unix::fs::lchown(src, Some(want.uid), Some(want.gid))
            .with_context(|| format!("giving {} to {}:{}", src.display(), want.uid, want.gid))?;
        changed = true;
    }
    // After the chown, which may clear setuid and setgid.
    if changed || have.mode != want.mode {
        std::fs::set_permissions(src, std::fs::Permissions::from_mode(want.mode))
            .with_context(|| format!("setting mode {:04o} on {}", want.mode, src.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// Prepares every volume's source for its bind mount over `root`: [`volume_plan`], then
/// [`apply_volume`] for each, on every launch (a new release that changes a directory's owner
/// is followed). Both launchers call it in the parent, before the container or launcher starts.
pub fn prepare_volumes(root: &Path, volumes: &[Volume]) -> Result<()> {
    for prep in volume_plan(root, volumes)? {
        if apply_volume(&prep)? {
            if let Some(o) = prep.ownership {
                crate::event!(
                    "volume prepared",
                    path = prep.source.display(),
                    owner = format!("{}:{}", o.uid, o.gid),
                    mode = format!("{:04o}", o.mode)
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The rootfs ships `usr/bin/planet`.
    Release,
    Builtin,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Release => "release",
            Kind::Builtin => "builtin",
        }
    }
}

/// A Planet release is recognised by its launcher binary.
pub fn detect(root: &Path) -> Kind {
    if root.join("usr/bin/planet").is_file() {
        Kind::Release
    } else {
        Kind::Builtin
    }
}

/// Everything a launch needs, decided before it starts.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The composed Planet root; its path ends in `/rootfs`.
    pub root: PathBuf,
    pub config: PlanetConfig,
    pub volumes: Vec<Volume>,
    pub resolv_conf: String,
    pub hostname: String,
    /// Host directory of the cgroup the built-in container is placed in.
    pub cgroup: Option<PathBuf>,
}

/// A running container (or release launcher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Container {
    pub pid: libc::pid_t,
    pub kind: Kind,
    /// What asks it to stop cleanly: SIGRTMIN+3 for systemd, SIGTERM otherwise.
    pub stop_signal: libc::c_int,
}

pub fn launch(spec: &LaunchSpec) -> Result<Container> {
    let c = match detect(&spec.root) {
        Kind::Release => planet_release::spawn(spec)?,
        Kind::Builtin => builtin::spawn(spec)?,
    };
    crate::event!("launcher started", kind = c.kind.as_str(), pid = c.pid, root = spec.root.display());
    set_current(Some(c));
    Ok(c)
}

/// The container that runs now: set by [`launch`], cleared by the supervisor when it reaps
/// it. `planet-image enter` and [`crate::enter::run_in_container`] run commands in it.
static CURRENT: std::sync::Mutex<Option<Container>> = std::sync::Mutex::new(None);

pub fn set_current(c: Option<Container>) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = c;
}

pub fn current() -> Option<Container> {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        crate::sys::system::is_root()
    }

    fn mkdir(p: &Path, mode: u32) {
        std::fs::create_dir_all(p).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn ownership(p: &Path) -> Ownership {
        Ownership::of(&std::fs::symlink_metadata(p).unwrap())
    }

    #[test]
    fn the_plan_reads_what_each_volume_covers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let state = tmp.path().join("state");
        mkdir(&root.join("var/lib/etcd"), 0o2750);
        mkdir(&root.join("var/tmp"), 0o1777);
        std::os::unix::fs::symlink("/srv/docker", root.join("var/lib/docker")).unwrap();
        std::fs::write(root.join("var/lib/kubelet"), "").unwrap();
        let me = std::fs::metadata(root.join("var/tmp")).unwrap();
        // An owner change needs root; otherwise the directories are the test's own.
        let (uid, gid) = if is_root() {
            std::os::unix::fs::chown(root.join("var/lib/etcd"), Some(100), Some(101)).unwrap();
            (100, 101)
        } else {
            (me.uid(), me.gid())
        };
        let mut vols = volumes(&state);
        vols.push(Volume { source: state.join("volumes/tmp"), target: "/var/tmp" });
        let plan = volume_plan(&root, &vols).unwrap();
        let by_target: Vec<(&str, Option<Ownership>)> =
            vols.iter().zip(&plan).map(|(v, p)| (v.target, p.ownership)).collect();
        assert_eq!(
            by_target,
            [
                ("/var/lib/etcd", Some(Ownership { uid, gid, mode: 0o2750 })),
                // A symlink is not followed, a file is not a directory, and containerd is absent.
                ("/var/lib/docker", None),
                ("/var/lib/containerd", None),
                ("/var/lib/kubelet", None),
                ("/var/tmp", Some(Ownership { uid: me.uid(), gid: me.gid(), mode: 0o1777 })),
            ]
        );
        assert_eq!(
            plan.iter().map(|p| p.source.clone()).collect::<Vec<_>>(),
            vols.iter().map(|v| v.source.clone()).collect::<Vec<_>>()
        );
        // Nothing was created by planning.
        assert!(!state.exists());
    }

    #[test]
    fn volumes_take_the_owner_and_mode_of_the_directory_they_cover() {
        if !is_root() {
            eprintln!("skipped: giving a directory to another owner needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let state = tmp.path().join("state");
        let covered = root.join("var/lib/etcd");
        mkdir(&covered, 0o2700);
        std::os::unix::fs::chown(&covered, Some(100), Some(101)).unwrap();
        // Last boot's volume: root-owned 0755, with data inside that must stay as it is.
        let etcd = state.join("volumes/etcd");
        mkdir(&etcd.join("default"), 0o700);
        mkdir(&etcd.join("default/member"), 0o700);
        std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(etcd.join("default/member/wal"), "data").unwrap();
        // A volume whose directory the root does not have, already given away by someone.
        let docker = state.join("volumes/docker");
        mkdir(&docker, 0o711);
        std::os::unix::fs::chown(&docker, Some(7), Some(7)).unwrap();
        let vols = volumes(&state);

        prepare_volumes(&root, &vols).unwrap();
        assert_eq!(ownership(&etcd), Ownership { uid: 100, gid: 101, mode: 0o2700 });
        assert_eq!(ownership(&etcd.join("default")), Ownership { uid: 0, gid: 0, mode: 0o700 });
        assert_eq!(ownership(&etcd.join("default/member/wal")).uid, 0);
        assert_eq!(ownership(&docker), Ownership { uid: 7, gid: 7, mode: 0o711 });
        // Missing sources are created as before: root's, 0755 under PID 1's umask.
        for name in ["containerd", "kubelet"] {
            let m = std::fs::metadata(state.join("volumes").join(name)).unwrap();
            assert!(m.is_dir());
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
        // Nothing to do on the next boot.
        let plan = volume_plan(&root, &vols).unwrap();
        assert!(!plan.iter().any(|p| apply_volume(p).unwrap()));

        // A new release hands the directory to someone else; the volume follows.
        std::os::unix::fs::chown(&covered, Some(200), Some(201)).unwrap();
        std::fs::set_permissions(&covered, std::fs::Permissions::from_mode(0o1750)).unwrap();
        prepare_volumes(&root, &vols).unwrap();
        assert_eq!(ownership(&etcd), Ownership { uid: 200, gid: 201, mode: 0o1750 });
        assert_eq!(ownership(&etcd.join("default")), Ownership { uid: 0, gid: 0, mode: 0o700 });
    }

    #[test]
    fn a_volume_that_is_not_a_directory_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("etcd");
        std::fs::write(&src, "").unwrap();
        let prep = VolumePrep { source: src.clone(), ownership: Some(ownership(tmp.path())) };
        let e = apply_volume(&prep).unwrap_err();
        assert_eq!(e.to_string(), format!("volume {} is not a directory", src.display()));
    }
}
