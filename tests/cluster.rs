//! Production mode on real boots (issue 14): a master and nodes from ONE image, each told its
//! role, the master's address and the cluster's join token by its own NoCloud seed, on one
//! Ethernet segment (the harness's hub on 127.0.0.1, tests/common/hub.rs) with static
//! addresses. Checked from outside with the release's own kubectl through `planet-image enter`:
//! the nodes join over TLS with the token, pods on different nodes reach each other by pod IP,
//! Services resolve through the cluster DNS; a node with the wrong token never joins and says
//! why; the token is on no console and in no process's command line.
//!
//! Three Kubernetes machines under TCG on 2 shared cores take a long while: these tests run in
//! the `scripts/test --e2e` tier only (see scripts/test), and print how long each phase took.

mod common;

use common::hub::Hub;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Boot to planet-node's setup line, with up to three machines booting at once under TCG.
const BOOT: Duration = Duration::from_secs(900);
/// Kubernetes up on every machine: a single dev machine takes 4–8 minutes under TCG on 2
/// shared cores (tests/kube.rs); three machines share those cores.
const KUBE_READY: u64 = 3600;
/// Steps after that (all Nodes Ready, pods scheduled and running, answers through Services).
const STEP: Duration = Duration::from_secs(1200);

/// The cluster's join token, in kubeadm's format (`[a-z0-9]{6}.[a-z0-9]{16}`).
const TOKEN: &str = "abcdef.0123456789abcdef";
/// A token of the right format that is not the cluster's.
const WRONG_TOKEN: &str = "zyxwvu.9876543210zyxwvu";

const SUBNET: &str = "192.168.50";

/// The image is not what these tests are about: a quick squashfs compression saves minutes of
/// build on 2 shared cores.
const FAST_BUILD: &[&str] = &["--compression", "zstd:3"];

/// Extra kernel arguments. `no_timer_check`: under TCG on a loaded machine the kernel's check of
/// the IO-APIC timer can time out and panic at boot ("IO-APIC + timer doesn't work!"), as one of
/// three machines booting at once here did; the check is meaningless for a virtual timer.
const CMDLINE: &str = "no_timer_check";

/// One machine of the cluster.
struct Machine {
    name: &'static str,
    ip: String,
    guest: Guest,
    sock: PathBuf,
}

