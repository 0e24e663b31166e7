//! The Planet configuration: one struct filled from the kernel command line today and from
//! cloud-init datasources later.
//!
//! Every source fills a [`RawConfig`] (all fields optional, so sources can be layered: a
//! command-line override on top of a datasource); [`RawConfig::validate`] turns it into the
//! [`PlanetConfig`] the host acts on, with errors that name the offending key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

pub mod app;
pub mod bootentry;
pub mod cloudconfig;
mod cmdline;
pub mod contract;
pub mod glob;
mod jointoken;
pub mod update;
pub use cmdline::{env_refused, join_token_refused, split_cmdline, CmdlineConfig, DISK_GUID_PARAM};
pub use jointoken::{JoinToken, SecretText, JOIN_TOKEN_HOWTO};
pub use update::{RawUpdate, UpdateConfig};

/// Whether `v` is a valid release or app version: 1-64 characters of A-Z a-z 0-9 . - _ + ~,
/// starting with a letter or a digit (bundles, boot entries and apps all use this rule).
pub fn is_version_text(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_+~".contains(&b))
        && v.as_bytes()[0].is_ascii_alphanumeric()
}

/// Why a configuration was rejected; each variant names the key so the console message points
/// the operator at the line to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key} is required{why}")]
    Missing { key: &'static str, why: &'static str },
    #[error("{key}={value:?} is invalid: {reason}")]
    Invalid { key: String, value: String, reason: String },
    /// Cloud-init data that does not parse or has the wrong shape; `reason` never quotes
    /// `env` values.
    #[error("{}", data_message(key, reason))]
    Data { key: String, reason: String },
}

/// `user-data is not valid YAML…`, `planet.role: expected a string…`.
fn data_message(key: &str, reason: &str) -> String {
    let verb = ["is ", "has ", "must ", "only "].iter().any(|v| reason.starts_with(v));
    format!("{key}{}{reason}", if verb { " " } else { ": " })
}

impl ConfigError {
    fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.to_string(), value: value.to_string(), reason: reason.into() }
    }
}

/// The part a machine plays in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Node,
    /// Master and node on one machine.
    Dev,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Node => "node",
            Role::Dev => "dev",
        }
    }

    /// Whether this machine runs the control plane (and so is its own master).
    pub fn is_master(&self) -> bool {
        matches!(self, Role::Master | Role::Dev)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(Role::Master),
            "node" => Ok(Role::Node),
            "dev" => Ok(Role::Dev),
            _ => Err("expected master, node or dev".into()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    #[default]
    None,
    Aws,
    Gce,
}

impl CloudProvider {
    pub fn as_str(&self) -> &'static str {
        match self {
            CloudProvider::None => "none",
            CloudProvider::Aws => "aws",
            CloudProvider::Gce => "gce",
        }
    }
}

impl FromStr for CloudProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "none" => Ok(CloudProvider::None),
            "aws" => Ok(CloudProvider::Aws),
            "gce" => Ok(CloudProvider::Gce),
            _ => Err("expected aws, gce or none".into()),
        }
    }
}

impl fmt::Display for CloudProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the configuration came from, printed so operators know which input to edit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    #[default]
    Cmdline,
    NoCloud,
    ConfigDrive,
    Ec2,
    Gce,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Cmdline => "cmdline",
            Source::NoCloud => "nocloud",
            Source::ConfigDrive => "configdrive",
            Source::Ec2 => "ec2",
            Source::Gce => "gce",
        })
    }
}

/// A static IPv4 address for one interface (instead of DHCP on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticAddress {
    pub iface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl FromStr for StaticAddress {
    type Err = String;
    /// `IFACE:ADDR/PREFIX[:GATEWAY]`, e.g. `eth0:10.0.0.5/24:10.0.0.1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let iface = parts.next().filter(|i| !i.is_empty()).ok_or("expected IFACE:ADDR/PREFIX[:GATEWAY]")?;
        let cidr = parts.next().ok_or("expected IFACE:ADDR/PREFIX[:GATEWAY]")?;
        let (addr, prefix) = cidr.split_once('/').ok_or("address needs a /PREFIX")?;
        let address = addr.parse::<Ipv4Addr>().map_err(|e| format!("address {addr:?}: {e}"))?;
        let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= 32).ok_or("prefix must be 0..=32")?;
        let gateway = match parts.next() {
            Some(g) if !g.is_empty() => Some(g.parse::<Ipv4Addr>().map_err(|e| format!("gateway {g:?}: {e}"))?),
            _ => None,
        };
        if parts.next().is_some() {
            return Err("too many ':'-separated fields".into());
        }
        Ok(StaticAddress { iface: iface.to_string(), address, prefix, gateway })
    }
}

