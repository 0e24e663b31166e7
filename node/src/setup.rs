//! `planet-node setup`: runs once per boot, before any Kubernetes unit. Makes or renews the PKI,
//! writes every component's configuration for this machine's role, then starts the role's
//! systemd targets. Idempotent: a reboot keeps the CA, the keys and the cluster's data.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use time::OffsetDateTime;

use crate::cluster::{self, kubeconfig, KUBE_DIR, PKI_DIR};
use crate::env::NodeEnv;
use crate::files;
use crate::pki::{Issued, LeafSpec, Pki, Usage};
use crate::render;

/// The leaf certificates a master needs (besides the node's own).
pub fn master_leaves(env: &NodeEnv, etcd_owner: Option<(u32, u32)>) -> Vec<LeafSpec> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut api = LeafSpec {
        name: "apiserver".into(),
        common_name: "kube-apiserver".into(),
        organizations: vec![],
        dns_names: vec![
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{}", cluster::CLUSTER_DOMAIN),
            "localhost".into(),
            env.node_name.clone(),
        ],
        ips: vec![IpAddr::V4(cluster::API_SERVICE_IP), loopback, IpAddr::V4(env.public_ip)],
        usage: Usage::Server,
        owner: None,
    };
    api.ips.dedup();
    let etcd = |name: &str, usage| LeafSpec {
        name: format!("etcd/{name}"),
        common_name: format!("{}-etcd-{name}", env.node_name),
        organizations: vec![],
        dns_names: vec!["localhost".into(), env.node_name.clone()],
        ips: vec![loopback],
        usage,
        owner: etcd_owner,
    };
    vec![
        api,
        LeafSpec::client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", &["system:masters"]),
        LeafSpec::client("apiserver-etcd-client", "kube-apiserver-etcd-client", &[]),
        // etcd's gRPC gateway dials its own client port with the server certificate.
        etcd("server", Usage::Both),
        etcd("peer", Usage::Both),
        LeafSpec::client("admin", "kubernetes-admin", &["system:masters"]),
        LeafSpec::client("controller-manager", "system:kube-controller-manager", &[]),
        LeafSpec::client("scheduler", "system:kube-scheduler", &[]),
    ]
}

/// The certificates of a machine that runs a kubelet.
pub fn node_leaves(env: &NodeEnv) -> Vec<LeafSpec> {
    vec![
        LeafSpec::client("kubelet", &format!("system:node:{}", env.node_name), &["system:nodes"]),
        LeafSpec {
            name: "kubelet-server".into(),
            common_name: format!("system:node:{}", env.node_name),
            organizations: vec!["system:nodes".into()],
            dns_names: vec![env.node_name.clone()],
            ips: vec![IpAddr::V4(env.public_ip)],
            usage: Usage::Server,
            owner: None,
        },
        LeafSpec::client("kube-proxy", "system:kube-proxy", &[]),
    ]
}

/// Writes `KUBE_DIR/NAME.kubeconfig` for the client certificate `cert` (mode 0600).
fn write_kubeconfig(pki: &Pki, kube_dir: &Path, name: &str, cert: &str, server: &str) -> Result<()> {
    let text = render::kubeconfig_text(
        server,
        name,
        &pki.ca_pem(),
        &pki.read(&format!("{cert}.crt"))?,
        &pki.read(&format!("{cert}.key"))?,
    );
    files::write_if_changed(kube_dir.join(format!("{name}.kubeconfig")), text.as_bytes(), 0o600)?;
    Ok(())
}

/// Everything but starting the targets on a master or dev machine, rooted at `root` (`/` in
/// the container; a temporary directory in tests). Both run a kubelet with credentials made
/// here from the cluster CA.
pub fn prepare(env: &NodeEnv, root: &Path, now: OffsetDateTime) -> Result<Vec<String>> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut made = Vec::new();
    if !env.role.is_master() {
        bail!("role node: use prepare_node with the CA the master vouched for");
    }
    let (pki, ca) = Pki::open_or_create(&at(PKI_DIR), now)?;
    if ca == Issued::New {
        made.push("ca".to_string());
    }
    let etcd_owner = files::user_ids(&at("/etc"), "etcd").ok();
    let mut leaves = master_leaves(env, etcd_owner);
    leaves.extend(node_leaves(env));
    for leaf in &leaves {
        if pki.ensure_leaf(leaf, now).with_context(|| format!("issuing {}", leaf.name))? == Issued::New {
            made.push(leaf.name.clone());
        }
    }
    let kube_dir = at(KUBE_DIR);
    if pki.ensure_service_account_key()? == Issued::New {
        made.push("sa".into());
    }
    // etcd reads its own copy of the CA from its 0700 directory.
    let etcd_dir = at(&cluster::pki("etcd"));
    files::write(etcd_dir.join("ca.crt"), pki.ca_pem().as_bytes(), 0o644, etcd_owner)?;
    std::fs::set_permissions(&etcd_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    if let Some((uid, gid)) = etcd_owner {
        std::os::unix::fs::chown(&etcd_dir, Some(uid), Some(gid))
            .with_context(|| format!("changing the owner of {}", etcd_dir.display()))?;
    }
    let server = render::api_server_url(env);
    for (name, cert) in [
        ("admin", "admin"),
        ("controller-manager", "controller-manager"),
        ("scheduler", "scheduler"),
        ("kubelet", "kubelet"),
        ("kube-proxy", "kube-proxy"),
    ] {
        write_kubeconfig(&pki, &kube_dir, name, cert, &server)?;
    }
    files::write_if_changed(at(cluster::ETCD_DEFAULTS), render::etcd_defaults(env).as_bytes(), 0o644)?;
    files::write_if_changed(at(cluster::ENTER_ENV), render::enter_env().as_bytes(), 0o644)?;
    // kubectl with no flags, in any shell of the container, talks to this cluster as admin.
    let kube = at("/root/.kube");
    std::fs::create_dir_all(&kube).with_context(|| format!("creating {}", kube.display()))?;
    let link = kube.join("config");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(kubeconfig("admin"), &link).with_context(|| format!("linking {}", link.display()))?;
    write_node_config(env, root)?;
    Ok(made)
}