impl Machine {
    fn enter_ok(&self, args: &[&str]) -> String {
        enter_ok(&self.guest, &self.sock, args)
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    fn apply(&self, manifest: &str) {
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
struct Phases {
    start: Instant,
    last: Instant,
    lines: Vec<String>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases { start: now, last: now, lines: Vec::new() }
    }

    fn done(&mut self, what: &str) {
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
fn seed(s: &Scratch, name: &str, role: &str, ip: &str, mac: &str, token: &str) -> PathBuf {
    let (address, master_ip) = (format!("{ip}/24"), format!("{SUBNET}.10"));
    let args =
        ["--role", role, "--master-ip", &master_ip, "--hostname", name, "--address", &address, "--interface", mac];
    nocloud_seed(s, &format!("{name}-seed.img"), &args, Some(token))
}

/// Boots machine `name` (host part `host` of the subnet) from its own copy of `image`, its
/// link NIC on the hub.
fn start(s: &Scratch, image: &Path, hub: &Hub, name: &'static str, role: &str, host: u8, token: &str) -> Machine {
    let disk = s.path(&format!("{name}.qcow2"));
    std::fs::copy(image, &disk).unwrap();
    let mac = format!("52:54:00:50:00:{host:02x}");
    let ip = format!("{SUBNET}.{host}");
    let seed = seed(s, name, role, &ip, &mac, token);
    let sock = s.path(&format!("{name}.sock"));
    let memory = if role == "master" { "3072" } else { "2048" };
    let link = format!("connect:{}", hub.port);
    let (seed_arg, sock_arg) = (seed.display().to_string(), sock.display().to_string());
    let args = [
        "--cmdline",
        CMDLINE,
        "--seed",
        &seed_arg,
        "--memory",
        memory,
        "--cpus",
        "2",
        "--link",
        &link,
        "--link-mac",
        &mac,
        "--enter-socket",
        &sock_arg,
    ];
    Machine { name, ip, guest: Guest::start(&disk, s, &args), sock }
}

/// Waits for each machine's planet-node setup line, then for `planet-node wait` in each.
fn wait_up(machines: &mut [&mut Machine], phases: &mut Phases) {
    for m in machines.iter_mut() {
        let console = m.guest.wait_for("planet-node: setup role=", BOOT);
        // Its name and its address on the link (the one the others reach it by), not the user
        // network's 10.0.2.15 that every machine has.
        let want = format!("node={} ip={}", m.name, m.ip);
        assert!(console.contains(&want), "{}: no {want:?} in the setup line:\n{}", m.name, tail(&console));
        phases.done(&format!("{} booted to planet-node setup", m.name));
    }
    for m in machines.iter() {
        m.enter_ok(&["planet-node", "wait", "--timeout", &KUBE_READY.to_string()]);
        phases.done(&format!("{} ready (planet-node wait)", m.name));
    }
}

/// `kubectl get nodes` as (name, ready) pairs.
fn nodes(master: &Machine) -> Vec<(String, bool)> {
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

/// Neither the token nor its secret half on any console, nor in any command line inside: every
/// process of the container (its PID namespace: the Kubernetes components, docker's containers,
/// the pods) and the kernel's own (/proc/cmdline). planet-init's few processes outside that
/// namespace cannot be seen from `enter`.
/// `expect`: processes that must be among those read, so that the check saw what matters.
fn assert_token_hidden(machines: &[&Machine], token: &str, expect: &[&str]) {
    let secret = token.split_once('.').unwrap().1;
    for m in machines {
        let console = m.guest.console();
        assert!(!console.contains(secret), "{}: the join token is on the console:\n{}", m.name, tail(&console));
        let cmdlines = m.enter_ok(&[
            "sh",
            "-c",
            r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done 2>/dev/null; true"#,
        ]);
        for e in expect.iter().chain(&["systemd-journald"]) {
            assert!(cmdlines.contains(e), "{}: no {e} among the command lines read:\n{cmdlines}", m.name);
        }
        let kernel = m.enter_ok(&["cat", "/proc/cmdline"]);
        assert!(!kernel.contains(secret), "{}: the join token is on the kernel command line: {kernel}", m.name);
        let leaks: Vec<&str> = cmdlines.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{}: the join token is in a command line: {leaks:?}", m.name);
    }
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      # Prefer a node without a web pod yet, so both nodes get one (the master is tainted).
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {app: web}
      containers:
      - name: web
        image: planet/busybox:1.35
        imagePullPolicy: Never
        command: [sh, -c, "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 8080
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: node-1
  containers:
  - name: client
    image: planet/busybox:1.35
    imagePullPolicy: Never
    command: [sleep, "36000"]
"#;

/// An HTTP GET of `/` on port 8080 of `host` (a pod IP or a DNS name) from the client pod on
/// node-1, retried until it answers (routes and DNS entries may lag the pods by a few seconds);
/// the body's last line. Names are resolved with busybox's `nslookup`, which asks the pod's DNS
/// server itself, then fetched with `nc`: the image's busybox is static glibc, whose `wget` and
/// name lookups crash (glibc's NSS cannot be loaded into a static binary).
fn fetch_from_client(master: &Machine, host: &str) -> String {
    let script = format!(
        r#"case {host} in [0-9]*) ip={host} ;; *) ip=$(nslookup {host} | awk '/^Address: / && $2 !~ /:/ {{a=$2}} END {{print a}}') ;; esac
[ -n "$ip" ] || {{ echo "{host} did not resolve" >&2; exit 3; }}
printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 "$ip" 8080 | tail -n 1"#
    );
    let mut last = (0, String::new(), String::new());
    let answer = poll(STEP, || {
        last = enter(&master.sock, &["kubectl", "exec", "client", "--", "sh", "-c", &script]);
        (last.0 == 0 && !last.1.trim().is_empty()).then(|| last.1.trim().to_string())
    });
    answer.unwrap_or_else(|| {
        panic!(
            "no answer from {host}:8080 in the client pod on node-1 within {STEP:?}: exit {}\nstdout: {}\nstderr: {}",
            last.0, last.1, last.2
        )
    })
}

#[test]
fn master_and_two_nodes_form_a_cluster() {
    let mut phases = Phases::new();
    let s = Scratch::new("cluster");
    let image = kube_disk(&s, FAST_BUILD);
    let hub = Hub::start();
    phases.done("image built");

    let mut master = start(&s, &image, &hub, "master-1", "master", 10, TOKEN);
    let mut node1 = start(&s, &image, &hub, "node-1", "node", 11, TOKEN);
    let mut node2 = start(&s, &image, &hub, "node-2", "node", 12, TOKEN);
    wait_up(&mut [&mut master, &mut node1, &mut node2], &mut phases);

    // All three Nodes Ready, under their names.
    let want = ["master-1", "node-1", "node-2"];
    let ready = poll(STEP, || {
        let n = nodes(&master);
        (n.len() == 3 && want.iter().all(|w| n.iter().any(|(name, r)| name == w && *r))).then_some(n)
    });
    assert!(
        ready.is_some(),
        "not all of {want:?} Ready within {STEP:?}: {:?}\nnode-1 console:\n{}\nnode-2 console:\n{}",
        nodes(&master),
        tail(&node1.guest.console()),
        tail(&node2.guest.console())
    );
    phases.done("three Nodes Ready");

    // The web Deployment over both nodes, its Service, and a client pod on node-1.
    master.apply(WEB);
    master.enter_ok(&["kubectl", "rollout", "status", "deployment/web", &format!("--timeout={}s", STEP.as_secs())]);
    master.enter_ok(&[
        "kubectl",
        "wait",
        "--for=condition=Ready",
        "pod/client",
        &format!("--timeout={}s", STEP.as_secs()),
    ]);
    phases.done("web deployment and client pod running");

    let listing = master.enter_ok(&[
        "kubectl",
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}"#,
    ]);
    let pods: Vec<(String, String, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect();
    assert_eq!(pods.len(), 3, "{listing}");
    for node in ["node-1", "node-2"] {
        assert!(pods.iter().any(|p| p.1 == node), "no web pod on {node}: {listing}");
    }
    assert!(pods.iter().all(|p| p.1 != "master-1"), "a web pod on the tainted master: {listing}");
    let names: Vec<&str> = pods.iter().map(|p| p.0.as_str()).collect();

    // From node-1: a pod on node-2 by its pod IP (the host-gw route between the nodes) ...
    let (remote, _, remote_ip) = pods.iter().find(|p| p.1 == "node-2").unwrap();
    let by_ip = fetch_from_client(&master, remote_ip);
    assert_eq!(&by_ip, remote, "the pod at {remote_ip} on node-2 answered with another name");
    phases.done("pod on node-1 reached a pod on node-2 by IP");

    // ... and the Service by its names, through the cluster DNS and kube-proxy.
    for name in ["web.default.svc.cluster.local", "web"] {
        let answer = fetch_from_client(&master, name);
        assert!(names.contains(&answer.as_str()), "{name} answered {answer:?}, not one of {names:?}");
    }
    phases.done("Service reached by its DNS names");

    assert_token_hidden(&[&master], TOKEN, &["kube-apiserver", "kubelet"]);
    // The nodes run the web pods: their processes are read too.
    assert_token_hidden(&[&node1, &node2], TOKEN, &["kubelet", "kube-proxy", "httpd"]);
    phases.done("token checked absent");
    drop(hub);
}

#[test]
fn wrong_token_node_never_joins() {
    let mut phases = Phases::new();
    let s = Scratch::new("cluster-wrong-token");
    let image = kube_disk(&s, FAST_BUILD);
    let hub = Hub::start();
    phases.done("image built");

    let mut master = start(&s, &image, &hub, "master-1", "master", 10, TOKEN);
    let node = start(&s, &image, &hub, "node-1", "node", 11, WRONG_TOKEN);
    wait_up(&mut [&mut master], &mut phases);

    // The node says on its console why it cannot join; the message names the token.
    let said = poll(Duration::from_secs(KUBE_READY), || {
        let console = node.guest.console();
        console
            .lines()
            .find(|l| l.contains("planet-node") && l.to_ascii_lowercase().contains("join token"))
            .map(String::from)
    });
    let said = said.unwrap_or_else(|| {
        panic!("the node never said why it did not join; console:\n{}", tail(&node.guest.console()))
    });
    eprintln!("node-1 said: {said}");
    phases.done("node reported the wrong token");

    // Only the master is a Node, and it stays Ready, including a while after the refusal.
    for pause in [0, 60] {
        std::thread::sleep(Duration::from_secs(pause));
        let n = nodes(&master);
        assert_eq!(n, [("master-1".to_string(), true)], "the Nodes are not just a Ready master-1 ({pause}s on)");
    }
    phases.done("master unaffected");

    for token in [TOKEN, WRONG_TOKEN] {
        assert_token_hidden(&[&master], token, &["kube-apiserver", "kubelet"]);
        // The refused node runs no Kubernetes component: only the container's own processes.
        assert_token_hidden(&[&node], token, &[]);
    }
    drop(hub);
}
