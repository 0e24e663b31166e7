//! Google Compute Engine metadata: `Metadata-Flavor: Google` on every request,
//! `instance/attributes/user-data`, hostname, the first interface's IP. Detected by DMI
//! vendor or product "Google".

use anyhow::{bail, Result};
use planet_config::Source;

use super::{dmi, retry, Attempt, Context, Datasource, Fetched};
use crate::http;

pub struct Gce;

/// metadata.google.internal, by address: there is no resolver this early.
pub const DEFAULT_URL: &str = "http://169.254.169.254";
const HOST: &str = "metadata.google.internal";
const BASE: &str = "/computeMetadata/v1/instance";

impl Datasource for Gce {
    fn name(&self) -> &'static str {
        "gce"
    }
    fn source(&self) -> Source {
        Source::Gce
    }
    fn needs_network(&self, _ctx: &Context) -> bool {
        true
    }
    fn identifies_platform(&self, ctx: &Context) -> bool {
        dmi(&ctx.sysfs, "sys_vendor").starts_with("Google") || dmi(&ctx.sysfs, "product_name").starts_with("Google")
    }
    fn detect(&self, ctx: &Context) -> bool {
        self.identifies_platform(ctx)
    }
    fn fetch(&self, ctx: &Context) -> Result<Fetched> {
        let ep = match &ctx.metadata_url {
            Some(u) => http::Endpoint::parse(u, None)?,
            None => http::Endpoint::parse(DEFAULT_URL, Some(HOST))?,
        };
        let get = |path: &str| -> Result<Option<String>> {
            let full = format!("{BASE}/{path}");
            retry(ctx, &format!("GET {full}"), |t| {
                let r = http::request(&ep, "GET", &full, &[("Metadata-Flavor", "Google")], t)?;
                Ok(match r.status {
                    200 => Attempt::Done(Some(String::from_utf8_lossy(&r.body).into_owned())),
                    404 => Attempt::Done(None),
                    s => bail!("GET {full}: HTTP {s}"),
                })
            })
        };
        let mut f = Fetched { instance_id: get("id")?.map(|s| s.trim().to_string()), ..Default::default() };
        f.config.hostname = get("hostname")?.map(|h| h.trim().split('.').next().unwrap_or("").to_string());
        f.config.public_ip = get("network-interfaces/0/ip")?.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        f.config.cloud_provider = Some("gce".into());
        if let Some(ud) = get("attributes/user-data")? {
            f.apply_user_data(ud.as_bytes())?;
        }
        Ok(f)
    }
}
