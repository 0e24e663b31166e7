//! The kernel command line as a configuration source: `planet.role=dev planet.env=K=V,K2=V2 …`.

use crate::{set_env, ConfigError, RawConfig};

/// The host parameter pinning the boot disk: `planet.disk_guid=<GPT disk GUID>`. The builder
/// puts it on every boot entry of an image (the GUID its manifest records as `disk_guid`);
/// planet-init then boots only from the disk carrying that GUID, whatever else is attached.
pub const DISK_GUID_PARAM: &str = "disk_guid";

/// Splits a command line as the kernel does: on whitespace, with double quotes grouping (the
/// quotes themselves are dropped).
pub fn split_cmdline(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// What the command line says: the configuration keys plus the other `planet.*` parameters,
/// which belong to the host (`planet.slot`, timeouts, …) and are returned for it to interpret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdlineConfig {
    pub config: RawConfig,
    /// `planet.*` words that are not configuration keys, without the prefix: (`slot`, `a`).
    pub params: Vec<(String, String)>,
}

impl CmdlineConfig {
    pub fn parse(line: &str) -> Result<CmdlineConfig, ConfigError> {
        let mut out = CmdlineConfig::default();
        for word in split_cmdline(line) {
            let Some(rest) = word.strip_prefix("planet.") else {
                continue;
            };
            let (key, value) = match rest.split_once('=') {
                Some((k, v)) => (k, v.to_string()),
                None => (rest, String::new()),
            };
            let c = &mut out.config;
            match key {
                "role" => c.role = Some(value),
                "master_ip" => c.master_ip = Some(value),
                "public_ip" => c.public_ip = Some(value),
                "cloud_provider" => c.cloud_provider = Some(value),
                "hostname" => c.hostname = Some(value),
                "node_name" => c.node_name = Some(value),
                "init" => c.init = Some(value),
                "env" => {
                    for item in value.split(',').filter(|i| !i.is_empty()) {
                        let (k, v) = item
                            .split_once('=')
                            .ok_or_else(|| ConfigError::invalid("planet.env", item, "expected K=V[,K2=V2…]"))?;
                        set_env(&mut c.env, k.to_string(), v.to_string());
                    }
                }
                "ip" => {
                    let a = value.parse().map_err(|e: String| ConfigError::invalid("planet.ip", &value, e))?;
                    c.network.addresses.push(a);
                }
                "dns" => {
                    for item in value.split(',').filter(|i| !i.is_empty()) {
                        let ip = item.parse().map_err(|e: std::net::AddrParseError| {
                            ConfigError::invalid("planet.dns", item, e.to_string())
                        })?;
                        c.network.dns.push(ip);
                    }
                }
                other => out.params.push((other.to_string(), value)),
            }
        }
        Ok(out)
    }

    /// The last value of a host parameter (`param("slot")`).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, Source};

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split_cmdline("console=ttyS0  planet.env=\"A=b c\",D=e quiet\n"),
            vec!["console=ttyS0", "planet.env=A=b c,D=e", "quiet"]
        );
        assert_eq!(split_cmdline(""), Vec::<String>::new());
    }

    #[test]
    fn parses_every_key() {
        let c = CmdlineConfig::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 planet.slot=a planet.role=node planet.master_ip=10.0.0.10 \
             planet.cloud_provider=aws planet.env=K=V,K2=x=y planet.hostname=n1 planet.node_name=node-1 \
             planet.init=/bin/systemd planet.public_ip=10.0.0.11 planet.ip=eth0:10.0.0.11/24:10.0.0.1 \
             planet.dns=1.1.1.1 planet.debug",
        )
        .unwrap();
        assert_eq!(c.param("slot"), Some("a"));
        assert_eq!(c.param("debug"), Some(""));
        let v = c.config.validate(Source::Cmdline, "planet.").unwrap();
        assert_eq!(v.role, Role::Node);
        assert_eq!(v.master_ip.unwrap().to_string(), "10.0.0.10");
        assert_eq!(v.env, vec![("K".into(), "V".into()), ("K2".into(), "x=y".into())]);
        assert_eq!(v.node_name.as_deref(), Some("node-1"));
        assert_eq!(v.init, "/bin/systemd");
        assert_eq!(v.network.addresses[0].iface, "eth0");
        assert_eq!(v.network.dns.len(), 1);
    }

    #[test]
    fn bad_env_names_the_key() {
        let err = CmdlineConfig::parse("planet.env=novalue").unwrap_err();
        assert_eq!(err.to_string(), "planet.env=\"novalue\" is invalid: expected K=V[,K2=V2…]");
    }
}