/// The kubelet's and kube-proxy's configuration and the units' environment: every role.
fn write_node_config(env: &NodeEnv, root: &Path) -> Result<()> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let kube_dir = at(KUBE_DIR);
    files::write_if_changed(kube_dir.join("kubelet.yaml"), render::kubelet_config(env).as_bytes(), 0o644)?;
    files::write_if_changed(kube_dir.join("kube-proxy.yaml"), render::kube_proxy_config(env).as_bytes(), 0o644)?;
    files::write_if_changed(at(cluster::UNIT_ENV), render::unit_env(env).as_bytes(), 0o644)?;
    files::write_if_changed(at(cluster::CLOUD_ENV), env.operator_env.lines().as_bytes(), 0o600)?;
    match &env.cloud_config {
        Some(text) => {
            files::write_if_changed(at(cluster::CLOUD_CONFIG), text.as_bytes(), 0o600)?;
        }
        None => match std::fs::remove_file(at(cluster::CLOUD_CONFIG)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", cluster::CLOUD_CONFIG))
            }
            _ => {}
        },
    }
    Ok(())
}

/// Whether a node joined before: it keeps the CA it accepted then (and its kubelet its
/// certificate), so a reboot does not wait for the master.
pub fn node_joined(root: &Path) -> bool {
    root.join(cluster::pki("ca.crt").trim_start_matches('/')).exists()
}

/// A node's configuration, once [`join::discover`](crate::join::discover) has checked the
/// master and returned its CA: the CA, the bootstrap kubeconfig holding the join token (0600),
/// with which the kubelet asks for its own certificate, and the configuration every role gets.
pub fn prepare_node(env: &NodeEnv, root: &Path, ca_pem: &str) -> Result<()> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let token = env.join_token.as_ref().context("role node without a join token")?;
    files::write(at(&cluster::pki("ca.crt")), ca_pem.as_bytes(), 0o644, None)?;
    let text = render::bootstrap_kubeconfig_text(&render::api_server_url(env), ca_pem, &token.bearer());
    files::write_if_changed(at(&kubeconfig("bootstrap-kubelet")), text.as_bytes(), 0o600)?;
    write_node_config(env, root)
}

