//! The pod network across machines, as flannel's host-gw backend does it: every machine routes
//! each other Node's pod CIDR (given by the controller manager) via that Node's InternalIP, and
//! kubenet's bridge delivers locally. It needs the machines on one L2 segment (a route's next
//! hop must be a neighbour), which is what a cloud VPC subnet, a rack's switch and the test's
//! hub all are; it costs no encapsulation and no daemon but this loop.
//!
//! `planet-node routes` keeps the routing table in step with the Node objects: routes it owns
//! carry the protocol number [`ROUTE_PROTO`], so it never touches anyone else's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The `proto` of the routes this module owns (`ip route show proto 199`).
pub const ROUTE_PROTO: &str = "199";
/// How often the Nodes are read again when no change was seen (a watch can miss an event).
const RESYNC: Duration = Duration::from_secs(120);

/// `CIDR → next hop`.
pub type Routes = BTreeMap<String, Ipv4Addr>;

/// Each other Node's pod CIDR via its address, from lines `NAME CIDR IP` (what [`node_lines`]
/// makes of the Nodes). Nodes without a CIDR or an address yet are skipped.
pub fn wanted(own_name: &str, nodes: &str) -> Routes {
    nodes
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, cidr, ip) = (f.next()?, f.next()?, f.next()?);
            let ip: Ipv4Addr = ip.parse().ok()?;
            let (net, len) = cidr.split_once('/')?;
            net.parse::<Ipv4Addr>().ok()?;
            len.parse::<u8>().ok().filter(|l| *l <= 32)?;
            (name != own_name).then(|| (cidr.to_string(), ip))
        })
        .collect()
}

/// The routes we own now, from `ip -o route show proto 199` (`CIDR via IP dev …`).
pub fn current(ip_route_output: &str) -> Routes {
    ip_route_output
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            Some((f.first()?.to_string(), f.get(via + 1)?.parse().ok()?))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Set(String, Ipv4Addr),
    Remove(String),
}