/// Static network settings; interfaces not listed here use DHCP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    pub addresses: Vec<StaticAddress>,
    pub dns: Vec<IpAddr>,
}

/// Configuration as read from one source, nothing checked yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    pub role: Option<String>,
    pub master_ip: Option<String>,
    pub public_ip: Option<String>,
    pub cloud_provider: Option<String>,
    /// In the order given; later duplicates replace earlier values.
    pub env: Vec<(String, String)>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub init: Option<String>,
    pub network: NetworkConfig,
    /// `planet.cloud_config`: the cloud provider's own configuration file, passed through.
    pub cloud_config: Option<String>,
    /// Kubernetes node labels, in order; later duplicates replace earlier values.
    pub labels: Vec<(String, String)>,
    /// Kubernetes node taints (`key=value:Effect`).
    pub taints: Vec<String>,
    /// Extra volumes (`HOST:CONTAINER`).
    pub volumes: Vec<String>,
    /// The update agent (`planet: update:`).
    pub update: RawUpdate,
    /// `planet: join_token:` (user-data only; the command line refuses it).
    pub join_token: Option<SecretText>,
}

/// The default init of a non-release rootfs.
pub const DEFAULT_INIT: &str = "/sbin/init";

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanetConfig {
    pub role: Role,
    pub master_ip: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub cloud_provider: CloudProvider,
    pub env: Vec<(String, String)>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    /// Absolute path inside the rootfs of the init the built-in launcher runs.
    pub init: String,
    pub network: NetworkConfig,
    pub cloud_config: Option<String>,
    pub labels: Vec<(String, String)>,
    pub taints: Vec<String>,
    pub volumes: Vec<String>,
    pub update: UpdateConfig,
    pub source: Source,
    /// The cluster join secret; `None` for `dev`, which has nobody to join.
    pub join_token: Option<JoinToken>,
}

