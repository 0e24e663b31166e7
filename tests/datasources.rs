//! cloud-init datasources on real boots: two machines forming a cluster from NoCloud seeds over
//! a socket link, EC2 (IMDSv2) and GCE metadata servers of the test's own on 127.0.0.1 reached
//! through guestfwd, a ConfigDrive partition on the boot disk, compressed and multipart
//! user-data, broken data, a metadata server that never answers, hostile data and servers (an
//! alias bomb, deep MIME nesting, an absurd Content-Length, a server that drips) — and the
//! secret in `env` never on the console. The `cloud-init/` examples are checked by cloud-init's own validator.

mod common;

use common::metadata::*;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const SECRET: &str = "s3cr3t-Zq8vW1-never-printed";
/// The cluster's join token (`planet: join_token:`): never on the console either.
const JOIN_TOKEN: &str = "t0k3nx.s3cr3tj01nt0k3n9";

fn demo_image(s: &Scratch) -> PathBuf {
    let image = s.path("demo.qcow2");
    build("qcow2", &fixture("demo.tar"), &image, &[]);
    image
}

fn seed(s: &Scratch, name: &str, args: &[&str]) -> PathBuf {
    let out = s.path(name);
    ok(planet_image().arg("seed").args(args).arg("-o").arg(&out).env("SOURCE_DATE_EPOCH", "1700000000"));
    out
}

fn assert_no_secret(console: &str) {
    assert!(!console.contains(SECRET), "the secret appeared on the console:\n{console}");
    assert!(!console.contains("s3cr3tj01nt0k3n9"), "the join token appeared on the console:\n{console}");
}

/// The join token in a mode-0600 file, for `seed --join-token-file` (never on argv).
fn join_token_file(s: &Scratch) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let p = s.path("cluster.token");
    if !p.exists() {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).unwrap();
        writeln!(f, "{JOIN_TOKEN}").unwrap();
    }
    p
}

