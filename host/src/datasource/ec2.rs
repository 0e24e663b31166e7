//! EC2 instance metadata, IMDSv2: `PUT /latest/api/token` for a session token, then GETs with
//! it. Version 1 (no token) only when the token call is refused (403, 404, 405), never after a
//! timeout. Detected by DMI: vendor "Amazon EC2", or a product UUID starting with "ec2".

use anyhow::{bail, Result};
use planet_config::Source;

use super::{dmi, retry, Attempt, Context, Datasource, Fetched};
use crate::http;

pub struct Ec2;

pub const DEFAULT_URL: &str = "http://169.254.169.254";
const TOKEN_TTL: &str = "21600";

impl Datasource for Ec2 {
    fn name(&self) -> &'static str {
        "ec2"
    }
    fn source(&self) -> Source {
        Source::Ec2
    }
    fn needs_network(&self, _ctx: &Context) -> bool {
        true
    }
    fn identifies_platform(&self, ctx: &Context) -> bool {
        dmi(&ctx.sysfs, "sys_vendor").starts_with("Amazon EC2")
            || dmi(&ctx.sysfs, "product_name").starts_with("Amazon EC2")
            // Xen-based instances: vendor "Xen", version "4.11.amazon", UUID "ec2…".
            || (dmi(&ctx.sysfs, "product_version").contains("amazon")
                && dmi(&ctx.sysfs, "product_uuid").to_ascii_lowercase().starts_with("ec2"))
    }
    fn detect(&self, ctx: &Context) -> bool {
        self.identifies_platform(ctx) || dmi(&ctx.sysfs, "product_uuid").to_ascii_lowercase().starts_with("ec2")
    }
    fn fetch(&self, ctx: &Context) -> Result<Fetched> {
        let ep = http::Endpoint::parse(ctx.metadata_url.as_deref().unwrap_or(DEFAULT_URL), None)?;
        let token: Option<String> = retry(ctx, "PUT /latest/api/token", |t| {
            let r = http::request(
                &ep,
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)],
                t,
            )?;
            Ok(match r.status {
                200 => Attempt::Done(Some(r.text())),
                403..=405 => Attempt::Done(None),
                s => bail!("PUT /latest/api/token: HTTP {s}"),
            })
        })?;
        if token.is_none() {
            crate::event!("datasource notice", name = "ec2", note = "IMDSv2 token refused; using IMDSv1");
        }
        let get = |path: &str| -> Result<Option<Vec<u8>>> {
            retry(ctx, &format!("GET {path}"), |t| {
                let headers: Vec<(&str, &str)> =
                    token.as_deref().map(|tk| vec![("X-aws-ec2-metadata-token", tk)]).unwrap_or_default();
                let r = http::request(&ep, "GET", path, &headers, t)?;
                Ok(match r.status {
                    200 => Attempt::Done(Some(r.body)),
                    404 => Attempt::Done(None),
                    401 => Attempt::Fatal(anyhow::anyhow!("GET {path}: HTTP 401 (the IMDSv2 token was refused)")),
                    s => bail!("GET {path}: HTTP {s}"),
                })
            })
        };
        let text = |path: &str| -> Result<Option<String>> {
            Ok(get(path)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()).filter(|s| !s.is_empty()))
        };
        let mut f = Fetched { instance_id: text("/latest/meta-data/instance-id")?, ..Default::default() };
        f.config.public_ip = text("/latest/meta-data/local-ipv4")?;
        // Kubernetes' AWS provider names a Node by its private DNS name (what `local-hostname`
        // says): the Node name is that, so that the certificates made for it name the same
        // Node; the hostname is its first label.
        let local_hostname = text("/latest/meta-data/local-hostname")?;
        f.config.hostname = local_hostname.as_ref().map(|h| h.split('.').next().unwrap_or("").to_string());
        f.config.node_name = local_hostname.map(|h| h.to_ascii_lowercase());
        f.config.cloud_provider = Some("aws".into());
        if let Some(zone) = text("/latest/meta-data/placement/availability-zone")? {
            planet_config::set_env(&mut f.config.labels, "topology.kubernetes.io/zone".into(), zone);
        }
        if let Some(ud) = get("/latest/user-data")? {
            f.apply_user_data(&ud)?;
        }
        Ok(f)
    }
}
