//! OpenStack ConfigDrive (Ironic, Rackspace bare metal): a vfat or iso9660 filesystem labelled
//! `config-2`, a whole drive or a partition at the end of the boot disk, with
//! `openstack/latest/{meta_data.json,user_data,network_data.json}`.

use anyhow::{bail, Context as _, Result};
use planet_config::cloudconfig;
use planet_config::Source;

use super::{find_labelled, read_optional, with_mounted, Context, Datasource, Fetched};

pub struct ConfigDrive;

const LABELS: &[&str] = &["config-2", "CONFIG-2"];

impl Datasource for ConfigDrive {
    fn name(&self) -> &'static str {
        "configdrive"
    }
    fn source(&self) -> Source {
        Source::ConfigDrive
    }
    fn detect(&self, ctx: &Context) -> bool {
        !find_labelled(ctx, LABELS).is_empty()
    }
    fn fetch(&self, ctx: &Context) -> Result<Fetched> {
        let Some(fs) = find_labelled(ctx, LABELS).into_iter().next() else {
            bail!("no filesystem labelled config-2");
        };
        with_mounted(ctx, &fs, |root| {
            let dir = root.join("openstack/latest");
            if !dir.is_dir() {
                bail!("no openstack/latest directory");
            }
            let mut f = Fetched::default();
            if let Some(md) = read_optional(&dir.join("meta_data.json"))? {
                let md = cloudconfig::parse_openstack_meta_data(&String::from_utf8_lossy(&md))
                    .context("reading meta_data.json")?;
                f.config.hostname = md.local_hostname;
                f.instance_id = md.instance_id;
            }
            if let Some(ud) = read_optional(&dir.join("user_data"))? {
                f.apply_user_data(&ud)?;
            }
            if let Some(nd) = read_optional(&dir.join("network_data.json"))? {
                f.network = cloudconfig::parse_openstack_network(&String::from_utf8_lossy(&nd), &ctx.nics)
                    .context("reading network_data.json")?;
            }
            Ok(f)
        })
        .with_context(|| format!("reading the config drive on {}", fs.device))
    }
}