impl RawConfig {
    /// Layers `over` on top of `self`: every field `over` sets wins; env entries are merged by
    /// key.
    pub fn merge(mut self, over: RawConfig) -> RawConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(role, master_ip, public_ip, cloud_provider, hostname, node_name, init, cloud_config, join_token);
        for (k, v) in over.env {
            set_env(&mut self.env, k, v);
        }
        for (k, v) in over.labels {
            set_env(&mut self.labels, k, v);
        }
        if !over.taints.is_empty() {
            self.taints = over.taints;
        }
        if !over.volumes.is_empty() {
            self.volumes = over.volumes;
        }
        self.network.addresses.extend(over.network.addresses);
        self.network.dns.extend(over.network.dns);
        self.update.merge(over.update);
        self
    }

    /// Checks every field; `key_prefix` is how keys are spelled in this source's error messages
    /// (`planet.` for the command line, `planet.` in cloud-config too).
    pub fn validate(&self, source: Source, key_prefix: &str) -> Result<PlanetConfig, ConfigError> {
        let key = |k: &str| format!("{key_prefix}{k}");
        let role_key = match key_prefix {
            "planet." => "planet.role",
            _ => "role",
        };
        let role_text =
            self.role.as_deref().ok_or(ConfigError::Missing { key: role_key, why: " (master, node or dev)" })?;
        let role = role_text.parse::<Role>().map_err(|e| ConfigError::invalid(&key("role"), role_text, e))?;
        let ip = |name: &str, v: &Option<String>| -> Result<Option<IpAddr>, ConfigError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(t) => {
                    t.parse::<IpAddr>().map(Some).map_err(|e| ConfigError::invalid(&key(name), t, e.to_string()))
                }
            }
        };
        let master_ip = ip("master_ip", &self.master_ip)?;
        let public_ip = ip("public_ip", &self.public_ip)?;
        if role == Role::Node && master_ip.is_none() {
            return Err(ConfigError::Missing {
                key: if key_prefix == "planet." { "planet.master_ip" } else { "master_ip" },
                why: " for role node",
            });
        }
        let join_token = match (&self.join_token, role) {
            // A dev machine is its own cluster: nobody joins it, the token is ignored.
            (None, _) | (_, Role::Dev) => None,
            // The reason says what is wrong; the value is never part of the error.
            (Some(t), _) => Some(JoinToken::parse(t.reveal()).map_err(|why| ConfigError::Data {
                key: key("join_token"),
                reason: format!("{why}: {JOIN_TOKEN_HOWTO}"),
            })?),
        };
        if role == Role::Node && join_token.is_none() {
            return Err(ConfigError::Missing {
                key: if key_prefix == "planet." { "planet.join_token" } else { "join_token" },
                why: " for role node (the node proves with it that it may join the master): put the master's token \
                      in this node's user-data (planet: join_token:), or make a new one for the master and every \
                      node with `planet-image join-token`",
            });
        }
        let cloud_provider = match self.cloud_provider.as_deref() {
            None => CloudProvider::None,
            Some(t) => t.parse().map_err(|e: String| ConfigError::invalid(&key("cloud_provider"), t, e))?,
        };
        for (k, v) in &self.env {
            if !valid_env_key(k) {
                return Err(ConfigError::invalid(&key("env"), k, "variable names are [A-Za-z_][A-Za-z0-9_]*"));
            }
            // planet-init sets these from the planet: keys; a user's copy written after them
            // would replace them (PLANET_ROLE, PLANET_JOIN_TOKEN=…) in the container.
            if k.starts_with("PLANET_") {
                return Err(ConfigError::Data {
                    key: key(&format!("env.{k}")),
                    reason: "is refused: PLANET_* variables are set by planet-init from the planet: keys (role, \
                             master_ip, join_token, …); set that key instead, or rename the variable"
                        .into(),
                });
            }
            // One line per variable in /etc/container-environment, and `K=V,K2=V2` for Planet:
            // either separator inside a value would add a variable. The value is not quoted.
            if v.contains(LIST_BREAKERS) {
                return Err(ConfigError::Data {
                    key: key(&format!("env.{k}")),
                    reason: "has a newline, carriage return, NUL or comma in its value, which would split it into \
                             more variables; encode it (base64, say)"
                        .into(),
                });
            }
        }
        for (k, v) in &self.labels {
            if v.contains(LIST_BREAKERS) {
                return Err(ConfigError::invalid(
                    &key(&format!("labels.{k}")),
                    v,
                    "a newline or comma in a label value",
                ));
            }
        }
        for t in &self.taints {
            if t.contains(LIST_BREAKERS) {
                return Err(ConfigError::invalid(&key("taints"), t, "a newline or comma in a taint"));
            }
        }
        for (name, v) in [("hostname", &self.hostname), ("node_name", &self.node_name)] {
            if let Some(h) = v {
                if !valid_hostname(h) {
                    return Err(ConfigError::invalid(
                        &key(name),
                        h,
                        "expected 1-253 characters of a-z, 0-9, '-' and '.', labels not starting or ending with '-'",
                    ));
                }
            }
        }
        for v in &self.volumes {
            match v.split_once(':') {
                Some((h, c)) if h.starts_with('/') && c.starts_with('/') => {}
                _ => return Err(ConfigError::invalid(&key("volumes"), v, "expected /HOST/PATH:/CONTAINER/PATH")),
            }
        }
        for t in &self.taints {
            if !t.contains(':') || t.starts_with([':', '=']) {
                return Err(ConfigError::invalid(&key("taints"), t, "expected KEY[=VALUE]:EFFECT"));
            }
        }
        for (k, _) in &self.labels {
            if k.is_empty() || k.len() > 253 || k.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(&key("labels"), k, "not a label key"));
            }
        }
        let init = self.init.clone().unwrap_or_else(|| DEFAULT_INIT.to_string());
        if !init.starts_with('/') || init.contains('\0') {
            return Err(ConfigError::invalid(&key("init"), &init, "must be an absolute path"));
        }
        let update = self.update.validate(key_prefix)?;
        Ok(PlanetConfig {
            role,
            master_ip,
            public_ip,
            cloud_provider,
            env: self.env.clone(),
            hostname: self.hostname.clone(),
            node_name: self.node_name.clone(),
            init,
            network: self.network.clone(),
            cloud_config: self.cloud_config.clone(),
            labels: self.labels.clone(),
            taints: self.taints.clone(),
            volumes: self.volumes.clone(),
            update,
            source,
            join_token,
        })
    }
}

