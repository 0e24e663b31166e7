//! Mounts as data: the host's early mounts and the launcher's container mounts are lists of
//! [`Mount`] values, so tests can compare plans without performing them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::sys;

/// One `mount(2)` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: libc::c_ulong,
    pub data: Option<String>,
}

impl Mount {
    pub fn new(source: &str, target: impl Into<PathBuf>, fstype: &str) -> Mount {
        Mount { source: source.into(), target: target.into(), fstype: Some(fstype.into()), flags: 0, data: None }
    }

    /// A recursive bind mount of `source` onto `target`.
    pub fn bind(source: impl AsRef<Path>, target: impl Into<PathBuf>) -> Mount {
        Mount {
            source: source.as_ref().display().to_string(),
            target: target.into(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        }
    }

    pub fn flags(mut self, flags: libc::c_ulong) -> Mount {
        self.flags |= flags;
        self
    }

    pub fn data(mut self, data: &str) -> Mount {
        self.data = Some(data.into());
        self
    }

    /// Creates the target directory and mounts.
    pub fn perform(&self) -> Result<()> {
        std::fs::create_dir_all(&self.target).with_context(|| format!("creating {}", self.target.display()))?;
        sys::mount(Some(&self.source), &self.target, self.fstype.as_deref(), self.flags, self.data.as_deref())
            .with_context(|| {
                format!(
                    "mounting {} ({}) on {}",
                    self.source,
                    self.fstype.as_deref().unwrap_or("bind"),
                    self.target.display()
                )
            })
    }
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The host's own API filesystems, under `root` (`/` at boot).
pub fn early_mounts(root: &Path) -> Vec<Mount> {
    vec![
        Mount::new("proc", root.join("proc"), "proc").flags(NOSUID_NODEV_NOEXEC),
        Mount::new("sysfs", root.join("sys"), "sysfs").flags(NOSUID_NODEV_NOEXEC),
        Mount::new("devtmpfs", root.join("dev"), "devtmpfs").flags(libc::MS_NOSUID).data("mode=0755"),
        Mount::new("devpts", root.join("dev/pts"), "devpts")
            .flags(libc::MS_NOSUID | libc::MS_NOEXEC)
            .data("gid=5,mode=0620,ptmxmode=0666"),
        Mount::new("tmpfs", root.join("dev/shm"), "tmpfs").flags(libc::MS_NOSUID | libc::MS_NODEV).data("mode=1777"),
        Mount::new("tmpfs", root.join("run"), "tmpfs").flags(libc::MS_NOSUID | libc::MS_NODEV).data("mode=0755"),
        Mount::new("cgroup2", root.join("sys/fs/cgroup"), "cgroup2").flags(NOSUID_NODEV_NOEXEC).data("nsdelegate"),
    ]
}

/// Performs the early mounts, skipping those already in place (the console setup may have
/// mounted /dev before anything else).
pub fn mount_early(root: &Path) -> Result<()> {
    for m in early_mounts(root) {
        if sys::is_mountpoint(&m.target) {
            continue;
        }
        m.perform()?;
    }
    Ok(())
}

/// Mount points listed in a `/proc/self/mountinfo` text that lie at or under `prefix`, in the
/// order they were mounted.
pub fn mounts_under(mountinfo: &str, prefix: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(prefix))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or under `prefix`, newest first. A mount that stays busy is remounted
/// read-only (so ext4 is clean at power-off) and detached. Returns how many were unmounted.
pub fn unmount_all_under(prefix: &Path) -> Result<usize> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut count = 0;
    for target in mounts_under(&info, prefix).into_iter().rev() {
        match sys::umount(&target, 0) {
            Ok(()) => count += 1,
            Err(e) => {
                let _ = sys::mount(None, &target, None, libc::MS_REMOUNT | libc::MS_RDONLY, None);
                if sys::umount(&target, libc::MNT_DETACH).is_ok() {
                    count += 1;
                }
                crate::event!("unmount busy", path = target.display(), error = e);
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_mounts_cover_the_api_filesystems() {
        let m = early_mounts(Path::new("/"));
        let targets: Vec<_> = m.iter().map(|m| m.target.display().to_string()).collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/sys/fs/cgroup"]);
        assert_eq!(m[6].fstype.as_deref(), Some("cgroup2"));
    }

    #[test]
    fn mountinfo_is_filtered_and_unescaped() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 1 254:2 / /run/planet/slot ro - squashfs /dev/vda2 ro\n\
                    41 1 254:4 / /run/planet/state rw - ext4 /dev/vda4 rw\n\
                    42 1 0:40 / /run/planet/root\\040fs rw - overlay overlay rw\n";
        assert_eq!(
            mounts_under(info, Path::new("/run/planet")),
            vec![
                PathBuf::from("/run/planet/slot"),
                PathBuf::from("/run/planet/state"),
                PathBuf::from("/run/planet/root fs")
            ]
        );
    }
}