/// What turns `have` into `want`.
pub fn plan(want: &Routes, have: &Routes) -> Vec<Change> {
    let mut c: Vec<Change> =
        have.keys().filter(|k| !want.contains_key(*k)).map(|k| Change::Remove(k.clone())).collect();
    c.extend(want.iter().filter(|(k, v)| have.get(*k) != Some(v)).map(|(k, v)| Change::Set(k.clone(), *v)));
    c
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Nodes as `NAME CIDR INTERNALIP` lines, asked as the kubelet (crate::api: every Node
/// change starts a pass, on every machine).
fn read_nodes(env: &crate::env::NodeEnv) -> Result<String, String> {
    let list = crate::api::ApiClient::for_machine(env)?.get_json("/api/v1/nodes")?.unwrap_or_default();
    Ok(node_lines(&list))
}

/// A NodeList as [`wanted`] reads it: `NAME CIDR INTERNALIP`, empty fields where a Node has none.
pub fn node_lines(list: &serde_json::Value) -> String {
    let items = list["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .map(|n| {
            let ip = n["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .and_then(|a| a["address"].as_str())
                .unwrap_or("");
            let (name, cidr) =
                (n["metadata"]["name"].as_str().unwrap_or(""), n["spec"]["podCIDR"].as_str().unwrap_or(""));
            format!("{name} {cidr} {ip}\n")
        })
        .collect()
}

/// One pass: reads the Nodes and the table, applies the difference. Returns what changed.
pub fn sync(env: &crate::env::NodeEnv) -> Result<Vec<Change>> {
    let nodes = read_nodes(env).map_err(|e| anyhow::anyhow!("reading the Nodes: {e}"))?;
    let want = wanted(&env.node_name, &nodes);
    let have = current(&ip(&["-4", "-o", "route", "show", "proto", ROUTE_PROTO])?);
    let changes = plan(&want, &have);
    for c in &changes {
        match c {
            Change::Set(cidr, via) => {
                ip(&["route", "replace", cidr, "via", &via.to_string(), "proto", ROUTE_PROTO])?;
            }
            Change::Remove(cidr) => {
                ip(&["route", "del", cidr, "proto", ROUTE_PROTO])?;
            }
        }
    }
    Ok(changes)
}

/// The interface holding `addr`, from `ip -o -4 addr show to ADDR/32` (`3: ens4    inet …`).
pub fn interface_of(ip_addr_output: &str) -> Option<String> {
    let name = ip_addr_output.lines().next()?.split_whitespace().nth(1)?;
    Some(name.trim_end_matches(':').split('@').next()?.to_string())
}

/// Services' cluster IPs reachable from this machine itself, not only from its pods: kube-proxy
/// rewrites a connection to a cluster IP in iptables' OUTPUT chain, which runs only after the
/// kernel found a route for the original address. A machine with a default route has one; a
/// machine with static addresses and no gateway (a private segment) gets a route for the
/// service range out of its cluster interface. Health checks of apps, `kubectl port-forward`
/// and host-network pods use cluster IPs from the machine.
pub fn ensure_service_route(own: Ipv4Addr) -> Result<Option<String>> {
    if ip(&["-4", "route", "get", &crate::cluster::API_SERVICE_IP.to_string()]).is_ok() {
        return Ok(None);
    }
    let shown = ip(&["-o", "-4", "addr", "show", "to", &format!("{own}/32")])?;
    let dev = interface_of(&shown).with_context(|| format!("no interface holds this machine's address {own}"))?;
    let cidr = crate::cluster::SERVICE_CIDR;
    ip(&["route", "replace", cidr, "dev", &dev, "src", &own.to_string()])?;
    Ok(Some(format!("{cidr} dev {dev}")))
}

/// `planet-node routes`: [`sync`] whenever a Node changes, and every [`RESYNC`], for ever (its
/// unit restarts it if it dies).
pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    let kubeconfig = crate::cluster::kubeconfig("kubelet");
    let mut complaint = crate::kubectl::Complaint::default();
    let me = env.clone();
    let before_watch = move || crate::api::wait_until_ready(&me, "routes");
    crate::kubectl::on_change(&kubeconfig, &["get", "nodes", "--watch"], RESYNC, before_watch, || match sync(&env) {
        Ok(changes) => {
            for c in changes {
                match c {
                    Change::Set(cidr, via) => println!("planet-node: route pods={cidr} via={via}"),
                    Change::Remove(cidr) => println!("planet-node: route removed pods={cidr}"),
                }
            }
            complaint.clear();
        }
        Err(e) => {
            complaint.say("routes not in step yet", format!("{e:#}"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_holding_the_address_is_found() {
        let out = "3: ens4    inet 192.168.50.10/24 brd 192.168.50.255 scope global ens4\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(interface_of(out).as_deref(), Some("ens4"));
        assert_eq!(interface_of("7: eth0@if8    inet 10.0.0.2/24 scope global eth0\n").as_deref(), Some("eth0"));
        assert_eq!(interface_of(""), None);
    }

    #[test]
    fn each_other_node_is_routed_via_its_address() {
        let nodes = "master-1 10.244.0.0/24 192.168.50.10\nnode-1 10.244.1.0/24 192.168.50.11\n\
                     node-2 10.244.2.0/24 192.168.50.12\nnode-3  192.168.50.13\nnode-4 10.244.4.0/24 \n\
                     node-5 junk 192.168.50.15\n";
        let w = wanted("node-1", nodes);
        assert_eq!(
            w.into_iter().collect::<Vec<_>>(),
            [
                ("10.244.0.0/24".to_string(), Ipv4Addr::new(192, 168, 50, 10)),
                ("10.244.2.0/24".to_string(), Ipv4Addr::new(192, 168, 50, 12))
            ]
        );
    }

    #[test]
    fn a_node_list_becomes_lines_with_empty_fields_for_what_is_missing() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "master-1"}, "spec": {"podCIDR": "10.244.0.0/24"},
             "status": {"addresses": [{"type": "Hostname", "address": "master-1"},
                                      {"type": "InternalIP", "address": "192.168.50.10"}]}},
            {"metadata": {"name": "node-1"}, "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]}},
            {"metadata": {"name": "node-2"}, "spec": {"podCIDR": "10.244.2.0/24"}, "status": {}}
        ]});
        let lines = node_lines(&list);
        assert_eq!(lines, "master-1 10.244.0.0/24 192.168.50.10\nnode-1  192.168.50.11\nnode-2 10.244.2.0/24 \n");
        let w = wanted("node-9", &lines);
        assert_eq!(w.into_iter().collect::<Vec<_>>(), [("10.244.0.0/24".to_string(), Ipv4Addr::new(192, 168, 50, 10))]);
        assert_eq!(node_lines(&serde_json::Value::Null), "");
    }

    #[test]
    fn the_plan_adds_moves_and_removes_only_what_differs() {
        let have = current(
            "10.244.0.0/24 via 192.168.50.10 dev eth1 proto 199 \n10.244.3.0/24 via 192.168.50.13 dev eth1 proto 199 \n\
             10.244.2.0/24 via 192.168.50.99 dev eth1 proto 199 \n",
        );
        let want = wanted("node-1", "master-1 10.244.0.0/24 192.168.50.10\nnode-2 10.244.2.0/24 192.168.50.12\n");
        assert_eq!(
            plan(&want, &have),
            [
                Change::Remove("10.244.3.0/24".into()),
                Change::Set("10.244.2.0/24".into(), Ipv4Addr::new(192, 168, 50, 12))
            ]
        );
        assert!(plan(&want, &want).is_empty());
    }
}