/// The whole step, as the unit runs it.
pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    println!(
        "planet-node: setup role={} node={} ip={} master={}",
        env.role.as_str(),
        env.node_name,
        env.public_ip,
        env.master_ip
    );
    let root = Path::new("/");
    if env.role.is_master() {
        let made = prepare(&env, root, OffsetDateTime::now_utc())?;
        if made.is_empty() {
            println!("planet-node: pki kept dir={PKI_DIR}");
        } else {
            println!("planet-node: pki issued dir={PKI_DIR} certificates={}", made.join(","));
        }
    } else {
        let token = env.join_token.as_ref().context(
            "join: role node needs the cluster's join token: put the master's in this node's user-data \
             (planet: join_token:; make one with `planet-image join-token`)",
        )?;
        let ca = if node_joined(root) {
            println!("planet-node: join kept (the CA accepted at the first join)");
            std::fs::read_to_string(cluster::pki("ca.crt")).context("reading the cluster CA")?
        } else {
            let ca = crate::join::discover(env.master_ip, token, crate::join::WAIT_FOR_MASTER)?;
            println!("planet-node: join master={} verified with join token id={}", env.master_ip, token.id());
            ca
        };
        prepare_node(&env, root, &ca)?;
    }
    match crate::routes::ensure_service_route(env.public_ip) {
        Ok(Some(route)) => println!("planet-node: route services={route} (no default route)"),
        Ok(None) => {}
        Err(e) => println!("planet-node: no route to the services' cluster IPs from this machine: {e:#}"),
    }
    let targets = env.role.targets();
    let status = Command::new("systemctl")
        .arg("start")
        .arg("--no-block")
        .args(&targets)
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl start {} failed ({status})", targets.join(" "));
    }
    println!("planet-node: starting {}", targets.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn dev_setup_writes_everything_and_keeps_it_on_the_second_boot() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let env = crate::env::parse("PLANET_ROLE=dev\nPLANET_PUBLIC_IP=10.0.2.15\nPLANET_HOSTNAME=demo-1\n").unwrap();
        let now = OffsetDateTime::now_utc();
        let made = prepare(&env, root, now).unwrap();
        for want in ["ca", "apiserver", "etcd/server", "admin", "kubelet", "kube-proxy", "sa"] {
            assert!(made.iter().any(|m| m == want), "{want} not issued: {made:?}");
        }
        for f in [
            "etc/kubernetes/admin.kubeconfig",
            "etc/kubernetes/kubelet.kubeconfig",
            "etc/kubernetes/kubelet.yaml",
            "etc/kubernetes/pki/etcd/ca.crt",
            "etc/default/etcd",
            "etc/planet/kube.env",
            "etc/planet/enter.env",
        ] {
            assert!(root.join(f).exists(), "{f} missing");
        }
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode("etc/kubernetes/admin.kubeconfig"), 0o600);
        assert_eq!(mode("etc/kubernetes/pki/ca.key"), 0o600);
        assert_eq!(mode("etc/kubernetes/pki/etcd"), 0o700);
        let admin = std::fs::read(root.join("etc/kubernetes/admin.kubeconfig")).unwrap();
        assert!(prepare(&env, root, now).unwrap().is_empty(), "a second boot issues nothing");
        assert_eq!(std::fs::read(root.join("etc/kubernetes/admin.kubeconfig")).unwrap(), admin);
        assert_eq!(
            std::fs::read_link(root.join("root/.kube/config")).unwrap(),
            Path::new("/etc/kubernetes/admin.kubeconfig")
        );
    }

    #[test]
    fn a_node_gets_the_ca_and_a_private_bootstrap_kubeconfig() {
        let d = tempfile::tempdir().unwrap();
        let env = crate::env::parse(
            "PLANET_ROLE=node\nPLANET_PUBLIC_IP=10.0.0.3\nPLANET_MASTER_IP=10.0.0.2\n\
             PLANET_JOIN_TOKEN=abcdef.0123456789abcdef\nPLANET_CLOUD_PROVIDER=aws\n\
             PLANET_CLOUD_CONFIG=W0dsb2JhbF0KWm9uZT11cy1lYXN0LTFhCg==\nAWS_SECRET_ACCESS_KEY=s3cr3t\n",
        )
        .unwrap();
        assert!(prepare(&env, d.path(), OffsetDateTime::now_utc()).is_err(), "a node makes no CA of its own");
        assert!(!node_joined(d.path()));
        prepare_node(&env, d.path(), "CA PEM").unwrap();
        assert!(node_joined(d.path()));
        let boot = d.path().join("etc/kubernetes/bootstrap-kubelet.kubeconfig");
        assert_eq!(std::fs::metadata(&boot).unwrap().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&boot).unwrap();
        assert!(text.contains("token: abcdef.0123456789abcdef\n") && text.contains("https://10.0.0.2:6443"), "{text}");
        let kubelet = std::fs::read_to_string(d.path().join("etc/kubernetes/kubelet.yaml")).unwrap();
        assert!(kubelet.contains("serverTLSBootstrap: true\n") && !kubelet.contains("tlsCertFile"), "{kubelet}");
        assert!(!d.path().join("etc/kubernetes/pki/ca.key").exists());
        let unit_env = std::fs::read_to_string(d.path().join("etc/planet/kube.env")).unwrap();
        assert!(!unit_env.contains("0123456789abcdef") && !unit_env.contains("s3cr3t"), "{unit_env}");
        // The provider's file and the credentials: private files, read by the units.
        for (file, want) in [
            ("etc/planet/cloud.env", "AWS_SECRET_ACCESS_KEY=s3cr3t\n"),
            ("etc/planet/cloud-provider.conf", "[Global]\nZone=us-east-1a\n"),
        ] {
            assert_eq!(std::fs::metadata(d.path().join(file)).unwrap().mode() & 0o777, 0o600, "{file}");
            assert_eq!(std::fs::read_to_string(d.path().join(file)).unwrap(), want, "{file}");
        }
        // A later boot without the provider's file removes it.
        let plain = crate::env::NodeEnv { cloud_config: None, ..env };
        prepare_node(&plain, d.path(), "CA PEM").unwrap();
        assert!(!d.path().join("etc/planet/cloud-provider.conf").exists());
    }
}