/// Sets `k` in an ordered env list, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, String)>, k: String, v: String) {
    match env.iter_mut().find(|(ek, _)| *ek == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    }
}

/// Characters that would split an entry of the newline- and comma-separated lists planet-init
/// hands on (`/etc/container-environment`, `PLANET_ENV`, `PLANET_NODE_LABELS`).
const LIST_BREAKERS: [char; 4] = ['\n', '\r', '\0', ','];

fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 1123 host names (lower and upper case accepted, as the kernel does).
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl PlanetConfig {
    /// The master's address: given, else this machine's own for a master (as the Planet
    /// launcher does).
    pub fn effective_master_ip(&self) -> Option<IpAddr> {
        self.master_ip.or(if self.role.is_master() { self.public_ip } else { None })
    }

    /// `KEY=VALUE` lines for `/etc/container-environment`: the PLANET_* settings then the
    /// user's env, in order. Unknown values are written empty so scripts can test them.
    pub fn container_environment(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        };
        line("PLANET_ROLE", self.role.as_str());
        line("PLANET_MASTER_IP", &opt(self.effective_master_ip().map(|i| i.to_string())));
        line("PLANET_PUBLIC_IP", &opt(self.public_ip.map(|i| i.to_string())));
        line("PLANET_CLOUD_PROVIDER", self.cloud_provider.as_str());
        line("PLANET_HOSTNAME", &opt(self.hostname.clone()));
        line("PLANET_NODE_NAME", &opt(self.node_name.clone().or_else(|| self.hostname.clone())));
        // The file is 0600: this is the one place the join token is written.
        line("PLANET_JOIN_TOKEN", self.join_token.as_ref().map_or("", JoinToken::reveal));
        if !self.labels.is_empty() {
            line(
                "PLANET_NODE_LABELS",
                &self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            );
        }
        if !self.taints.is_empty() {
            line("PLANET_NODE_TAINTS", &self.taints.join(","));
        }
        // The provider's own file is several lines (an INI file for AWS and GCE): base64 keeps
        // it on one; planet-node writes it out, 0600, for the components.
        if let Some(text) = &self.cloud_config {
            use base64::Engine;
            line("PLANET_CLOUD_CONFIG", &base64::engine::general_purpose::STANDARD.encode(text));
        }
        for (k, v) in &self.env {
            line(k, v);
        }
        out
    }

    /// Masked, single-line `key=value` rendering for the console: env values and the join
    /// token never appear (`join_token=set`).
    pub fn log_fields(&self) -> Vec<(&'static str, String)> {
        let none = || "none".to_string();
        let mut f = vec![
            ("role", self.role.to_string()),
            ("master_ip", self.effective_master_ip().map(|i| i.to_string()).unwrap_or_else(none)),
            ("provider", self.cloud_provider.to_string()),
        ];
        if let Some(ip) = self.public_ip {
            f.push(("public_ip", ip.to_string()));
        }
        if let Some(h) = &self.hostname {
            f.push(("hostname", h.clone()));
        }
        if let Some(n) = &self.node_name {
            f.push(("node_name", n.clone()));
        }
        if self.join_token.is_some() {
            f.push(("join_token", "set".to_string()));
        }
        if !self.env.is_empty() {
            f.push(("env", masked_env(&self.env)));
        }
        f.push(("init", self.init.clone()));
        f.push(("source", self.source.to_string()));
        f
    }
}

/// `K=***,K2=***`: names are useful in logs, values may be credentials.
pub fn masked_env(env: &[(String, String)]) -> String {
    env.iter().map(|(k, _)| format!("{k}=***")).collect::<Vec<_>>().join(",")
}

