//! NoCloud: a vfat or iso9660 filesystem labelled `cidata`/`CIDATA` on any disk or partition
//! (`user-data`, `meta-data`, `network-config`), or the same files over HTTP from
//! `ds=nocloud;s=URL/` on the command line.

use anyhow::{bail, Context as _, Result};
use planet_config::cloudconfig;
use planet_config::Source;

use super::{find_labelled, read_optional, retry, with_mounted, Attempt, Context, Datasource, Fetched};
use crate::http;

pub struct NoCloud;

const LABELS: &[&str] = &["cidata", "CIDATA"];

impl Datasource for NoCloud {
    fn name(&self) -> &'static str {
        "nocloud"
    }
    fn source(&self) -> Source {
        Source::NoCloud
    }
    fn needs_network(&self, ctx: &Context) -> bool {
        // Only the `ds=nocloud;s=URL` form; the local one is read before the network.
        ctx.nocloud_url.is_some()
    }
    fn detect(&self, ctx: &Context) -> bool {
        !find_labelled(ctx, LABELS).is_empty()
    }
    fn fetch(&self, ctx: &Context) -> Result<Fetched> {
        if let Some(url) = &ctx.nocloud_url {
            return fetch_url(ctx, url);
        }
        let Some(fs) = find_labelled(ctx, LABELS).into_iter().next() else {
            bail!("no filesystem labelled cidata or CIDATA");
        };
        with_mounted(ctx, &fs, |root| {
            files_to_config(
                ctx,
                read_optional(&root.join("user-data"))?,
                read_optional(&root.join("meta-data"))?,
                read_optional(&root.join("network-config"))?,
            )
        })
        .with_context(|| format!("reading the NoCloud seed on {}", fs.device))
    }
}

pub fn files_to_config(
    ctx: &Context,
    user_data: Option<Vec<u8>>,
    meta_data: Option<Vec<u8>>,
    network_config: Option<Vec<u8>>,
) -> Result<Fetched> {
    let mut f = Fetched::default();
    if let Some(md) = meta_data {
        let md = cloudconfig::parse_meta_data(&String::from_utf8_lossy(&md)).context("reading the meta-data")?;
        f.config.hostname = md.local_hostname;
        f.instance_id = md.instance_id;
    }
    if let Some(ud) = user_data {
        f.apply_user_data(&ud)?;
    }
    if let Some(nc) = network_config {
        let n =
            cloudconfig::parse_network_config(&String::from_utf8_lossy(&nc)).context("reading the network-config")?;
        f.network = n.resolve(&ctx.nics);
    }
    Ok(f)
}

fn fetch_url(ctx: &Context, url: &str) -> Result<Fetched> {
    let ep = http::Endpoint::parse(url.trim_end_matches('/'), None)?;
    let get = |name: &str| -> Result<Option<Vec<u8>>> {
        retry(ctx, &format!("GET {url}{name}"), |t| {
            let r = http::request(&ep, "GET", &format!("/{name}"), &[], t)?;
            Ok(match r.status {
                200 => Attempt::Done(Some(r.body)),
                404 => Attempt::Done(None),
                s => Attempt::Fatal(anyhow::anyhow!("GET {url}{name}: HTTP {s}")),
            })
        })
    };
    let ud = get("user-data")?;
    let md = get("meta-data")?;
    let nc = get("network-config")?;
    if ud.is_none() && md.is_none() {
        bail!("{url} has neither user-data nor meta-data");
    }
    files_to_config(ctx, ud, md, nc)
}
