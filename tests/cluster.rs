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

use common::cluster::*;
use common::hub::{DhcpLeases, Hub};
use common::metadata::{header, MetadataServer, Reply};
use common::moto::Moto;
use common::*;

use std::net::Ipv4Addr;

use std::process::Command;
use std::time::Duration;

/// Neither the join token nor its secret half anywhere [`assert_secret_hidden`] looks.
fn assert_token_hidden(machines: &[&Machine], token: &str, expect: &[&str]) {
    assert_secret_hidden(machines, token.split_once('.').unwrap().1, "the join token", expect);
}

/// `secret` (called `what` in messages) on no console, nor in any command line inside: every
/// process of the container (its PID namespace: the Kubernetes components, docker's containers,
/// the pods) and the kernel's own (/proc/cmdline). planet-init's few processes outside that
/// namespace cannot be seen from `enter`.
/// `expect`: processes that must be among those read, so that the check saw what matters.
fn assert_secret_hidden(machines: &[&Machine], secret: &str, what: &str, expect: &[&str]) {
    for m in machines {
        let console = m.guest.console();
        assert!(!console.contains(secret), "{}: {what} is on the console:\n{}", m.name, tail(&console));
        let cmdlines = m.enter_ok(&[
            "sh",
            "-c",
            r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done 2>/dev/null; true"#,
        ]);
        for e in expect.iter().chain(&["systemd-journald"]) {
            assert!(cmdlines.contains(e), "{}: no {e} among the command lines read:\n{cmdlines}", m.name);
        }
        let kernel = m.enter_ok(&["cat", "/proc/cmdline"]);
        assert!(!kernel.contains(secret), "{}: {what} is on the kernel command line: {kernel}", m.name);
        let leaks: Vec<&str> = cmdlines.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{}: {what} is in a command line: {leaks:?}", m.name);
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
    wait_nodes_ready(&master, &["master-1", "node-1", "node-2"], &[&node1, &node2]);
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

/// The AWS credentials the EC2 machines get in their user-data (`env:`): moto takes any.
const AWS_KEY_ID: &str = "AKIAPLANETTEST000001";
const AWS_SECRET: &str = "planetTestSecretKeyNeverShown0123456789ab";

/// One EC2 instance as the test's moto knows it.
#[derive(Debug, serde::Deserialize)]
struct Ec2Instance {
    id: String,
    ip: String,
    dns: String,
    az: String,
}

/// Instances in moto for the given private addresses, in one VPC subnet 192.168.50.0/24 of
/// us-east-1a, tagged as the cluster's (`kubernetes.io/cluster/planet`), as an operator's would
/// be: what the AWS provider of the kubelet and the controller manager finds through the EC2 API.
fn ec2_instances(moto: &Moto, ips: &[&str]) -> Vec<Ec2Instance> {
    let script = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
vpc = ec2.create_vpc(CidrBlock="192.168.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="192.168.50.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
tags = [{"ResourceType": "instance", "Tags": [{"Key": "kubernetes.io/cluster/planet", "Value": "owned"}]}]
out = []
for ip in sys.argv[2:]:
    i = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.medium", SubnetId=subnet,
                          PrivateIpAddress=ip, TagSpecifications=tags)["Instances"][0]
    out.append({"id": i["InstanceId"], "ip": i["PrivateIpAddress"], "dns": i["PrivateDnsName"],
                "az": i["Placement"]["AvailabilityZone"]})
print(json.dumps(out))
"#;
    let out = stdout(Command::new("python3").arg("-c").arg(script).arg(moto.endpoint()).args(ips));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("moto's instances: {e}: {out}"))
}

/// The instance metadata service of one machine, IMDSv2 (a session token first, as the AWS SDK
/// and planet-init both ask): its identity, its NIC (the link, `mac`) and its user-data.
fn imds(instance: &Ec2Instance, mac: &str, user_data: String) -> MetadataServer {
    let (id, ip, dns, az, mac) =
        (instance.id.clone(), instance.ip.clone(), instance.dns.clone(), instance.az.clone(), mac.to_string());
    let nic = format!("network/interfaces/macs/{mac}");
    MetadataServer::start_raw_for(
        Box::new(move |method, path, headers| {
            if method == "PUT" && path == "/latest/api/token" {
                // The AWS SDK (Go) in the kubelet takes a token only with its TTL header, as
                // EC2's own service sends it.
                let Some(ttl) = header(headers, "x-aws-ec2-metadata-token-ttl-seconds") else {
                    return Reply::Answer(400, Vec::new());
                };
                let ttl_header = ("X-Aws-Ec2-Metadata-Token-Ttl-Seconds".to_string(), ttl.to_string());
                return Reply::AnswerWith(200, vec![ttl_header], b"planet-imds-token".to_vec());
            }
            if header(headers, "x-aws-ec2-metadata-token") != Some("planet-imds-token") {
                return Reply::Answer(401, Vec::new());
            }
            if path == "/latest/user-data" {
                return Reply::Answer(200, user_data.clone().into_bytes());
            }
            let key = path.strip_prefix("/latest/meta-data/").unwrap_or("").trim_end_matches('/');
            let value = match key {
                "instance-id" => id.clone(),
                "instance-type" => "t3.medium".into(),
                "local-ipv4" => ip.clone(),
                "local-hostname" | "hostname" => dns.clone(),
                "placement/availability-zone" => az.clone(),
                "mac" => mac.clone(),
                "network/interfaces/macs" => format!("{mac}/"),
                k if k == format!("{nic}/device-number") => "0".into(),
                k if k == format!("{nic}/local-ipv4s") => ip.clone(),
                _ => return Reply::Answer(404, Vec::new()),
            };
            Reply::Answer(200, value.into_bytes())
        }),
        // As long as the machines may run.
        BOOT + Duration::from_secs(KUBE_READY) + 4 * STEP,
    )
}

/// The user-data of an EC2 machine: its role, the master's address, the join token, the AWS
/// provider's configuration (the EC2 API is the test's moto, reached at 10.0.2.101) and the
/// credentials in `env:`, with the metadata service where the test serves it.
fn ec2_user_data(role: &str, master_ip: &str) -> String {
    format!(
        "#cloud-config\nplanet:\n  role: {role}\n  master_ip: {master_ip}\n  join_token: \"{TOKEN}\"\n  cloud_config: |\n    \
         [Global]\n    Zone = us-east-1a\n    [ServiceOverride \"ec2\"]\n    Service = ec2\n    Region = us-east-1\n    \
         URL = http://10.0.2.101\n    SigningRegion = us-east-1\n  env:\n    AWS_ACCESS_KEY_ID: \"{AWS_KEY_ID}\"\n    \
         AWS_SECRET_ACCESS_KEY: \"{AWS_SECRET}\"\n    AWS_EC2_METADATA_SERVICE_ENDPOINT: \"http://10.0.2.100\"\n"
    )
}

#[test]
fn ec2_master_and_node_form_a_cluster_with_the_aws_provider() {
    let mut phases = Phases::new();
    let s = Scratch::new("cluster-ec2");
    let image = kube_disk(&s, FAST_BUILD);
    let moto = Moto::start();
    let hosts = [10u8, 11];
    let ips: Vec<String> = hosts.iter().map(|h| format!("{SUBNET}.{h}")).collect();
    let instances = ec2_instances(&moto, &ips.iter().map(String::as_str).collect::<Vec<_>>());
    // The link is the VPC subnet: its DHCP gives each instance its private address.
    let leases = hosts
        .iter()
        .zip(&ips)
        .map(|(h, ip)| {
            let m: Vec<u8> = mac(*h).split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
            (m.try_into().unwrap(), ip.parse().unwrap())
        })
        .collect();
    let hub = Hub::with_dhcp(DhcpLeases { server: Ipv4Addr::new(192, 168, 50, 1), prefix: 24, leases });
    phases.done("image built, moto's instances made");

    let mut servers = Vec::new();
    let mut machines = Vec::new();
    for ((name, role, host), instance) in
        [("master-1", "master", hosts[0]), ("node-1", "node", hosts[1])].into_iter().zip(&instances)
    {
        let server = imds(instance, &mac(host), ec2_user_data(role, &ips[0]));
        let extra: Vec<String> = [
            "--smbios",
            "type=1,manufacturer=Amazon EC2,product=t3.medium",
            "--guestfwd",
            &format!("10.0.2.100:80={}", server.port),
            "--guestfwd",
            &format!("10.0.2.101:80={}", moto.port),
            "--cmdline",
            &format!("{CMDLINE} planet.metadata_url=http://10.0.2.100"),
        ]
        .map(String::from)
        .to_vec();
        let mut m = boot(&s, &image, &hub, name, role == "master", host, &extra);
        m.node = instance.dns.clone();
        servers.push(server);
        machines.push(m);
    }
    let [mut master, mut node] = <[Machine; 2]>::try_from(machines).ok().unwrap();
    for m in [&master, &node] {
        eprintln!("{}: {}", m.name, m.node);
    }
    wait_up(&mut [&mut master, &mut node], &mut phases);

    // Both Nodes Ready, under the names the AWS provider gives them (their private DNS names).
    let want: Vec<&str> = instances.iter().map(|i| i.dns.as_str()).collect();
    wait_nodes_ready(&master, &want, &[&node]);
    phases.done("both Nodes Ready");

    // The provider is in use: the kubelets' Nodes carry the instances' provider IDs, and the
    // instance type that only the EC2 API (moto, with the credentials) tells.
    let listing = master.enter_ok(&[
        "kubectl",
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.providerID} {.metadata.labels.node\.kubernetes\.io/instance-type}{"\n"}{end}"#,
    ]);
    for i in &instances {
        let want = format!("{} aws:///{}/{} t3.medium", i.dns, i.az, i.id);
        assert!(listing.lines().any(|l| l.trim() == want), "no {want:?} in:\n{listing}");
    }
    phases.done("Nodes named, identified and typed by the AWS provider");

    // The credentials: in private files, read by the units, never shown.
    for m in [&master, &node] {
        let files = ["/etc/planet/cloud.env", "/etc/planet/cloud-provider.conf", "/etc/container-environment"];
        let modes = m.enter_ok(&[&["stat", "-c", "%a %U"][..], &files].concat());
        assert_eq!(modes.lines().collect::<Vec<_>>(), ["600 root"; 3], "{}: {files:?}: {modes}", m.name);
    }
    assert_token_hidden(&[&master], TOKEN, &["kube-apiserver", "kube-controller-manager", "kubelet"]);
    assert_token_hidden(&[&node], TOKEN, &["kubelet", "kube-proxy"]);
    let aws = "the AWS secret access key";
    assert_secret_hidden(&[&master], AWS_SECRET, aws, &["kube-controller-manager", "kubelet"]);
    assert_secret_hidden(&[&node], AWS_SECRET, aws, &["kubelet"]);
    phases.done("token and AWS secret checked absent");
    drop(hub);
}
