//! Running a Planet release's own launcher in place: `<root>/usr/bin/planet start …` with the
//! configuration mapped to its flags. It refuses to run from a path without `/rootfs/`, which
//! is why the root is composed at `…/rootfs`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use planet_config::{CloudProvider, PlanetConfig, Role};

use super::{Container, Kind, LaunchSpec, Volume};

/// The exact argv. `dev` becomes `--role=master --role=node` (the launcher's roles are a list);
/// `--cloud-provider` is left out for `none`; optional values only when known. The env values
/// are not here: see [`launcher_env`].
pub fn argv(root: &Path, cfg: &PlanetConfig, hostname: Option<&str>, volumes: &[Volume]) -> Vec<String> {
    let mut a = vec![root.join("usr/bin/planet").display().to_string(), "start".to_string()];
    match cfg.role {
        Role::Dev => {
            a.push("--role=master".into());
            a.push("--role=node".into());
        }
        r => a.push(format!("--role={r}")),
    }
    if let Some(ip) = cfg.effective_master_ip() {
        a.push(format!("--master-ip={ip}"));
    }
    if cfg.cloud_provider != CloudProvider::None {
        a.push(format!("--cloud-provider={}", cfg.cloud_provider));
    }
    if let Some(ip) = cfg.public_ip {
        a.push(format!("--public-ip={ip}"));
    }
    if let Some(h) = cfg.hostname.as_deref().or(hostname) {
        a.push(format!("--hostname={h}"));
    }
    if let Some(n) = &cfg.node_name {
        a.push(format!("--node-name={n}"));
    }
    for v in volumes {
        a.push(format!("--volume={}:{}", v.source.display(), v.target));
    }
    a
}

/// Variables added to the launcher's environment. The env values are credentials: on argv
/// they would sit in the world-readable `/proc/PID/cmdline` for the machine's whole life,
/// while `/proc/PID/environ` is readable only by the process's owner. Planet's `start` takes
/// `--env`'s default from `$PLANET_ENV` (the same comma-separated `K=V` list).
pub fn launcher_env(cfg: &PlanetConfig) -> Vec<(String, String)> {
    if cfg.env.is_empty() {
        return Vec::new();
    }
    let env: Vec<String> = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vec![("PLANET_ENV".to_string(), env.join(","))]
}