impl fmt::Display for PlanetConfig {
    /// The same masked fields as [`PlanetConfig::log_fields`], space separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.log_fields() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(role: &str) -> RawConfig {
        RawConfig { role: Some(role.into()), ..Default::default() }
    }

    const TOKEN: &str = "q4w8zt.m2x7c5v9b1n3k6j0";

    #[test]
    fn join_token_is_required_for_nodes_only() {
        let mut r = raw("node");
        r.master_ip = Some("10.0.0.1".into());
        let err = r.validate(Source::NoCloud, "planet.").unwrap_err().to_string();
        assert!(err.starts_with("planet.join_token is required for role node"), "{err}");
        assert!(err.contains("planet-image join-token") && err.contains("user-data"), "{err}");
        // A master without one runs, nodes just cannot join it.
        let m = raw("master").validate(Source::NoCloud, "planet.").unwrap();
        assert_eq!(m.join_token, None);
        assert!(m.container_environment().contains("\nPLANET_JOIN_TOKEN=\n"));
        assert!(!m.to_string().contains("join_token"), "{m}");
        let mut r = raw("master");
        r.join_token = Some(SecretText::new(TOKEN));
        let m = r.validate(Source::NoCloud, "planet.").unwrap();
        assert_eq!(m.join_token.as_ref().map(JoinToken::reveal), Some(TOKEN));
        // dev ignores it, even a malformed one.
        let mut r = raw("dev");
        r.join_token = Some(SecretText::new("not a token"));
        let d = r.validate(Source::NoCloud, "planet.").unwrap();
        assert_eq!(d.join_token, None);
    }

    #[test]
    fn join_token_never_shows_in_log_fields_or_errors() {
        let mut r = raw("node");
        r.master_ip = Some("10.0.0.1".into());
        r.join_token = Some(SecretText::new(TOKEN));
        let c = r.validate(Source::NoCloud, "planet.").unwrap();
        let fields = c.log_fields();
        assert!(fields.contains(&("join_token", "set".to_string())), "{fields:?}");
        assert!(!format!("{fields:?} {c} {c:?} {r:?}").contains("m2x7c5"), "{fields:?}");
        for bad in
            ["q4w8zt.m2x7c5v9b1n3k6j", "q4w8zt.m2x7c5V9b1n3k6j0", "q4w8ztm2x7c5v9b1n3k6j0", "q4w8zt..m2x7c5v9b1n3k6j0"]
        {
            r.join_token = Some(SecretText::new(bad));
            let e = r.validate(Source::NoCloud, "planet.").unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(text.starts_with("planet.join_token "), "{text}");
            assert!(!text.contains("m2x7c5") && !text.contains("q4w8zt"), "{text}");
        }
    }

    #[test]
    fn planet_variables_are_not_user_env() {
        for k in ["PLANET_JOIN_TOKEN", "PLANET_ROLE", "PLANET_ANYTHING"] {
            let mut r = raw("master");
            r.env = vec![(k.into(), "hunter2".into())];
            let e = r.validate(Source::NoCloud, "planet.").unwrap_err().to_string();
            assert!(e.starts_with(&format!("planet.env.{k} is refused")), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut r = raw("master");
        r.env = vec![("PLANETARY".into(), "x".into())];
        assert!(r.validate(Source::NoCloud, "planet.").is_ok());
    }

    #[test]
    fn roles_are_validated_with_the_key_named() {
        assert_eq!(raw("dev").validate(Source::Cmdline, "planet.").unwrap().role, Role::Dev);
        let err = raw("boss").validate(Source::Cmdline, "planet.").unwrap_err();
        assert!(err.to_string().starts_with("planet.role=\"boss\" is invalid"), "{err}");
        let err = RawConfig::default().validate(Source::Cmdline, "planet.").unwrap_err();
        assert_eq!(err.to_string(), "planet.role is required (master, node or dev)");
    }

    #[test]
    fn node_requires_master_ip() {
        let err = raw("node").validate(Source::Cmdline, "planet.").unwrap_err();
        assert_eq!(err.to_string(), "planet.master_ip is required for role node");
        let mut r = raw("node");
        r.master_ip = Some("10.0.0.1".into());
        r.join_token = Some(SecretText::new(TOKEN));
        assert!(r.validate(Source::Cmdline, "planet.").is_ok());
        r.master_ip = Some("10.0.0".into());
        let err = r.validate(Source::Cmdline, "planet.").unwrap_err();
        assert!(err.to_string().starts_with("planet.master_ip=\"10.0.0\""), "{err}");
    }

    #[test]
    fn provider_hostname_env_and_init_are_checked() {
        let mut r = raw("master");
        r.cloud_provider = Some("azure".into());
        assert!(r.validate(Source::Cmdline, "planet.").unwrap_err().to_string().contains("planet.cloud_provider"));
        let mut r = raw("master");
        r.hostname = Some("-bad".into());
        assert!(r.validate(Source::Cmdline, "planet.").unwrap_err().to_string().contains("planet.hostname"));
        let mut r = raw("master");
        r.env = vec![("1X".into(), "v".into())];
        assert!(r.validate(Source::Cmdline, "planet.").unwrap_err().to_string().contains("planet.env"));
        let mut r = raw("master");
        r.init = Some("sbin/init".into());
        assert!(r.validate(Source::Cmdline, "planet.").unwrap_err().to_string().contains("planet.init"));
    }

    #[test]
    fn env_values_cannot_add_variables() {
        for bad in ["x\nPLANET_ROLE=master", "a,B=c", "x\r", "x\0y"] {
            let mut r = raw("dev");
            r.env = vec![("TOKEN".into(), format!("hunter2{bad}"))];
            let e = r.validate(Source::NoCloud, "planet.").unwrap_err().to_string();
            assert!(e.starts_with("planet.env.TOKEN has a newline"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut r = raw("dev");
        r.labels = vec![("zone".into(), "a,b".into())];
        assert!(r.validate(Source::NoCloud, "planet.").unwrap_err().to_string().contains("planet.labels.zone"));
        let mut r = raw("dev");
        r.taints = vec!["a=b:NoSchedule\nc=d:NoExecute".into()];
        assert!(r.validate(Source::NoCloud, "planet.").unwrap_err().to_string().contains("planet.taints"));
        let mut r = raw("dev");
        r.env = vec![("K".into(), "a=b c;d'e\"f".into())];
        assert!(r.validate(Source::NoCloud, "planet.").is_ok());
    }

    #[test]
    fn printing_masks_env_values() {
        let mut r = raw("dev");
        r.env = vec![("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into()), ("A".into(), "b".into())];
        r.public_ip = Some("10.0.2.15".into());
        let c = r.validate(Source::Cmdline, "planet.").unwrap();
        let text = c.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            text,
            "role=dev master_ip=10.0.2.15 provider=none public_ip=10.0.2.15 env=AWS_SECRET_ACCESS_KEY=***,A=*** \
             init=/sbin/init source=cmdline"
        );
    }

    #[test]
    fn container_environment_lists_planet_keys_then_env() {
        let mut r = raw("node");
        r.master_ip = Some("10.0.0.10".into());
        r.hostname = Some("n1".into());
        r.cloud_provider = Some("aws".into());
        r.join_token = Some(SecretText::new(TOKEN));
        r.labels = vec![("zone".into(), "a".into())];
        r.env = vec![("K".into(), "V".into()), ("K2".into(), "a=b".into())];
        r.cloud_config = Some("[Global]\nZone=us-east-1a\n".into());
        let c = r.validate(Source::Cmdline, "planet.").unwrap();
        assert_eq!(
            c.container_environment(),
            format!(
                "PLANET_ROLE=node\nPLANET_MASTER_IP=10.0.0.10\nPLANET_PUBLIC_IP=\nPLANET_CLOUD_PROVIDER=aws\n\
                 PLANET_HOSTNAME=n1\nPLANET_NODE_NAME=n1\nPLANET_JOIN_TOKEN={TOKEN}\nPLANET_NODE_LABELS=zone=a\n\
                 PLANET_CLOUD_CONFIG=W0dsb2JhbF0KWm9uZT11cy1lYXN0LTFhCg==\nK=V\nK2=a=b\n"
            )
        );
    }

    #[test]
    fn merge_prefers_the_overlay() {
        let mut base = raw("node");
        base.env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
        let mut over = RawConfig { role: Some("master".into()), ..Default::default() };
        over.env = vec![("B".into(), "3".into())];
        let m = base.merge(over);
        assert_eq!(m.role.as_deref(), Some("master"));
        assert_eq!(m.env, vec![("A".into(), "1".into()), ("B".into(), "3".into())]);
    }

    #[test]
    fn static_address_parses() {
        let s: StaticAddress = "eth0:10.0.0.5/24:10.0.0.1".parse().unwrap();
        assert_eq!(s.prefix, 24);
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert!("eth0:10.0.0.5".parse::<StaticAddress>().is_err());
        assert!("eth0:10.0.0.5/33".parse::<StaticAddress>().is_err());
    }
}
