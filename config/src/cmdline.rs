//! The kernel command line as a configuration source: `planet.role=dev planet.master_ip=… …`.
//! `planet.env` is refused here: the command line is readable by every pod (`/proc/cmdline`),
//! printed by the kernel on the console and copied into every later boot entry, so it must
//! never carry the credentials `env` holds. Env comes from user-data (`planet: env:`).
//! `planet.join_token` is refused for the same reason: the cluster's join secret belongs in
//! user-data (`planet: join_token:`) only.

use crate::{ConfigError, RawConfig};

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
                "env" => return Err(env_refused()),
                "join_token" => return Err(join_token_refused()),
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

    /// The command line with every `planet.env=` and `planet.join_token=` word removed (the
    /// rest as the kernel split it, quotes kept where a word needs them), for options copied
    /// into a new boot entry or image.
    pub fn without_secrets(line: &str) -> String {
        let secret = |w: &str| {
            ["planet.env", "planet.join_token"]
                .iter()
                .any(|k| w == *k || w.strip_prefix(k).is_some_and(|r| r.starts_with('=')))
        };
        split_cmdline(line)
            .into_iter()
            .filter(|w| !secret(w))
            .map(|w| if w.contains(char::is_whitespace) { format!("\"{w}\"") } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The last value of a host parameter (`param("slot")`).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The error for `planet.env` on the command line; it never quotes the values.
pub fn env_refused() -> ConfigError {
    ConfigError::Data {
        key: "planet.env".into(),
        reason: "is not accepted on the kernel command line: every pod can read /proc/cmdline and the kernel prints \
                 it on the console; put the variables in user-data (planet: env:, or planet-image seed --env) and \
                 remove planet.env= from the command line"
            .into(),
    }
}

/// The error for `planet.join_token` on the command line; it never quotes the value.
pub fn join_token_refused() -> ConfigError {
    ConfigError::Data {
        key: "planet.join_token".into(),
        reason: "is not accepted on the kernel command line: secrets do not belong on /proc/cmdline, which every \
                 process and pod can read and the kernel prints on the console; put it in user-data (planet: \
                 join_token:, or planet-image seed --join-token-file) and remove planet.join_token= from the \
                 command line"
            .into(),
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
             planet.cloud_provider=aws planet.hostname=n1 planet.node_name=node-1 \
             planet.init=/bin/systemd planet.public_ip=10.0.0.11 planet.ip=eth0:10.0.0.11/24:10.0.0.1 \
             planet.dns=1.1.1.1 planet.debug",
        )
        .unwrap();
        let mut c = c;
        // The join token comes from user-data, merged under the command line.
        c.config.join_token = Some(crate::SecretText::new("q4w8zt.m2x7c5v9b1n3k6j0"));
        assert_eq!(c.param("slot"), Some("a"));
        assert_eq!(c.param("debug"), Some(""));
        let v = c.config.validate(Source::Cmdline, "planet.").unwrap();
        assert_eq!(v.role, Role::Node);
        assert_eq!(v.master_ip.unwrap().to_string(), "10.0.0.10");
        assert_eq!(v.node_name.as_deref(), Some("node-1"));
        assert_eq!(v.init, "/bin/systemd");
        assert_eq!(v.network.addresses[0].iface, "eth0");
        assert_eq!(v.network.dns.len(), 1);
    }

    #[test]
    fn env_on_the_command_line_is_refused_without_echoing_it() {
        for line in ["planet.role=dev planet.env=PW=hunter2", "planet.env=PW=a,hunter2", "planet.env=\"PW=hunter2 x\""]
        {
            let err = CmdlineConfig::parse(line).unwrap_err().to_string();
            assert!(err.starts_with("planet.env is not accepted on the kernel command line"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn env_is_stripped_from_copied_options() {
        assert_eq!(
            CmdlineConfig::without_secrets(
                "console=ttyS0 planet.env=PW=hunter2 planet.slot=a \"planet.env=A=b c\" x=\"y z\" \
                 planet.join_token=abcdef.0123456789abcdef planet.join_token planet.join_tokens=1"
            ),
            "console=ttyS0 planet.slot=a \"x=y z\" planet.join_tokens=1"
        );
    }

    #[test]
    fn join_token_on_the_command_line_is_refused_without_echoing_it() {
        for line in [
            "planet.role=node planet.master_ip=10.0.0.1 planet.join_token=abcdef.0123456789abcdef",
            "planet.join_token=\"abcdef.0123456789abcdef\" planet.role=master",
            "planet.join_token=abcdef.bad",
        ] {
            let err = CmdlineConfig::parse(line).unwrap_err().to_string();
            assert!(err.starts_with("planet.join_token is not accepted on the kernel command line"), "{err}");
            assert!(err.contains("put it in user-data"), "{err}");
            assert!(!err.contains("abcdef"), "{err}");
        }
    }
}