/// How to execute the launcher: `(program, argv[0], arguments before the launcher's own)`.
///
/// The host has no `/bin/sh`; a script launcher whose interpreter is missing on the host is run
/// with the release's own interpreter (resolved inside the root), the script path kept as `$0`.
pub fn command_for(root: &Path, launcher: &Path) -> (PathBuf, String, Vec<String>) {
    let direct = (launcher.to_path_buf(), launcher.display().to_string(), Vec::new());
    let mut head = [0u8; 256];
    let n = std::fs::File::open(launcher).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    let Some(line) = head[..n].strip_prefix(b"#!") else { return direct };
    let line = String::from_utf8_lossy(line.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut words = line.split_whitespace();
    let Some(interp) = words.next() else { return direct };
    if Path::new(interp).exists() || !interp.starts_with('/') {
        return direct;
    }
    let inside = super::builtin::resolve_in_root(root, interp);
    let program = root.join(inside.strip_prefix("/").unwrap_or(&inside));
    if !program.is_file() {
        return direct;
    }
    // The kernel passes everything after the interpreter as one argument.
    let rest: Vec<&str> = words.collect();
    let mut args = Vec::new();
    if !rest.is_empty() {
        args.push(rest.join(" "));
    }
    args.push(launcher.display().to_string());
    (program, interp.to_string(), args)
}

pub fn spawn(spec: &LaunchSpec) -> Result<Container> {
    // The launcher mounts the `--volume` sources itself; they take the owner and mode of what
    // they cover, as the built-in launcher's do.
    super::prepare_volumes(&spec.root, &spec.volumes)?;
    let argv = argv(&spec.root, &spec.config, Some(&spec.hostname), &spec.volumes);
    let (program, arg0, prefix) = command_for(&spec.root, Path::new(&argv[0]));
    let mut cmd = Command::new(&program);
    // PID 1 blocks the signals it reads from its signalfd; std's spawn passes the mask on, and a
    // launcher with SIGTERM blocked could never be stopped.
    crate::sys::process::unblock_signals_on_exec(&mut cmd);
    let child = cmd
        .arg0(&arg0)
        .args(&prefix)
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .envs(launcher_env(&spec.config))
        .current_dir(&spec.root)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    Ok(Container { pid: child.id() as libc::pid_t, kind: Kind::Release, stop_signal: libc::SIGTERM })
}

#[cfg(test)]
mod tests {
    use super::*;
    use planet_config::{RawConfig, SecretText, Source};

    const TOKEN: &str = "q4w8zt.m2x7c5v9b1n3k6j0";

    fn cfg(role: &str, master: Option<&str>) -> PlanetConfig {
        RawConfig {
            role: Some(role.into()),
            master_ip: master.map(Into::into),
            public_ip: Some("10.0.2.15".into()),
            cloud_provider: Some("aws".into()),
            env: vec![("AWS_REGION".into(), "us-east-1".into()), ("X".into(), "y".into())],
            node_name: Some("node-1".into()),
            join_token: Some(SecretText::new(TOKEN)),
            ..Default::default()
        }
        .validate(Source::Cmdline, "planet.")
        .unwrap()
    }

    #[test]
    fn node_flags_map_exactly() {
        let root = Path::new("/run/planet/rootfs");
        let vols = super::super::volumes(Path::new("/run/planet/state"));
        let a = argv(root, &cfg("node", Some("10.0.0.10")), Some("planet-123456"), &vols);
        assert_eq!(
            a,
            [
                "/run/planet/rootfs/usr/bin/planet",
                "start",
                "--role=node",
                "--master-ip=10.0.0.10",
                "--cloud-provider=aws",
                "--public-ip=10.0.2.15",
                "--hostname=planet-123456",
                "--node-name=node-1",
                "--volume=/run/planet/state/volumes/etcd:/var/lib/etcd",
                "--volume=/run/planet/state/volumes/docker:/var/lib/docker",
                "--volume=/run/planet/state/volumes/containerd:/var/lib/containerd",
                "--volume=/run/planet/state/volumes/kubelet:/var/lib/kubelet",
            ]
        );
        assert!(a[0].contains("/rootfs/"));
    }

    /// `/proc/PID/cmdline` is world-readable for the launcher's whole life; its environment
    /// is not. Planet reads `--env`'s default from `$PLANET_ENV`.
    #[test]
    fn env_values_go_through_the_environment_not_argv() {
        let c = cfg("node", Some("10.0.0.10"));
        let a = argv(Path::new("/r/rootfs"), &c, None, &[]);
        assert!(!a.iter().any(|f| f.contains("us-east-1") || f.starts_with("--env")), "{a:?}");
        // Nor the join token, which is not the release launcher's at all.
        assert!(!a.iter().chain(launcher_env(&c).iter().map(|(_, v)| v)).any(|f| f.contains(TOKEN)), "{a:?}");
        assert_eq!(launcher_env(&c), [("PLANET_ENV".to_string(), "AWS_REGION=us-east-1,X=y".to_string())]);
        let mut none = c.clone();
        none.env.clear();
        assert!(launcher_env(&none).is_empty());
    }

    #[test]
    fn scripts_use_the_release_interpreter_when_the_host_has_none() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), "").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/planet-test-sh")).unwrap();
        let launcher = root.join("usr/bin/planet");
        std::fs::write(&launcher, "#!/bin/planet-test-sh -e\necho\n").unwrap();
        let (program, arg0, prefix) = command_for(&root, &launcher);
        assert_eq!(program, root.join("bin/busybox"));
        assert_eq!(arg0, "/bin/planet-test-sh");
        assert_eq!(prefix, ["-e".to_string(), launcher.display().to_string()]);
        // A binary (or a script whose interpreter the host has) runs directly.
        std::fs::write(&launcher, "\x7fELF").unwrap();
        assert_eq!(command_for(&root, &launcher), (launcher.clone(), launcher.display().to_string(), vec![]));
        std::fs::write(&launcher, "#!/proc/self/exe\n").unwrap();
        assert_eq!(command_for(&root, &launcher).0, launcher);
    }

    #[test]
    fn volume_sources_are_prepared_before_the_launcher_runs() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/etcd")).unwrap();
        std::fs::set_permissions(root.join("var/lib/etcd"), std::fs::Permissions::from_mode(0o2750)).unwrap();
        let launcher = root.join("usr/bin/planet");
        std::fs::write(&launcher, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = cfg("dev", None);
        config.env.clear();
        let spec = LaunchSpec {
            root,
            config,
            volumes: super::super::volumes(&state),
            resolv_conf: String::new(),
            hostname: "planet-1".into(),
            cgroup: None,
        };
        let c = spawn(&spec).unwrap();
        assert_eq!(crate::sys::process::waitpid(c.pid, 0).unwrap().0, c.pid);
        let etcd = std::fs::metadata(state.join("volumes/etcd")).unwrap();
        assert_eq!(etcd.permissions().mode() & 0o7777, 0o2750);
        assert!(state.join("volumes/kubelet").is_dir());
    }

    #[test]
    fn the_launcher_gets_planet_env_in_its_environment() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let out = tmp.path().join("seen");
        let launcher = root.join("usr/bin/planet");
        std::fs::write(&launcher, format!("#!/bin/sh\nprintf '%s|%s' \"$PLANET_ENV\" \"$*\" >{}\n", out.display()))
            .unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = LaunchSpec {
            root,
            config: cfg("node", Some("10.0.0.10")),
            volumes: vec![],
            resolv_conf: String::new(),
            hostname: "planet-1".into(),
            cgroup: None,
        };
        let c = spawn(&spec).unwrap();
        assert_eq!(crate::sys::process::waitpid(c.pid, 0).unwrap().0, c.pid);
        let seen = std::fs::read_to_string(&out).unwrap();
        let (env, args) = seen.split_once('|').unwrap();
        assert_eq!(env, "AWS_REGION=us-east-1,X=y");
        assert!(!args.contains("us-east-1"), "{args}");
    }

    #[test]
    fn dev_is_master_and_node_and_defaults_master_ip() {
        let mut c = cfg("dev", None);
        c.cloud_provider = CloudProvider::None;
        c.env.clear();
        c.node_name = None;
        let a = argv(Path::new("/r/rootfs"), &c, None, &[]);
        assert_eq!(
            a,
            [
                "/r/rootfs/usr/bin/planet",
                "start",
                "--role=master",
                "--role=node",
                "--master-ip=10.0.2.15",
                "--public-ip=10.0.2.15"
            ]
        );
    }
}
