//! Kubernetes clusters of several QEMU machines for the end-to-end tier (tests/cluster.rs,
//! tests/apps.rs): machines from one image on the harness's hub with static addresses, each
//! told its role by its own NoCloud seed, waited for phase by phase.

use super::hub::Hub;
use super::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Boot to planet-node's setup line, with up to three machines booting at once under TCG.
pub const BOOT: Duration = Duration::from_secs(900);
/// Kubernetes up on every machine: a single dev machine takes 4–8 minutes under TCG on 2
/// shared cores (tests/kube.rs); three machines share those cores.
pub const KUBE_READY: u64 = 3600;
/// Steps after that (all Nodes Ready, pods scheduled and running, answers through Services).
pub const STEP: Duration = Duration::from_secs(1200);

/// The cluster's join token, in kubeadm's format (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub const TOKEN: &str = "abcdef.0123456789abcdef";
/// A token of the right format that is not the cluster's.
pub const WRONG_TOKEN: &str = "zyxwvu.9876543210zyxwvu";

/// The niceness of the nodes' QEMUs (the master's is 0).
pub const NODE_NICENESS: i32 = 10;

pub const SUBNET: &str = "192.168.50";

/// The image is not what these tests are about: a quick squashfs compression saves minutes of
/// build on 2 shared cores.
pub const FAST_BUILD: &[&str] = &["--compression", "zstd:3"];

/// Extra kernel arguments. `no_timer_check`: under TCG on a loaded machine the kernel's check of
/// the IO-APIC timer can time out and panic at boot ("IO-APIC + timer doesn't work!"), as one of
/// three machines booting at once here did; the check is meaningless for a virtual timer.
pub const CMDLINE: &str = "no_timer_check";

/// One machine of the cluster.
pub struct Machine {
    pub name: &'static str,
    /// Its Node's name.
    pub node: String,
    pub ip: String,
    pub guest: Guest,
    pub sock: PathBuf,
    /// Its disk and how `planet-image run` was started, to boot it again.
    disk: PathBuf,
    args: Vec<String>,
    niceness: i32,
}

impl Machine {
    pub fn enter_ok(&self, args: &[&str]) -> String {
        enter_ok(&self.guest, &self.sock, args)
    }

    /// Powers the machine off through ACPI (planet-init stops the container's services and
    /// unmounts), waits for QEMU to exit, and boots the same disk again.
    pub fn power_cycle(&mut self, s: &Scratch) {
        self.guest.monitor("system_powerdown");
        if self.guest.wait_exit(Duration::from_secs(300)).is_none() {
            panic!("{}: no power-off within 300 s; console:\n{}", self.name, tail(&self.guest.console()));
        }
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.guest = Guest::start_niced(&self.disk, s, &args, self.niceness);
    }

    /// Pulls the plug: QEMU quits at once (no ACPI, no clean stop), then the same disk boots
    /// again when [`Machine::boot_again`] is called.
    pub fn kill(&mut self) {
        self.guest.monitor("quit");
        if self.guest.wait_exit(Duration::from_secs(60)).is_none() {
            panic!("{}: QEMU still running 60 s after quit", self.name);
        }
    }

    pub fn boot_again(&mut self, s: &Scratch) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.guest = Guest::start_niced(&self.disk, s, &args, self.niceness);
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    pub fn apply(&self, manifest: &str) {
        let (code, out, err) = enter_input(&self.sock, &["kubectl", "apply", "-f", "-"], manifest);
        assert_eq!(code, 0, "kubectl apply exited {code}\nstdout: {out}\nstderr: {err}\nmanifest:\n{manifest}");
    }
}

impl Drop for Machine {
    /// A failed run's consoles outlive the scratch directory (an hour-long test is not rerun
    /// lightly to read them): target/e2e-logs/SCRATCH-NAME.log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = repo().join("target/e2e-logs");
            let run = self.guest.log.parent().and_then(|p| p.file_name()).unwrap_or_default().to_string_lossy();
            let to = dir.join(format!("{run}-{}.log", self.name));
            if std::fs::create_dir_all(&dir).is_ok() && std::fs::copy(&self.guest.log, &to).is_ok() {
                eprintln!("{}: console kept in {}", self.name, to.display());
            }
        }
    }
}

/// Prints and keeps how long each phase took, so a slow run shows where the time went.
pub struct Phases {
    start: Instant,
    last: Instant,
    lines: Vec<String>,
}

impl Phases {
    pub fn new() -> Phases {
        let now = Instant::now();
        Phases { start: now, last: now, lines: Vec::new() }
    }

    pub fn done(&mut self, what: &str) {
        let now = Instant::now();
        let line = format!(
            "phase {what}: {}s (total {}s)",
            now.duration_since(self.last).as_secs(),
            now.duration_since(self.start).as_secs()
        );
        eprintln!("{line}");
        self.lines.push(line);
        self.last = now;
    }
}

impl Drop for Phases {
    fn drop(&mut self) {
        eprintln!("cluster phases:\n  {}", self.lines.join("\n  "));
    }
}

/// A NoCloud seed for one machine, the token in its user-data (`planet: join_token:`).
pub fn seed(s: &Scratch, name: &str, role: &str, ip: &str, mac: &str, token: &str) -> PathBuf {
    seed_with(s, name, role, ip, mac, token, &[])
}

/// [`seed`] with `more` arguments for `planet-image seed` (`--update KEY=VALUE`).
pub fn seed_with(s: &Scratch, name: &str, role: &str, ip: &str, mac: &str, token: &str, more: &[&str]) -> PathBuf {
    let (address, master_ip) = (format!("{ip}/24"), format!("{SUBNET}.10"));
    let mut args =
        vec!["--role", role, "--master-ip", &master_ip, "--hostname", name, "--address", &address, "--interface", mac];
    args.extend_from_slice(more);
    nocloud_seed(s, &format!("{name}-seed.img"), &args, Some(token))
}

