//! The built-in launcher: runs the rootfs's init as a system container (new mount, pid, uts,
//! ipc and cgroup namespaces; host networking), the way systemd expects a container to look.
//!
//! The setup is a pure plan ([`plan`]) of steps executed in the child between `clone3` and
//! `execve`. The child of a multi-threaded process may not allocate, so every string is
//! prepared beforehand and the child only makes syscalls; a failing step reports its index and
//! errno through a close-on-exec pipe.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Container, Kind, LaunchSpec, Volume};
use crate::mounts::Mount;
use crate::sys::process::{ChildStep, ContainerChild, ExecArgs};
use crate::sys::{cstr, fd};

/// One setup action inside the container's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Mount(Mount),
    /// `mkdir -p` semantics for one level: an existing directory is fine.
    Mkdir(PathBuf, u32),
    /// A device node (or, with `S_IFREG`, an empty file to bind over).
    Mknod {
        path: PathBuf,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        target: String,
        link: PathBuf,
    },
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Character devices every container gets: (name, major, minor, mode).
pub const DEVICES: [(&str, u32, u32, u32); 9] = [
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("kmsg", 1, 11, 0o644),
    ("tty", 5, 0, 0o666),
    ("net/tun", 10, 200, 0o666),
    ("fuse", 10, 229, 0o666),
];

/// The container's mounts and files, in order, for a root at `root`. `console` is the host's
/// console device bound to `/dev/console`.
pub fn plan(root: &Path, volumes: &[Volume], console: &Path) -> Vec<Step> {
    let r = |p: &str| root.join(p.trim_start_matches('/'));
    let mut s = vec![
        // Nothing done in here may propagate back to the host.
        Step::Mount(Mount {
            source: "none".into(),
            target: "/".into(),
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        }),
    ];
    for v in volumes {
        s.push(Step::Mkdir(r("/var"), 0o755));
        s.push(Step::Mkdir(r("/var/lib"), 0o755));
        s.push(Step::Mkdir(r(v.target), 0o755));
        s.push(Step::Mount(Mount::bind(&v.source, r(v.target))));
    }
    for d in ["/proc", "/sys", "/dev", "/run"] {
        s.push(Step::Mkdir(r(d), 0o755));
    }
    s.push(Step::Mount(Mount::new("proc", r("/proc"), "proc").flags(NOSUID_NODEV_NOEXEC)));
    s.push(Step::Mount(Mount::new("sysfs", r("/sys"), "sysfs").flags(NOSUID_NODEV_NOEXEC | libc::MS_RDONLY)));
    s.push(Step::Mount(Mount::new("cgroup2", r("/sys/fs/cgroup"), "cgroup2").flags(NOSUID_NODEV_NOEXEC)));
    s.push(Step::Mount(Mount::new("tmpfs", r("/dev"), "tmpfs").flags(libc::MS_NOSUID).data("mode=0755,size=65536k")));
    s.push(Step::Mkdir(r("/dev/net"), 0o755));
    for (name, major, minor, mode) in DEVICES {
        s.push(Step::Mknod { path: r(&format!("/dev/{name}")), mode: libc::S_IFCHR | mode, major, minor });
    }
    s.push(Step::Mknod { path: r("/dev/console"), mode: libc::S_IFREG | 0o600, major: 0, minor: 0 });
    s.push(Step::Mount(Mount::bind(console, r("/dev/console"))));
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ] {
        s.push(Step::Symlink { target: target.into(), link: r(link) });
    }
    s.push(Step::Mkdir(r("/dev/pts"), 0o755));
    s.push(Step::Mount(
        Mount::new("devpts", r("/dev/pts"), "devpts")
            .flags(libc::MS_NOSUID | libc::MS_NOEXEC)
            .data("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ));
    s.push(Step::Mkdir(r("/dev/shm"), 0o1777));
    s.push(Step::Mount(
        Mount::new("shm", r("/dev/shm"), "tmpfs").flags(libc::MS_NOSUID | libc::MS_NODEV).data("mode=1777"),
    ));
    s.push(Step::Mount(
        Mount::new("tmpfs", r("/run"), "tmpfs").flags(libc::MS_NOSUID | libc::MS_NODEV).data("mode=0755"),
    ));
    s
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::Mount(m) => format!(
                "mounting {} ({}) on {}",
                m.source,
                m.fstype.as_deref().unwrap_or(if m.flags & libc::MS_BIND != 0 { "bind" } else { "flags" }),
                m.target.display()
            ),
            Step::Mkdir(p, _) => format!("creating {}", p.display()),
            Step::Mknod { path, .. } => format!("creating node {}", path.display()),
            Step::Symlink { link, .. } => format!("creating symlink {}", link.display()),
        }
    }
}

