//! The machine's identity and role, as planet-init handed them to the container in
//! `/etc/container-environment` (one `KEY=VALUE` a line; never evaluated as shell).

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Node,
    /// Master and node on one machine.
    Dev,
}

impl Role {
    pub fn is_master(self) -> bool {
        matches!(self, Role::Master | Role::Dev)
    }
    /// Whether pods are scheduled here: a master's Node is tainted `NoSchedule`.
    pub fn takes_workloads(self) -> bool {
        matches!(self, Role::Node | Role::Dev)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Node => "node",
            Role::Dev => "dev",
        }
    }
    /// Whether the machine runs a kubelet: every role does. A master's kubelet registers its
    /// Node tainted `NoSchedule`, so the cluster sees it but runs no workloads there.
    pub fn runs_kubelet(self) -> bool {
        true
    }
    /// The systemd targets this role starts.
    pub fn targets(self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.is_master() {
            t.push("planet-master.target");
        }
        if self.runs_kubelet() {
            t.push("planet-node.target");
        }
        t
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEnv {
    pub role: Role,
    /// The machine's own address: what it advertises and what certificates name.
    pub public_ip: Ipv4Addr,
    pub master_ip: Ipv4Addr,
    pub node_name: String,
    pub hostname: String,
    pub cloud_provider: String,
    /// The cluster's join secret (`planet: join_token:` in the user-data): a master publishes
    /// it, a node proves with it that it may join and checks with it that the master is ours.
    pub join_token: Option<crate::join::JoinToken>,
    /// The operator's taints (`planet: taints:`), `KEY[=VALUE]:EFFECT` each.
    pub taints: Vec<String>,
}

/// Parses the file's text. Unknown keys are ignored (they are the operator's `env:`).
pub fn parse(text: &str) -> Result<NodeEnv> {
    let get = |key: &str| -> Option<&str> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
            .next_back()
            .filter(|v| !v.is_empty())
    };
    let role = match get("PLANET_ROLE") {
        Some("master") => Role::Master,
        Some("node") => Role::Node,
        Some("dev") => Role::Dev,
        Some(other) => bail!("PLANET_ROLE={other:?} is not master, node or dev"),
        None => bail!("PLANET_ROLE is missing"),
    };
    let ip = |key: &str| -> Result<Option<Ipv4Addr>> {
        get(key).map(|v| v.parse().with_context(|| format!("{key}={v:?} is not an IPv4 address"))).transpose()
    };
    let public_ip = ip("PLANET_PUBLIC_IP")?.context("PLANET_PUBLIC_IP is missing (the machine has no address)")?;
    let master_ip = match ip("PLANET_MASTER_IP")? {
        Some(ip) => ip,
        None if role.is_master() => public_ip,
        None => bail!("PLANET_MASTER_IP is missing; a node must be told its master"),
    };
    let join_token = get("PLANET_JOIN_TOKEN")
        .map(|t| {
            t.parse::<crate::join::JoinToken>().context("PLANET_JOIN_TOKEN (planet: join_token: in the user-data)")
        })
        .transpose()?;
    let hostname = get("PLANET_HOSTNAME").unwrap_or("planet").to_string();
    let node_name = get("PLANET_NODE_NAME").map(str::to_string).unwrap_or_else(|| hostname.clone());
    check_name(&node_name)?;
    Ok(NodeEnv {
        role,
        public_ip,
        master_ip,
        node_name: node_name.to_ascii_lowercase(),
        hostname,
        cloud_provider: get("PLANET_CLOUD_PROVIDER").unwrap_or("none").to_string(),
        join_token,
        taints: get("PLANET_NODE_TAINTS")
            .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    })
}

/// A node name becomes a DNS name in certificates and a Kubernetes object name.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        bail!("node name {name:?} is not a valid DNS name (letters, digits, '-' and '.', at most 63)");
    }
    Ok(())
}

pub fn load() -> Result<NodeEnv> {
    let path = crate::cluster::CONTAINER_ENV;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse(&text).with_context(|| format!("reading {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults_the_master_to_itself() {
        let e =
            parse("PLANET_ROLE=dev\nPLANET_MASTER_IP=\nPLANET_PUBLIC_IP=10.0.2.15\nPLANET_HOSTNAME=Demo-1\n").unwrap();
        assert_eq!(e.role, Role::Dev);
        assert_eq!(e.master_ip, e.public_ip);
        assert_eq!(e.node_name, "demo-1");
        assert_eq!(e.role.targets(), ["planet-master.target", "planet-node.target"]);
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            parse("PLANET_ROLE=boss\n").unwrap_err().to_string(),
            "PLANET_ROLE=\"boss\" is not master, node or dev"
        );
        let e = parse("PLANET_ROLE=node\nPLANET_PUBLIC_IP=10.0.0.2\n").unwrap_err();
        assert!(e.to_string().contains("PLANET_MASTER_IP"), "{e}");
        let e = parse("PLANET_ROLE=dev\nPLANET_PUBLIC_IP=10.0.0.2\nPLANET_NODE_NAME=a b\n").unwrap_err();
        assert!(e.to_string().contains("not a valid DNS name"), "{e}");
        let e = parse("PLANET_ROLE=dev\nPLANET_PUBLIC_IP=ten\n").unwrap_err();
        assert!(e.to_string().contains("not an IPv4"), "{e}");
    }
}
