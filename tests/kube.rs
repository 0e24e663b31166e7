//! The Planet Kubernetes release (built by scripts/make-planet-release) on a real boot, as a
//! `dev` machine under QEMU (TCG here: Kubernetes takes minutes to come up). Everything is
//! checked from outside with tools nobody here wrote: curl against the forwarded API server
//! port, and the release's own kubectl run through `planet-image enter`.

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Boot to the container's first unit: the host's part, well under a minute even under TCG.
const BOOT: Duration = Duration::from_secs(300);
/// Kubernetes up (API server ready, node Ready) from the container's start: measured at about
/// 2½ minutes under TCG on 2 cores (10 to over 25 while planet-node's loops still asked through
/// kubectl, see node/src/api.rs); the limit leaves room for a loaded CI machine.
const KUBE_READY: u64 = 1500;

/// The HTTP status curl gets for an anonymous request to the forwarded API server port.
fn anonymous_status(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn boot(image: &Path, s: &Scratch, sock: &Path, port: u16) -> Guest {
    let fwd = format!("{port}:6443");
    let sock = sock.display().to_string();
    let args = [
        "--cmdline",
        "planet.role=dev planet.hostname=kube-1",
        "--memory",
        "4096",
        "--cpus",
        "2",
        "--forward",
        &fwd,
        "--enter-socket",
        &sock,
    ];
    let mut guest = Guest::start(image, s, &args);
    guest.wait_for("planet-node: setup role=dev", BOOT);
    guest
}

/// Waits for the release's own health check inside the container; returns how long it took.
fn wait_ready(guest: &Guest, sock: &Path) -> Duration {
    let start = Instant::now();
    enter_ok(guest, sock, &["planet-node", "wait", "--timeout", &KUBE_READY.to_string()]);
    start.elapsed()
}

#[test]
fn dev_machine_runs_kubernetes_and_keeps_the_cluster_across_a_reboot() {
    let s = Scratch::new("kube-dev");
    let image = kube_disk(&s, &[]);
    let sock = s.path("enter.sock");
    let port = free_port();

    let mut guest = boot(&image, &s, &sock, port);
    let took = wait_ready(&guest, &sock);
    eprintln!("kubernetes ready {}s after planet-node setup", took.as_secs());

    // The node is Ready, under its name.
    let nodes = enter_ok(&guest, &sock, &["kubectl", "get", "nodes", "-o", "wide", "--no-headers"]);
    assert!(nodes.contains("kube-1") && nodes.contains(" Ready "), "{nodes}");

    // No anonymous access: even /readyz, open to anyone by default, answers 401.
    assert_eq!(anonymous_status(port, "/readyz"), "401");
    assert_eq!(anonymous_status(port, "/api/v1/namespaces/kube-system/secrets"), "401");

    // The control plane runs as processes of the container, under systemd.
    let ps = enter_ok(&guest, &sock, &["ps", "-e", "-o", "pid=,comm="]);
    for name in
        ["systemd", "etcd", "dockerd", "kube-apiserver", "kube-scheduler", "kube-controller", "kubelet", "kube-proxy"]
    {
        assert!(
            ps.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|c| c.starts_with(name))),
            "{name} not in:\n{ps}"
        );
    }
    assert!(ps.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "systemd"]), "{ps}");

    // A pod from an image the release ships (no registry is reachable), and its log.
    enter_ok(
        &guest,
        &sock,
        &[
            "kubectl",
            "run",
            "hello",
            "--image=planet/busybox:1.35",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname); sleep 3600",
        ],
    );
    enter_ok(
        &guest,
        &sock,
        &["kubectl", "wait", "--for=condition=Ready", "pod/hello", &format!("--timeout={KUBE_READY}s")],
    );
    let log = enter_ok(&guest, &sock, &["kubectl", "logs", "hello"]);
    assert_eq!(log.trim(), "hello from hello");

    // planet-init's own health check ran the release's health command and found it healthy.
    guest.wait_for("planet-init: health healthy=true", Duration::from_secs(120));

    // enter returns the remote status.
    assert_eq!(enter(&sock, &["false"]).0, 1);

    // State to survive the reboot: a namespace and an object in it.
    enter_ok(&guest, &sock, &["kubectl", "create", "namespace", "keep"]);
    enter_ok(&guest, &sock, &["kubectl", "-n", "keep", "create", "configmap", "marker", "--from-literal=boot=first"]);

    guest.monitor("system_powerdown");
    assert!(guest.wait_exit(Duration::from_secs(180)).is_some(), "no power-off; console:\n{}", tail(&guest.console()));
    drop(guest);

    let mut guest = boot(&image, &s, &sock, port);
    let console = guest.wait_for("planet-node: pki ", BOOT);
    assert!(
        console.contains("planet-node: pki kept"),
        "the PKI was made again on the second boot:\n{}",
        tail(&console)
    );
    wait_ready(&guest, &sock);
    let cm = enter_ok(
        &guest,
        &sock,
        &["kubectl", "-n", "keep", "get", "configmap", "marker", "-o", "jsonpath={.data.boot}"],
    );
    assert_eq!(cm.trim(), "first");
}

/// A second make-planet-release of unchanged inputs reuses the cache and gives the same bytes;
/// its manifest lists every Debian package of the rootfs and the Kubernetes source digest.
#[test]
fn release_rebuild_is_cached_and_identical() {
    let s = Scratch::new("release-again");
    let first = std::fs::canonicalize(fixture("planet-release.tar.gz")).unwrap();
    let out = ok(Command::new(repo().join("scripts/make-planet-release")).arg("-o").arg(s.path("")));
    let again = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("cached build") && log.contains("cached release for these inputs"), "{log}");
    let digest = |p: &Path| stdout(Command::new("sha256sum").arg(p)).split_whitespace().next().unwrap().to_string();
    assert_eq!(digest(&again), digest(&first), "{} and {} differ", again.display(), first.display());

    let manifest_path = again.with_extension("").with_extension("json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let dsc = m["kubernetes"]["dsc_sha256"].as_str().unwrap();
    assert_eq!(dsc.len(), 64, "{m}");
    assert_eq!(m["kubernetes"]["version"], "v1.20.2");
    // The manifest's package list is the rootfs's own dpkg database, checked with dpkg-query.
    let listed: Vec<String> = m["debian"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    let root = s.path("root");
    std::fs::create_dir_all(&root).unwrap();
    ok(Command::new("tar").arg("-xzf").arg(&again).arg("-C").arg(&root).arg("rootfs/var/lib/dpkg"));
    let mut installed: Vec<String> =
        stdout(Command::new("dpkg-query").arg("--admindir").arg(root.join("rootfs/var/lib/dpkg")).args([
            "-W",
            "-f",
            "${Package} ${Version}\n",
        ]))
        .lines()
        .map(String::from)
        .collect();
    installed.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, installed);
    for want in ["etcd-server", "docker.io", "systemd", "containernetworking-plugins", "iptables"] {
        assert!(listed.iter().any(|l| l.starts_with(&format!("{want} "))), "{want} missing from the manifest");
    }
}