fn compile(step: &Step) -> Result<ChildStep> {
    Ok(match step {
        Step::Mount(m) => ChildStep::Mount {
            src: cstr(&m.source)?,
            target: cstr(&m.target)?,
            fstype: m.fstype.as_deref().map(cstr).transpose()?,
            flags: m.flags,
            data: m.data.as_deref().map(cstr).transpose()?,
        },
        Step::Mkdir(p, mode) => ChildStep::Mkdir(cstr(p)?, *mode),
        Step::Mknod { path, mode, major, minor } => ChildStep::Mknod(cstr(path)?, *mode, libc::makedev(*major, *minor)),
        Step::Symlink { target, link } => ChildStep::Symlink { target: cstr(target)?, link: cstr(link)? },
    })
}

/// Resolves `path` inside `root`, following symlinks as the container would see them, to pick
/// the stop signal (systemd wants SIGRTMIN+3).
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut cur = PathBuf::from(path);
    for _ in 0..16 {
        let host = root.join(cur.strip_prefix("/").unwrap_or(&cur));
        match std::fs::read_link(&host) {
            Ok(t) if t.is_absolute() => cur = t,
            Ok(t) => cur = cur.parent().unwrap_or(Path::new("/")).join(t),
            Err(_) => break,
        }
    }
    cur
}

pub fn stop_signal_for(root: &Path, init: &str) -> libc::c_int {
    let real = resolve_in_root(root, init);
    if real.file_name().is_some_and(|n| n == "systemd") {
        libc::SIGRTMIN() + 3
    } else {
        libc::SIGTERM
    }
}

/// Environment of the container's init.
pub fn init_env() -> Vec<String> {
    vec![
        "container=planet".into(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "TERM=vt220".into(),
        "HOME=/root".into(),
    ]
}

/// Writes the files the container reads at start: `/etc/container-environment` (0600: it holds
/// the env values, which are credentials), `/etc/resolv.conf`, `/etc/hostname`.
///
/// `etc` is in the overlay the container writes, and this runs as PID 1 outside every
/// namespace: nothing the container left there is followed. A symlinked `etc` is refused, each
/// file is written under a temporary name created with `O_EXCL | O_NOFOLLOW` and renamed over
/// whatever was there (a symlink, such as resolv.conf's usual one to systemd-resolved's file,
/// is replaced, never written through), and its mode is set with `fchmod`, so the umask does
/// not matter.
pub fn write_etc(spec: &LaunchSpec) -> Result<()> {
    let etc_path = spec.root.join("etc");
    let etc = open_etc(&spec.root).with_context(|| format!("opening {}", etc_path.display()))?;
    let files = [
        ("container-environment", spec.config.container_environment(), 0o600),
        ("resolv.conf", spec.resolv_conf.clone(), 0o644),
        ("hostname", format!("{}\n", spec.hostname), 0o644),
    ];
    for (name, text, mode) in files {
        write_at(&etc, name, text.as_bytes(), mode)
            .with_context(|| format!("writing {}", etc_path.join(name).display()))?;
    }
    Ok(())
}

/// Opens (creating it if missing) the directory `etc` of the trusted `root` without following
/// a symlink there.
fn open_etc(root: &Path) -> Result<OwnedFd> {
    let root_fd = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let name = c"etc";
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    for _ in 0..2 {
        let e = match fd::openat(root_fd.as_fd(), name, flags, 0) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::ENOENT) => {
                if let Err(e) = fd::mkdirat(root_fd.as_fd(), name, 0o755) {
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e).context("creating /etc in the rootfs");
                    }
                }
            }
            // O_DIRECTORY | O_NOFOLLOW on a symlink gives ENOTDIR (or ELOOP); the lookup below
            // only picks the message, nothing is opened through it.
            Some(libc::ELOOP | libc::ENOTDIR) => match std::fs::read_link(root.join("etc")) {
                Ok(t) => bail!(
                    "/etc in the rootfs is a symlink (to {}); planet-init does not write through it: \
                     make /etc a real directory in the image (or remove the link from the state partition's overlay)",
                    t.display()
                ),
                Err(_) => bail!("/etc in the rootfs is not a directory"),
            },
            _ => return Err(e.into()),
        }
    }
    bail!("/etc in the rootfs keeps changing")
}

