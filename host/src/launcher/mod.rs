//! Launching Planet: a Planet release runs its own launcher in place; any other rootfs is run
//! by the built-in launcher as a namespaced container.

pub mod builtin;
pub mod planet_release;

use std::path::{Path, PathBuf};

use anyhow::Result;
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
