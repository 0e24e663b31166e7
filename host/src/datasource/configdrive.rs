//! OpenStack ConfigDrive (Ironic, Rackspace bare metal): a vfat or iso9660 filesystem labelled
//! `config-2`, a whole drive or a partition at the end of the boot disk, with
//! `openstack/latest/{meta_data.json,user_data,network_data.json}`.

use std::path::Path;

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
        with_mounted(ctx, &fs, |root| read_drive(ctx, root))
            .with_context(|| format!("reading the config drive on {}", fs.device))
    }
}

/// The drive's files under `root`: the mounted filesystem, or in tests a plain directory.
fn read_drive(ctx: &Context, root: &Path) -> Result<Fetched> {
    let dir = root.join("openstack/latest");
    if !dir.is_dir() {
        bail!("no openstack/latest directory");
    }
    let mut f = Fetched::default();
    if let Some(md) = read_optional(&dir.join("meta_data.json"))? {
        let md =
            cloudconfig::parse_openstack_meta_data(&String::from_utf8_lossy(&md)).context("reading meta_data.json")?;
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use planet_config::cloudconfig::NicInfo;
    use planet_config::StaticAddress;

    use super::super::testserver::ctx;
    use super::*;

    const META_DATA: &str =
        r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "cd-1.novalocal", "name": "cd-1"}"#;
    const USER_DATA: &str = "#cloud-config\nplanet:\n  role: node\n  master_ip: 10.20.0.2\n";
    const NETWORK_DATA: &str = r#"{
        "links": [{"id": "tap1", "type": "phy", "ethernet_mac_address": "FA:16:3E:00:00:02"}],
        "networks": [{"id": "n0", "type": "ipv4", "link": "tap1", "ip_address": "10.20.0.5",
                      "netmask": "255.255.255.0",
                      "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.20.0.1"}]}],
        "services": [{"type": "dns", "address": "10.20.0.3"}]
    }"#;

    /// A drive's root with `openstack/latest/` holding `files`, and a context with two NICs.
    fn drive(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Context) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap().join("drive");
        std::fs::create_dir_all(root.join("openstack/latest")).unwrap();
        for (name, text) in files {
            std::fs::write(root.join("openstack/latest").join(name), text).unwrap();
        }
        let mut c = ctx(tmp.path(), "http://127.0.0.1:1", Duration::from_secs(1));
        c.nics = vec![
            NicInfo { name: "eth0".into(), mac: "fa:16:3e:00:00:01".into() },
            NicInfo { name: "eth1".into(), mac: "fa:16:3e:00:00:02".into() },
        ];
        (tmp, root, c)
    }

    #[test]
    fn a_config_drive_gives_user_data_meta_data_and_network() {
        let (_tmp, root, c) =
            drive(&[("meta_data.json", META_DATA), ("user_data", USER_DATA), ("network_data.json", NETWORK_DATA)]);
        let f = read_drive(&c, &root).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("83679162-1378-4288-a2d4-70e13ec132aa"));
        assert_eq!(f.config.hostname.as_deref(), Some("cd-1"));
        assert_eq!(f.config.role.as_deref(), Some("node"));
        assert_eq!(f.config.master_ip.as_deref(), Some("10.20.0.2"));
        // The link's MAC picks eth1, not the first NIC.
        assert_eq!(
            f.network.addresses,
            [StaticAddress {
                iface: "eth1".into(),
                address: "10.20.0.5".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.20.0.1".parse().unwrap()),
            }]
        );
        assert_eq!(f.network.dns, ["10.20.0.3".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn missing_files_are_left_out_but_the_directory_is_required() {
        let (_tmp, root, c) = drive(&[]);
        let f = read_drive(&c, &root).unwrap();
        assert_eq!((f.instance_id, f.config.hostname, f.config.role), (None, None, None));
        let (_tmp, root, c) = drive(&[("user_data", USER_DATA)]);
        let f = read_drive(&c, &root).unwrap();
        assert_eq!((f.instance_id, f.config.role.as_deref()), (None, Some("node")));
        std::fs::remove_dir_all(root.join("openstack")).unwrap();
        let e = read_drive(&c, &root).unwrap_err();
        assert_eq!(e.to_string(), "no openstack/latest directory");
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file() {
        for (name, text, want) in [
            ("meta_data.json", "{\"uuid\": ", "reading meta_data.json"),
            ("network_data.json", "[1, 2", "reading network_data.json"),
            (
                "network_data.json",
                r#"{"networks": [{"type": "ipv4", "ip_address": "10.0.0.5", "netmask": "255.0.255.0"}]}"#,
                "not a contiguous netmask",
            ),
            ("user_data", "#cloud-config\nplanet: 7\n", "reading the user-data"),
        ] {
            let (_tmp, root, c) = drive(&[(name, text)]);
            let e = read_drive(&c, &root).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{name}: {e:#}");
        }
    }

    #[test]
    fn an_oversized_file_is_refused_unread() {
        let (_tmp, root, c) = drive(&[]);
        // Sparse: the size is what is refused, before a byte is read.
        std::fs::File::create(root.join("openstack/latest/user_data")).unwrap().set_len(64 << 20).unwrap();
        let e = read_drive(&c, &root).unwrap_err();
        assert!(format!("{e:#}").contains("more than the 4194304 a seed file may have"), "{e:#}");
    }

    #[test]
    fn without_a_config_2_filesystem_there_is_nothing_to_read() {
        let (_tmp, _root, c) = drive(&[]);
        assert!(!ConfigDrive.detect(&c));
        let e = ConfigDrive.fetch(&c).unwrap_err();
        assert_eq!(e.to_string(), "no filesystem labelled config-2");
    }
}