/// Boots machine `name` (host part `host` of the subnet) from its own copy of `image` with its
/// own NoCloud seed, its link NIC on the hub.
pub fn start(s: &Scratch, image: &Path, hub: &Hub, name: &'static str, role: &str, host: u8, token: &str) -> Machine {
    start_with(s, image, hub, (name, role, host), token, &[])
}

/// [`start`] with `more` arguments for `planet-image run` (a `--forward`).
pub fn start_with(
    s: &Scratch,
    image: &Path,
    hub: &Hub,
    (name, role, host): (&'static str, &str, u8),
    token: &str,
    more: &[String],
) -> Machine {
    let seed = seed(s, name, role, &format!("{SUBNET}.{host}"), &mac(host), token);
    let mut extra = vec!["--seed".to_string(), seed.display().to_string(), "--cmdline".into(), CMDLINE.into()];
    extra.extend_from_slice(more);
    boot(s, image, hub, name, role == "master", host, &extra)
}

/// The MAC of host `host`'s link NIC.
pub fn mac(host: u8) -> String {
    format!("52:54:00:50:00:{host:02x}")
}

/// Boots machine `name` from its own copy of `image`, its link NIC (MAC [`mac`]) on the hub;
/// `extra`: how it gets its configuration (a seed, or a cloud's look and its metadata).
pub fn boot(
    s: &Scratch,
    image: &Path,
    hub: &Hub,
    name: &'static str,
    master: bool,
    host: u8,
    extra: &[String],
) -> Machine {
    let disk = s.path(&format!("{name}.qcow2"));
    std::fs::copy(image, &disk).unwrap();
    let sock = s.path(&format!("{name}.sock"));
    let memory = if master { "3072" } else { "2048" };
    let (link, mac, sock_arg) = (format!("connect:{}", hub.port), mac(host), sock.display().to_string());
    let mut args =
        vec!["--memory", memory, "--cpus", "2", "--link", &link, "--link-mac", &mac, "--enter-socket", &sock_arg];
    args.extend(extra.iter().map(String::as_str));
    // The master is what every other machine waits for, and its API server stops answering in
    // time when three TCG guests share 2 cores evenly (seen: the nodes joined, then kubectl
    // timed out): the nodes' QEMUs run at a lower priority, on the cores the master leaves.
    let niceness = if master { 0 } else { NODE_NICENESS };
    let guest = Guest::start_niced(&disk, s, &args, niceness);
    let args = args.iter().map(|a| a.to_string()).collect();
    Machine { name, node: name.to_string(), ip: format!("{SUBNET}.{host}"), guest, sock, disk, args, niceness }
}

/// Waits for each machine's planet-node setup line, then for `planet-node wait` in each.
pub fn wait_up(machines: &mut [&mut Machine], phases: &mut Phases) {
    for m in machines.iter_mut() {
        let console = m.guest.wait_for("planet-node: setup role=", BOOT);
        // Its name and its address on the link (the one the others reach it by), not the user
        // network's 10.0.2.15 that every machine has.
        let want = format!("node={} ip={}", m.node, m.ip);
        assert!(console.contains(&want), "{}: no {want:?} in the setup line:\n{}", m.name, tail(&console));
        phases.done(&format!("{} booted to planet-node setup", m.name));
    }
    for m in machines.iter() {
        wait_ready(m);
        phases.done(&format!("{} ready (planet-node wait)", m.name));
    }
}

/// `planet-node wait` in `m` a minute at a time (the `enter` channel is free in between, for a
/// person looking in), up to [`KUBE_READY`]; a machine that never gets there fails the test with
/// what its units say.
pub fn wait_ready(m: &Machine) {
    let start = Instant::now();
    loop {
        let (code, out, err) = enter(&m.sock, &["planet-node", "wait", "--timeout", "60"]);
        if code == 0 {
            return;
        }
        if start.elapsed() > Duration::from_secs(KUBE_READY) {
            let (_, units, _) = enter(
                &m.sock,
                &[
                    "sh",
                    "-c",
                    "systemctl --no-pager --failed; for u in kubelet kube-apiserver kube-controller-manager; do \
                     journalctl --no-pager -o cat -n 20 -u $u; done",
                ],
            );
            panic!(
                "{} not ready within {KUBE_READY}s: exit {code}\n{out}{err}\nunits:\n{units}\nconsole:\n{}",
                m.name,
                tail(&m.guest.console())
            );
        }
    }
}

/// `kubectl get nodes` as (name, ready) pairs.
pub fn nodes(master: &Machine) -> Vec<(String, bool)> {
    let (code, out, _) = enter(
        &master.sock,
        &[
            "kubectl",
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ],
    );
    if code != 0 {
        return Vec::new();
    }
    out.lines().filter_map(|l| l.split_once(' ')).map(|(n, ready)| (n.to_string(), ready.trim() == "True")).collect()
}

/// Waits until the Nodes are exactly `want`, all Ready; fails with the consoles of `nodes`.
pub fn wait_nodes_ready(master: &Machine, want: &[&str], nodes_of: &[&Machine]) {
    let ready = poll(STEP, || {
        let n = nodes(master);
        (n.len() == want.len() && want.iter().all(|w| n.iter().any(|(name, r)| name == w && *r))).then_some(n)
    });
    if ready.is_none() {
        let consoles: Vec<String> =
            nodes_of.iter().map(|m| format!("{} console:\n{}", m.name, tail(&m.guest.console()))).collect();
        panic!("not all of {want:?} Ready within {STEP:?}: {:?}\n{}", nodes(master), consoles.join("\n"));
    }
}