/// Writes `name` in the directory `dir` as a new file of `mode`: a temporary name, then a
/// rename over the old entry.
fn write_at(dir: &OwnedFd, name: &str, data: &[u8], mode: libc::mode_t) -> Result<()> {
    use std::io::Write;
    let tmp = cstr(format!(".{name}.planet-init"))?;
    let target = cstr(name)?;
    let d = dir.as_fd();
    // A leftover of an interrupted write (or anything the container put there) goes first.
    let _ = fd::unlinkat(d, &tmp);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut f = std::fs::File::from(fd::openat(d, &tmp, flags, mode).context("creating a temporary file")?);
    let result = (|| -> std::io::Result<()> {
        // The umask may have taken bits away; never more than `mode`.
        fd::fchmod(f.as_fd(), mode)?;
        f.write_all(data)?;
        f.sync_all()?;
        fd::renameat(d, &tmp, &target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fd::unlinkat(d, &tmp);
    }
    result.map_err(Into::into)
}

pub fn spawn(spec: &LaunchSpec) -> Result<Container> {
    let init_host = spec.root.join(spec.config.init.trim_start_matches('/'));
    if std::fs::symlink_metadata(&init_host).is_err() {
        bail!("the rootfs has no {} (set planet.init= to its init)", spec.config.init);
    }
    write_etc(spec)?;
    // Here, not in the child: the covered directories are read before anything is mounted.
    super::prepare_volumes(&spec.root, &spec.volumes)?;
    let steps = plan(&spec.root, &spec.volumes, Path::new("/dev/console"));
    let csteps = steps.iter().map(compile).collect::<Result<Vec<_>>>()?;
    let root = cstr(&spec.root)?;
    let hostname = spec.hostname.clone().into_bytes();
    let init = cstr(&spec.config.init)?;
    let env_c = init_env().into_iter().map(cstr).collect::<std::io::Result<Vec<_>>>()?;
    let exec_args = ExecArgs::new(vec![init.clone()], env_c);

    let cgroup_fd = match &spec.cgroup {
        Some(dir) => Some(std::fs::File::open(dir).with_context(|| format!("opening cgroup {}", dir.display()))?),
        None => None,
    };

    let (rd, wr) = fd::pipe().context("creating the launch pipe")?;

    let ns = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP;
    let child = ContainerChild {
        steps: &csteps,
        hostname: &hostname,
        root: &root,
        init: &init,
        args: &exec_args,
        report: wr.as_fd(),
    };
    let pid = match crate::sys::process::clone_container(ns, cgroup_fd.as_ref().map(|f| f.as_fd()), &child) {
        Err(e) if cgroup_fd.is_some() => {
            // Without the cgroup the container still runs, just without its own subtree.
            crate::event!(
                "cgroup unavailable",
                error = format!("clone3 into {}: {e}", spec.cgroup.as_deref().unwrap_or(Path::new("?")).display())
            );
            crate::sys::process::clone_container(ns, None, &child)
        }
        r => r,
    }
    .context("creating the container (clone3)")?;
    drop(wr);
    let mut report = [0u8; 8];
    let mut f = std::fs::File::from(rd);
    let got = f.read(&mut report).context("reading the launch pipe")?;
    if got == 8 {
        let step = u32::from_ne_bytes(report[0..4].try_into().unwrap()) as usize;
        let errno = i32::from_ne_bytes(report[4..8].try_into().unwrap());
        let n = steps.len();
        let what = match step {
            s if s < n => steps[s].describe(),
            s if s == n => format!("setting hostname {}", spec.hostname),
            s if s == n + 1 => format!("entering {}", spec.root.display()),
            s if s == n + 2 => "detaching the old root".into(),
            s if s == n + 3 || s == n + 4 => format!("moving to {}", spec.root.display()),
            s if s == n + 5 => "entering /".into(),
            _ => format!("executing {}", spec.config.init),
        };
        // Reap it so no zombie is left behind.
        let _ = crate::sys::process::waitpid(pid, 0);
        return Err(std::io::Error::from_raw_os_error(errno)).context(format!("{what} in the container"));
    }
    Ok(Container { pid, kind: Kind::Builtin, stop_signal: stop_signal_for(&spec.root, &spec.config.init) })
}

/// Creates the host cgroup the container lives in and delegates the controllers to it.
pub fn prepare_cgroup(cgroup_root: &Path, name: &str) -> Result<PathBuf> {
    for c in ["cpuset", "cpu", "io", "memory", "pids", "hugetlb", "rdma", "misc"] {
        // Best effort: a controller the kernel lacks is simply not delegated.
        let _ = std::fs::write(cgroup_root.join("cgroup.subtree_control"), format!("+{c}"));
    }
    let dir = cgroup_root.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", dir.display())),
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_plan_is_what_systemd_expects() {
        let root = Path::new("/run/planet/rootfs");
        let vols = super::super::volumes(Path::new("/run/planet/state"));
        let p = plan(root, &vols, Path::new("/dev/console"));
        let mounts: Vec<(String, String, String)> = p
            .iter()
            .filter_map(|s| match s {
                Step::Mount(m) => Some((
                    m.source.clone(),
                    m.target.display().to_string(),
                    m.fstype.clone().unwrap_or_else(|| {
                        if m.flags & libc::MS_BIND != 0 {
                            "bind".into()
                        } else {
                            "-".into()
                        }
                    }),
                )),
                _ => None,
            })
            .collect();
        let expect = |s: &str, t: &str, f: &str| (s.to_string(), t.to_string(), f.to_string());
        assert_eq!(
            mounts,
            vec![
                expect("none", "/", "-"),
                expect("/run/planet/state/volumes/etcd", "/run/planet/rootfs/var/lib/etcd", "bind"),
                expect("/run/planet/state/volumes/docker", "/run/planet/rootfs/var/lib/docker", "bind"),
                expect("/run/planet/state/volumes/containerd", "/run/planet/rootfs/var/lib/containerd", "bind"),
                expect("/run/planet/state/volumes/kubelet", "/run/planet/rootfs/var/lib/kubelet", "bind"),
                expect("proc", "/run/planet/rootfs/proc", "proc"),
                expect("sysfs", "/run/planet/rootfs/sys", "sysfs"),
                expect("cgroup2", "/run/planet/rootfs/sys/fs/cgroup", "cgroup2"),
                expect("tmpfs", "/run/planet/rootfs/dev", "tmpfs"),
                expect("/dev/console", "/run/planet/rootfs/dev/console", "bind"),
                expect("devpts", "/run/planet/rootfs/dev/pts", "devpts"),
                expect("shm", "/run/planet/rootfs/dev/shm", "tmpfs"),
                expect("tmpfs", "/run/planet/rootfs/run", "tmpfs"),
            ]
        );
        // /sys is read-only, cgroup2 writable; the first step makes propagation private.
        let find = |t: &str| {
            p.iter()
                .find_map(|s| match s {
                    Step::Mount(m) if m.target == Path::new(t) => Some(m.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert_ne!(find("/run/planet/rootfs/sys").flags & libc::MS_RDONLY, 0);
        assert_eq!(find("/run/planet/rootfs/sys/fs/cgroup").flags & libc::MS_RDONLY, 0);
        assert_eq!(find("/").flags, libc::MS_REC | libc::MS_PRIVATE);
        assert!(p.contains(&Step::Mknod {
            path: "/run/planet/rootfs/dev/null".into(),
            mode: libc::S_IFCHR | 0o666,
            major: 1,
            minor: 3
        }));
        assert!(p.contains(&Step::Symlink { target: "pts/ptmx".into(), link: "/run/planet/rootfs/dev/ptmx".into() }));
        // Every node and symlink under /dev comes after the tmpfs mount over /dev.
        let dev_mount = p
            .iter()
            .position(|s| matches!(s, Step::Mount(m) if m.target == Path::new("/run/planet/rootfs/dev")))
            .unwrap();
        let first_node = p.iter().position(|s| matches!(s, Step::Mknod { .. })).unwrap();
        assert!(dev_mount < first_node);
    }

    #[test]
    fn systemd_is_stopped_with_sigrtmin_plus_3() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
        std::fs::write(root.join("lib/systemd/systemd"), "").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        std::fs::write(root.join("sbin/busybox-init"), "").unwrap();
        std::os::unix::fs::symlink("busybox-init", root.join("sbin/other")).unwrap();
        assert_eq!(resolve_in_root(root, "/sbin/init"), Path::new("/lib/systemd/systemd"));
        assert_eq!(stop_signal_for(root, "/sbin/init"), libc::SIGRTMIN() + 3);
        assert_eq!(resolve_in_root(root, "/sbin/other"), Path::new("/sbin/busybox-init"));
        assert_eq!(stop_signal_for(root, "/sbin/other"), libc::SIGTERM);
    }

    #[test]
    fn etc_files_are_written_replacing_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", root.join("etc/resolv.conf")).unwrap();
        let config = planet_config::RawConfig { role: Some("dev".into()), ..Default::default() }
            .validate(planet_config::Source::Cmdline, "planet.")
            .unwrap();
        let spec = LaunchSpec {
            root: root.clone(),
            config,
            volumes: vec![],
            resolv_conf: "nameserver 10.0.2.3\n".into(),
            hostname: "planet-1".into(),
            cgroup: None,
        };
        write_etc(&spec).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(), "nameserver 10.0.2.3\n");
        assert!(std::fs::read_to_string(root.join("etc/container-environment"))
            .unwrap()
            .starts_with("PLANET_ROLE=dev\n"));
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "planet-1\n");
    }

    fn etc_spec(root: &Path) -> LaunchSpec {
        let config = planet_config::RawConfig {
            role: Some("dev".into()),
            env: vec![("TOKEN".into(), "s3cret".into())],
            ..Default::default()
        }
        .validate(planet_config::Source::Cmdline, "planet.")
        .unwrap();
        LaunchSpec {
            root: root.to_path_buf(),
            config,
            volumes: vec![],
            resolv_conf: "nameserver 10.0.2.3\n".into(),
            hostname: "planet-1".into(),
            cgroup: None,
        }
    }

    /// The env values are credentials: 0600 whatever PID 1's umask, also when an older
    /// world-readable file is already there (it persists in the overlay's upper layer).
    #[test]
    fn container_environment_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let spec = etc_spec(&root);
        let old = crate::sys::system::umask(0o022);
        let first = write_etc(&spec);
        std::fs::set_permissions(root.join("etc/container-environment"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let second = write_etc(&spec);
        crate::sys::system::umask(old);
        first.unwrap();
        second.unwrap();
        let m = std::fs::metadata(root.join("etc/container-environment")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(root.join("etc/container-environment")).unwrap().contains("TOKEN=s3cret\n"));
        // The others stay readable: resolvers and hostname(1) run as any user.
        let m = std::fs::metadata(root.join("etc/resolv.conf")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
    }

    /// `etc` lives in the overlay the container writes: PID 1 must not follow it elsewhere.
    #[test]
    fn a_symlinked_etc_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("etc")).unwrap();
        let err = format!("{:#}", write_etc(&etc_spec(&root)).unwrap_err());
        assert!(err.contains("symlink") && err.contains("/etc"), "{err}");
        assert!(!tmp.path().join("outside/hostname").exists());
        assert!(!tmp.path().join("outside/container-environment").exists());
        // A symlinked file inside a real etc is replaced, never written through.
        std::fs::remove_file(root.join("etc")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../outside/hostname", root.join("etc/hostname")).unwrap();
        write_etc(&etc_spec(&root)).unwrap();
        assert!(!tmp.path().join("outside/hostname").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "planet-1\n");
    }
}