/// An IMDSv2 server: the token PUT gives "tok-123"; GETs without it get 401.
fn ec2_server(user_data: Vec<u8>) -> MetadataServer {
    MetadataServer::start(Box::new(move |method, path, headers| {
        if method == "PUT" && path == "/latest/api/token" {
            return Some(if header(headers, "x-aws-ec2-metadata-token-ttl-seconds").is_some() {
                (200, b"tok-123".to_vec())
            } else {
                (400, Vec::new())
            });
        }
        if header(headers, "x-aws-ec2-metadata-token") != Some("tok-123") {
            return Some((401, Vec::new()));
        }
        Some(match path {
            "/latest/user-data" => (200, user_data.clone()),
            "/latest/meta-data/instance-id" => (200, b"i-0123456789abcdef0".to_vec()),
            "/latest/meta-data/local-ipv4" => (200, b"10.0.2.15".to_vec()),
            "/latest/meta-data/local-hostname" => (200, b"ip-10-0-2-15.ec2.internal".to_vec()),
            "/latest/meta-data/placement/availability-zone" => (200, b"us-east-1a".to_vec()),
            _ => (404, Vec::new()),
        })
    }))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn node_user_data(master: &str) -> String {
    format!(
        "#cloud-config\nhostname: cloud-node\nplanet:\n  role: node\n  master_ip: {master}\n  join_token: \
         \"{JOIN_TOKEN}\"\n  env:\n    AWS_SECRET_ACCESS_KEY: \"{SECRET}\"\n"
    )
}

fn cloud_args(smbios: &str, port: u16, extra_cmdline: &str) -> Vec<String> {
    vec![
        "--snapshot".into(),
        "--smbios".into(),
        smbios.into(),
        "--guestfwd".into(),
        format!("10.0.2.100:80={port}"),
        "--cmdline".into(),
        format!("planet.metadata_url=http://10.0.2.100 {extra_cmdline}").trim().to_string(),
    ]
}

fn start(image: &Path, s: &Scratch, args: &[String]) -> Guest {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Guest::start(image, s, &refs)
}

// ---- the tests ----

#[test]
fn two_machines_form_a_cluster_from_nocloud_seeds() {
    let s = Scratch::new("ds-cluster");
    let image = demo_image(&s);
    let (master_mac, node_mac) = ("52:54:00:aa:00:10", "52:54:00:aa:00:11");
    let token_file = join_token_file(&s);
    let token_file = token_file.to_str().unwrap();
    let master_seed = seed(
        &s,
        "master.img",
        &[
            "--role",
            "master",
            "--hostname",
            "master-1",
            "--address",
            "10.10.0.10/24",
            "--interface",
            master_mac,
            "--join-token-file",
            token_file,
        ],
    );
    let node_seed = seed(
        &s,
        "node.img",
        &[
            "--role",
            "node",
            "--master-ip",
            "10.10.0.10",
            "--hostname",
            "node-1",
            "--address",
            "10.10.0.11/24",
            "--interface",
            node_mac,
            "--join-token-file",
            token_file,
            "--env",
            &format!("AWS_SECRET_ACCESS_KEY={SECRET}"),
        ],
    );
    let link = free_port();
    let etcd = free_port();
    let mut master = start(
        &image,
        &s,
        &[
            "--snapshot".into(),
            "--seed".into(),
            master_seed.display().to_string(),
            "--link".into(),
            format!("listen:{link}"),
            "--link-mac".into(),
            master_mac.into(),
            "--forward".into(),
            format!("{etcd}:2379"),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut node = start(
        &image,
        &s,
        &[
            "--snapshot".into(),
            "--seed".into(),
            node_seed.display().to_string(),
            "--link".into(),
            format!("connect:{link}"),
            "--link-mac".into(),
            node_mac.into(),
        ],
    );
    let mc = master.wait_for("planet-init: launcher started", BOOT);
    assert!(mc.contains("planet-init: config role=master master_ip=10.10.0.10"), "{mc}");
    assert!(mc.contains("source=nocloud"), "{mc}");
    assert!(mc.contains("address=10.10.0.10/24") && mc.contains("source=static"), "{mc}");
    let nc = node.wait_for("planet-init: launcher started", BOOT);
    assert!(nc.contains("planet-init: config role=node master_ip=10.10.0.10"), "{nc}");
    assert!(nc.contains("env=AWS_SECRET_ACCESS_KEY=***"), "{nc}");
    assert!(nc.contains(" join_token=set ") && mc.contains(" join_token=set "), "{nc}\n{mc}");
    let start = Instant::now();
    let nodes = loop {
        // The master is etcd's member (named after the machine); the node registers under /nodes/.
        let r = etcd_range(etcd, "/nodes/").unwrap_or_default();
        let members = http(etcd, "POST", "/v3/cluster/member/list", "{}").unwrap_or_default();
        if members.contains("\"name\":\"master-1\"") && r.contains(&b64("/nodes/node-1")) {
            break r;
        }
        if start.elapsed() > Duration::from_secs(180) {
            panic!(
                "both names not in the master's etcd: {r}\nmaster:\n{}\nnode:\n{}",
                master.console(),
                node.console()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(nodes.contains("\"kvs\""));
    assert_no_secret(&master.console());
    assert_no_secret(&node.console());
}

#[test]
fn ec2_imdsv2_with_gzip_multipart_user_data() {
    let s = Scratch::new("ds-ec2");
    let image = demo_image(&s);
    let mime = format!(
        "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\nMIME-Version: 1.0\n\n--==BOUNDARY==\n\
         Content-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/sh\necho ignored\n\n--==BOUNDARY==\n\
         Content-Type: text/cloud-config; charset=\"us-ascii\"\n\n{}\n--==BOUNDARY==--\n",
        node_user_data("10.0.2.50")
    );
    let server = ec2_server(gzip(mime.as_bytes()));
    let mut guest = start(&image, &s, &cloud_args("type=1,manufacturer=Amazon EC2,product=t3.medium", server.port, ""));
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("planet-init: datasource name=ec2 instance_id=i-0123456789abcdef0"), "{console}");
    assert!(console.contains("planet-init: config role=node master_ip=10.0.2.50 provider=aws"), "{console}");
    assert!(console.contains("source=ec2"), "{console}");
    // The Node is named as Kubernetes' AWS provider names it: the private DNS name.
    assert!(console.contains("node_name=ip-10-0-2-15.ec2.internal"), "{console}");
    assert!(console.contains("MIME part 1 of type text/x-shellscript ignored"), "{console}");
    let log = server.log();
    assert!(log.iter().any(|l| l.starts_with("PUT /latest/api/token ")), "{log:?}");
    let gets: Vec<&String> = log.iter().filter(|l| l.starts_with("GET ")).collect();
    assert!(!gets.is_empty() && gets.iter().all(|l| l.contains("x-aws-ec2-metadata-token=tok-123")), "{log:?}");
    assert!(gets.iter().any(|l| l.starts_with("GET /latest/user-data ")), "{log:?}");
    assert_no_secret(&guest.console());
}

#[test]
fn gce_metadata_with_the_flavor_header() {
    let s = Scratch::new("ds-gce");
    let image = demo_image(&s);
    let user_data = node_user_data("10.0.2.60");
    let server = MetadataServer::start(Box::new(move |_, path, headers| {
        if header(headers, "metadata-flavor") != Some("Google") {
            return Some((403, Vec::new()));
        }
        let base = "/computeMetadata/v1/instance/";
        Some(match path.strip_prefix(base).unwrap_or("") {
            "attributes/user-data" => (200, user_data.clone().into_bytes()),
            "hostname" => (200, b"gce-node.c.project.internal".to_vec()),
            "id" => (200, b"4242".to_vec()),
            "network-interfaces/0/ip" => (200, b"10.0.2.15".to_vec()),
            _ => (404, Vec::new()),
        })
    }));
    let mut guest =
        start(&image, &s, &cloud_args("type=1,manufacturer=Google,product=Google Compute Engine", server.port, ""));
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("planet-init: config role=node master_ip=10.0.2.60 provider=gce"), "{console}");
    assert!(console.contains("hostname=cloud-node") && console.contains("source=gce"), "{console}");
    let log = server.log();
    assert!(log.len() >= 4, "{log:?}");
    assert!(log.iter().all(|l| l.contains("metadata-flavor=Google")), "{log:?}");
    assert_no_secret(&guest.console());
}

#[test]
fn broken_user_data_stops_with_an_error_naming_the_problem() {
    let s = Scratch::new("ds-broken");
    let image = demo_image(&s);
    let broken = format!(
        "Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/cloud-config\n\n{}",
        node_user_data("10.0.2.50")
    );
    let server = ec2_server(broken.into_bytes());
    let mut guest = start(&image, &s, &cloud_args("type=1,manufacturer=Amazon EC2", server.port, ""));
    let console = guest.wait_for("planet-init: power-off", BOOT);
    assert!(console.contains("planet-init: fatal"), "{console}");
    assert!(console.contains("MIME multipart has no closing boundary --XX--"), "{console}");
    assert!(!console.contains("launcher started"), "{console}");
    assert_no_secret(&console);
    drop(guest);

    let server = ec2_server(b"#cloud-config\nplanet:\n  role: node\n  master_ipp: 10.0.0.1\n".to_vec());
    let mut guest = start(&image, &s, &cloud_args("type=1,manufacturer=Amazon EC2", server.port, ""));
    let console = guest.wait_for("planet-init: power-off", BOOT);
    assert!(console.contains("planet.master_ipp is not a known key"), "{console}");
    assert!(!console.contains("launcher started"), "{console}");
}

#[test]
fn a_metadata_server_that_never_answers_ends_within_the_deadline() {
    let s = Scratch::new("ds-silent");
    let image = demo_image(&s);
    let server = MetadataServer::start(Box::new(|_, _, _| None));
    let mut guest =
        start(&image, &s, &cloud_args("type=1,manufacturer=Amazon EC2", server.port, "planet.datasource_timeout=15"));
    let t = guest.wait_for("planet-init: network ", BOOT);
    assert!(t.contains("source=dhcp"), "{t}");
    let started = Instant::now();
    let console = guest.wait_for("planet-init: power-off", Duration::from_secs(120));
    assert!(started.elapsed() < Duration::from_secs(60), "the deadline was not kept: {:?}", started.elapsed());
    assert!(console.contains("no cloud-init data: tried ec2:"), "{console}");
    assert!(console.contains("no answer within the deadline"), "{console}");
    assert!(!server.log().is_empty(), "the guest never reached the server");
}

/// Base64 with line breaks, as MIME tools write it.
fn base64_lines(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, c) in data.chunks(3).enumerate() {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            out.push(if k <= c.len() { A[(n >> (18 - 6 * k)) as usize & 63] as char } else { '=' });
        }
        if i % 19 == 18 {
            out.push('\n');
        }
    }
    out
}

/// Hostile user-data and hostile metadata servers, one boot each: every boot must end in a
/// clear error on the console within the datasource deadline, never in a kernel panic or a
/// hang. (Without the bounds, the alias bomb runs PID 1 out of memory, the nesting is
/// unbounded, the Content-Length overflows, and the drip holds the boot for ever.)
#[test]
fn hostile_user_data_and_servers_end_in_a_clear_error() {
    let s = Scratch::new("ds-hostile");
    let image = demo_image(&s);
    // 1 MB of YAML that would expand to 4×10¹⁰ nodes; gzip makes it a few KiB.
    let bomb = format!(
        "#cloud-config\na: &a [{}]\nb: [{}]\nplanet:\n  role: dev\n",
        vec!["x"; 200_000].join(","),
        vec!["*a"; 200_000].join(",")
    );
    // Twelve MIME documents, each in an application/gzip part of the next.
    let mut nested = node_user_data("10.0.2.50").into_bytes();
    for _ in 0..12 {
        nested = format!(
            "Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n--B\nContent-Type: \
             application/gzip\nContent-Transfer-Encoding: base64\n\n{}\n--B--\n",
            base64_lines(&gzip(&nested))
        )
        .into_bytes();
    }
    let deadline = 20;
    let cases: Vec<(&str, Reply, &str)> = vec![
        ("alias bomb", Reply::Answer(200, gzip(bomb.as_bytes())), "YAML nodes"),
        ("nested MIME", Reply::Answer(200, nested), "MIME documents nested more than"),
        (
            "Content-Length overflow",
            Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n#cloud".to_vec()),
            "announces a body of 18446744073709551615 bytes",
        ),
        (
            "one byte a second",
            Reply::Drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec(), Duration::from_secs(1)),
            "no complete response to GET /latest/user-data within",
        ),
    ];
    for (name, reply, expected) in cases {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = MetadataServer::start_raw(Box::new(move |method, path, headers| {
            if method == "PUT" && path == "/latest/api/token" {
                return Reply::Answer(200, b"tok-123".to_vec());
            }
            if header(headers, "x-aws-ec2-metadata-token") != Some("tok-123") {
                return Reply::Answer(401, Vec::new());
            }
            match path {
                // Every try gets the same treatment (a drip, once started, never stops).
                "/latest/user-data" => match &*reply.lock().unwrap() {
                    Some(Reply::Answer(st, b)) => Reply::Answer(*st, b.clone()),
                    Some(Reply::Raw(b)) => Reply::Raw(b.clone()),
                    Some(Reply::Drip(h, e)) => Reply::Drip(h.clone(), *e),
                    _ => Reply::Silent,
                },
                "/latest/meta-data/instance-id" => Reply::Answer(200, b"i-0123456789abcdef0".to_vec()),
                _ => Reply::Answer(404, Vec::new()),
            }
        }));
        let mut guest = start(
            &image,
            &s,
            &cloud_args(
                "type=1,manufacturer=Amazon EC2",
                server.port,
                &format!("planet.datasource_timeout={deadline}"),
            ),
        );
        guest.wait_for("planet-init: network ", BOOT);
        let started = Instant::now();
        let console = guest.wait_for("planet-init: power-off", Duration::from_secs(180));
        let took = started.elapsed();
        assert!(console.contains("planet-init: fatal"), "{name}: {console}");
        assert!(console.contains(expected), "{name}: expected {expected:?} on the console:\n{console}");
        assert!(!console.contains("Kernel panic"), "{name}: {console}");
        assert!(!console.contains("launcher started"), "{name}: {console}");
        // The deadline, plus one try's 5 s and TCG's slowness.
        assert!(took < Duration::from_secs(deadline + 25), "{name}: the deadline was not kept: {took:?}");
        assert_no_secret(&console);
        drop(guest);
    }
}

#[test]
fn config_drive_partition_on_the_boot_disk_gives_the_static_address() {
    let s = Scratch::new("ds-configdrive");
    let raw = s.path("demo.raw");
    build("raw", &fixture("demo.tar"), &raw, &[]);
    seed(
        &s,
        "unused.img",
        &[
            "--format",
            "config-2",
            "--partition",
            &raw.display().to_string(),
            "--role",
            "dev",
            "--hostname",
            "metal-1",
            "--address",
            "10.0.2.30/24",
            "--gateway",
            "10.0.2.2",
            "--env",
            &format!("TOKEN={SECRET}"),
        ],
    );
    let text = stdout(Command::new("sfdisk").arg("--json").arg(&raw));
    assert!(text.contains("\"name\": \"config-2\""), "{text}");
    ok(Command::new("sgdisk").arg("-v").arg(&raw));
    let mut guest = start(&raw, &s, &["--snapshot".into()]);
    let console = guest.wait_for("planet-init: launcher started", BOOT);
    assert!(console.contains("source=configdrive"), "{console}");
    assert!(console.contains("address=10.0.2.30/24 gateway=10.0.2.2"), "{console}");
    assert!(console.contains("source=static"), "{console}");
    // QEMU's host forwards go to the DHCP address (10.0.2.15), not to a static one, so the
    // container is checked on the console; growth stopped in front of the config drive.
    assert!(!console.contains("state growth failed"), "{console}");
    assert_no_secret(&guest.console());
}

#[test]
fn cloud_init_examples_pass_cloud_init_schema_and_our_parser() {
    let dir = repo().join("cloud-init");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let out = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&p).output().expect("cloud-init");
        assert!(
            out.status.success(),
            "cloud-init schema rejects {}: {}{}",
            p.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read(&p).unwrap();
        let (raw, notices) =
            planet_config::cloudconfig::user_data_config(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(notices.is_empty(), "{}: {notices:?}", p.display());
        raw.validate(planet_config::Source::NoCloud, "planet.").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    assert!(n >= 12, "expected master, node and dev for aws, gce, metal and qemu; found {n} examples");
}
