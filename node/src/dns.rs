//! Cluster DNS on every machine with a kubelet: Debian's dnsmasq, listening on the machine's own
//! address, answers `SERVICE.NAMESPACE.svc.cluster.local` (and the shorter forms pods reach
//! through the search path the kubelet gives them) from a hosts file this loop keeps in step
//! with the Services. The kubelet points its pods at that address (`clusterDNS`), so a lookup
//! never leaves the machine and a master that is down does not stop name resolution. Names
//! outside the cluster domain are forwarded to the machine's own resolvers.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::CLUSTER_DOMAIN;

/// The hosts file dnsmasq reads (and re-reads on SIGHUP).
pub const HOSTS: &str = "/run/planet/dns/hosts";
/// How often the Services are read again when no change was seen.
const RESYNC: Duration = Duration::from_secs(120);

/// The hosts file for lines `NAME NAMESPACE CLUSTERIP`: one line per Service with a virtual IP
/// (headless Services, whose clusterIP is `None`, are left out), sorted so it only changes when
/// the Services do.
pub fn hosts(services: &str) -> String {
    let mut lines: Vec<String> = services
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, ns, ip) = (f.next()?, f.next()?, f.next()?);
            let ip: std::net::IpAddr = ip.parse().ok()?;
            Some(format!("{ip} {name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc"))
        })
        .collect();
    lines.sort();
    lines.dedup();
    let mut out = String::from("# Written by planet-node dns from the cluster's Services.\n");
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// dnsmasq's arguments: only the hosts file and the machine's resolvers, bound to `listen`
/// only, authoritative for the cluster domain (unknown cluster names are NXDOMAIN, not sent
/// upstream), dropping root once the port is bound.
pub fn dnsmasq_args(listen: std::net::Ipv4Addr) -> Vec<String> {
    [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-hosts",
        &format!("--addn-hosts={HOSTS}"),
        &format!("--listen-address={listen}"),
        "--bind-interfaces",
        &format!("--local=/{CLUSTER_DOMAIN}/"),
        "--domain-needed",
        "--no-negcache",
        "--cache-size=1000",
        "--user=nobody",
        "--group=nogroup",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn read_services(kubeconfig: &str) -> Result<String, String> {
    let jsonpath =
        r#"-o=jsonpath={range .items[*]}{.metadata.name} {.metadata.namespace} {.spec.clusterIP}{"\n"}{end}"#;
    crate::kubectl::run(kubeconfig, &["get", "services", "--all-namespaces", jsonpath])
}

fn start(listen: std::net::Ipv4Addr) -> Result<Child> {
    Command::new("dnsmasq").args(dnsmasq_args(listen)).spawn().context("starting dnsmasq")
}

/// `planet-node dns`: writes the hosts file, runs dnsmasq, tells it when the file changed.
/// Exits (and its unit restarts it) when dnsmasq does.
pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    let kubeconfig = crate::cluster::kubeconfig("kubelet");
    let path = Path::new(HOSTS);
    crate::files::write_if_changed(path, hosts("").as_bytes(), 0o644)?;
    let mut dnsmasq = start(env.public_ip)?;
    println!("planet-node: dns serving {CLUSTER_DOMAIN} on {}:53", env.public_ip);
    let mut complaint = crate::kubectl::Complaint::default();
    let me = env.clone();
    let before_watch = move || crate::api::wait_until_ready(&me, "dns");
    let watch = ["get", "services", "--all-namespaces", "--watch"];
    crate::kubectl::on_change(&kubeconfig, &watch, RESYNC, before_watch, || {
        match dnsmasq.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                println!("planet-node: error: dnsmasq exited ({status})");
                std::process::exit(1);
            }
            Err(e) => {
                println!("planet-node: error: watching dnsmasq: {e}");
                std::process::exit(1);
            }
        }
        match read_services(&kubeconfig) {
            Ok(services) => {
                complaint.clear();
                let text = hosts(&services);
                match crate::files::write_if_changed(path, text.as_bytes(), 0o644) {
                    Ok(true) => {
                        // SIGHUP: dnsmasq re-reads its hosts files and clears its cache.
                        let _ = Command::new("kill").args(["-HUP", &dnsmasq.id().to_string()]).status();
                        println!("planet-node: dns names={}", text.lines().count() - 1);
                    }
                    Ok(false) => {}
                    Err(e) => println!("planet-node: dns: {e:#}"),
                }
            }
            Err(e) => {
                complaint.say("dns not in step yet", e);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_become_cluster_names() {
        let h = hosts("kubernetes default 10.100.0.1\nmysql default 10.100.23.4\nheadless default None\nweird x\n");
        assert_eq!(
            h,
            "# Written by planet-node dns from the cluster's Services.\n\
             10.100.0.1 kubernetes.default.svc.cluster.local kubernetes.default.svc\n\
             10.100.23.4 mysql.default.svc.cluster.local mysql.default.svc\n"
        );
    }

    #[test]
    fn dnsmasq_serves_the_cluster_domain_on_the_machine_address_only() {
        let a = dnsmasq_args("192.168.50.11".parse().unwrap());
        assert!(a.contains(&"--listen-address=192.168.50.11".to_string()), "{a:?}");
        assert!(a.contains(&"--local=/cluster.local/".to_string()), "{a:?}");
        assert!(a.contains(&"--bind-interfaces".to_string()), "{a:?}");
    }
}
