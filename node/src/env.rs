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
    /// The systemd targets this role starts. Every role runs a kubelet (`planet-node.target`):
    /// a master's registers its Node tainted `NoSchedule`, so the cluster sees it but runs no
    /// workloads there.
    pub fn targets(self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.is_master() {
            t.push("planet-master.target");
        }
        t.push("planet-node.target");
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
    /// The cloud provider's own configuration file (`planet: cloud_config:`), if given.
    pub cloud_config: Option<String>,
    /// The operator's `env:` (every key not `PLANET_*`): the cloud provider's credentials.
    pub operator_env: OperatorEnv,
}

/// The operator's `env:` lines, as written. Its values are credentials: `Debug` shows the keys
/// only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OperatorEnv(pub Vec<(String, String)>);

impl OperatorEnv {
    /// `KEY=VALUE` lines, for a systemd `EnvironmentFile=`.
    pub fn lines(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

impl std::fmt::Debug for OperatorEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| format!("{k}=…"))).finish()
    }
}

/// Parses the file's text. Unknown keys are ignored (they are the operator's `env:`).
pub fn parse(text: &str) -> Result<NodeEnv> {
    let pairs = || text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim(), v));
    let get = |key: &str| -> Option<&str> {
        pairs().filter(|(k, _)| *k == key).map(|(_, v)| v.trim()).next_back().filter(|v| !v.is_empty())
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
        cloud_config: get("PLANET_CLOUD_CONFIG")
            .map(|b| {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .context("PLANET_CLOUD_CONFIG is not base64 (planet-init writes it so)")?;
                String::from_utf8(bytes).context("PLANET_CLOUD_CONFIG (planet: cloud_config:) is not UTF-8 text")
            })
            .transpose()?,
        operator_env: OperatorEnv(
            pairs()
                .filter(|(k, _)| !k.is_empty() && !k.starts_with("PLANET_") && !k.starts_with('#'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
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
    fn the_cloud_config_and_the_operators_env_are_read_and_never_shown() {
        let e = parse(
            "PLANET_ROLE=dev\nPLANET_PUBLIC_IP=10.0.2.15\nPLANET_CLOUD_PROVIDER=aws\n\
             PLANET_CLOUD_CONFIG=W0dsb2JhbF0KWm9uZT11cy1lYXN0LTFhCg==\nAWS_ACCESS_KEY_ID=AKIDEXAMPLE\n\
             AWS_SECRET_ACCESS_KEY=s3cr3t=x\n",
        )
        .unwrap();
        assert_eq!(e.cloud_config.as_deref(), Some("[Global]\nZone=us-east-1a\n"));
        assert_eq!(e.operator_env.lines(), "AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=s3cr3t=x\n");
        let shown = format!("{e:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("s3cr3t"), "{shown}");
        let bad = parse("PLANET_ROLE=dev\nPLANET_PUBLIC_IP=10.0.2.15\nPLANET_CLOUD_CONFIG=%%%\n").unwrap_err();
        assert!(format!("{bad:#}").contains("PLANET_CLOUD_CONFIG"), "{bad:#}");
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
