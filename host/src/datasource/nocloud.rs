//! NoCloud: a vfat or iso9660 filesystem labelled `cidata`/`CIDATA` on any disk or partition
//! (`user-data`, `meta-data`, `network-config`), or the same files over HTTP from
//! `ds=nocloud;s=URL/` on the command line.

use std::path::Path;

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
        with_mounted(ctx, &fs, |root| read_seed(ctx, root))
            .with_context(|| format!("reading the NoCloud seed on {}", fs.device))
    }
}

/// The seed's files under `root`: the mounted filesystem, or in tests a plain directory.
fn read_seed(ctx: &Context, root: &Path) -> Result<Fetched> {
    files_to_config(
        ctx,
        read_optional(&root.join("user-data"))?,
        read_optional(&root.join("meta-data"))?,
        read_optional(&root.join("network-config"))?,
    )
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use planet_config::cloudconfig::NicInfo;
    use planet_config::StaticAddress;

    use super::super::testserver::{ctx, Reply, Server};
    use super::*;

    const USER_DATA: &str = "#cloud-config\nplanet:\n  role: node\n  master_ip: 192.168.10.2\n";
    const META_DATA: &str = "instance-id: iid-local01\nlocal-hostname: seed-host\n";
    const NETWORK: &str = "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"52:54:00:AB:CD:EF\"\n    \
                           addresses: [192.168.10.5/24]\n    gateway4: 192.168.10.1\n    nameservers:\n      \
                           addresses: [192.168.10.1]\n";

    /// A seed directory holding `files`, and a context with two NICs for `match:` rules. The
    /// path is canonical: `read_optional` refuses seeds reached through a symbolic link.
    fn seed(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Context) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap().join("seed");
        std::fs::create_dir(&root).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(name), text).unwrap();
        }
        let mut c = ctx(tmp.path(), "http://127.0.0.1:1", Duration::from_secs(1));
        c.nics = vec![
            NicInfo { name: "eth0".into(), mac: "52:54:00:00:00:01".into() },
            NicInfo { name: "eth1".into(), mac: "52:54:00:ab:cd:ef".into() },
        ];
        (tmp, root, c)
    }

    #[test]
    fn a_seed_directory_gives_user_data_meta_data_and_network() {
        let (_tmp, root, c) = seed(&[("user-data", USER_DATA), ("meta-data", META_DATA), ("network-config", NETWORK)]);
        let f = read_seed(&c, &root).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(f.config.hostname.as_deref(), Some("seed-host"));
        assert_eq!(f.config.role.as_deref(), Some("node"));
        assert_eq!(f.config.master_ip.as_deref(), Some("192.168.10.2"));
        assert_eq!(
            f.network.addresses,
            [StaticAddress {
                iface: "eth1".into(),
                address: "192.168.10.5".parse().unwrap(),
                prefix: 24,
                gateway: Some("192.168.10.1".parse().unwrap()),
            }]
        );
        assert_eq!(f.network.dns, ["192.168.10.1".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn missing_seed_files_are_left_out() {
        let (_tmp, root, c) = seed(&[]);
        let f = read_seed(&c, &root).unwrap();
        assert_eq!((f.instance_id, f.config.role, f.config.hostname), (None, None, None));
        assert!(f.network.addresses.is_empty());
        let (_tmp, root, c) = seed(&[("meta-data", META_DATA)]);
        let f = read_seed(&c, &root).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(f.config.role, None);
    }

    #[test]
    fn malformed_seed_files_are_errors_naming_the_file() {
        for (name, text, want) in [
            ("meta-data", "instance-id: [unclosed\n", "reading the meta-data"),
            ("network-config", "version: 1\nconfig: []\n", "only version 2 is supported"),
            (
                "network-config",
                "version: 2\nethernets:\n  e:\n    addresses: [10.0.0.300/24]\n",
                "reading the network-config",
            ),
            ("user-data", "#cloud-config\nplanet:\n  rolle: node\n", "reading the user-data"),
        ] {
            let (_tmp, root, c) = seed(&[(name, text)]);
            let e = read_seed(&c, &root).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{name}: {e:#}");
        }
        let (_tmp, root, c) = seed(&[]);
        std::os::unix::fs::symlink("/etc/hostname", root.join("user-data")).unwrap();
        let e = read_seed(&c, &root).unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
    }

    #[test]
    fn without_a_cidata_filesystem_there_is_nothing_to_read() {
        let (_tmp, _root, c) = seed(&[]);
        assert!(!NoCloud.detect(&c));
        let e = NoCloud.fetch(&c).unwrap_err();
        assert_eq!(e.to_string(), "no filesystem labelled cidata or CIDATA");
    }

    /// A context for `ds=nocloud;s=SERVER/seed/`.
    fn over_http(root: &Path, srv: &Server, within: Duration) -> Context {
        let mut c = ctx(root, &srv.url, within);
        c.nocloud_url = Some(format!("{}/seed/", srv.url));
        assert!(NoCloud.needs_network(&c));
        c
    }

    #[test]
    fn a_seed_url_is_read_over_http() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/seed/user-data") => Reply::ok(USER_DATA),
            ("GET", "/seed/meta-data") => Reply::ok(META_DATA),
            _ => Reply::status(404),
        });
        let f = NoCloud.fetch(&over_http(tmp.path(), &srv, Duration::from_secs(10))).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(f.config.role.as_deref(), Some("node"));
        assert!(f.network.addresses.is_empty());
        let paths: Vec<String> = srv.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/seed/user-data", "/seed/meta-data", "/seed/network-config"]);
        let host = srv.url.trim_start_matches("http://");
        assert!(srv.requests().iter().all(|r| r.header("Host") == Some(host)));
    }

    #[test]
    fn a_seed_url_with_nothing_or_failing_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::status(404));
        let e = NoCloud.fetch(&over_http(tmp.path(), &srv, Duration::from_secs(10))).unwrap_err();
        assert!(e.to_string().ends_with("/seed/ has neither user-data nor meta-data"), "{e:#}");
        // A seed server's error is final: it is not a metadata server that is still starting.
        let srv = Server::start(|_| Reply::status(500));
        let e = NoCloud.fetch(&over_http(tmp.path(), &srv, Duration::from_secs(10))).unwrap_err();
        assert!(format!("{e:#}").contains("user-data: HTTP 500"), "{e:#}");
        assert_eq!(srv.requests().len(), 1);
    }

    #[test]
    fn a_silent_seed_server_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::Silent);
        let started = Instant::now();
        let e = NoCloud.fetch(&over_http(tmp.path(), &srv, Duration::from_millis(800))).unwrap_err();
        assert!(format!("{e:#}").contains("no complete response to GET /user-data"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn an_oversized_seed_answer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 17000000\r\n\r\n".to_vec()));
        let e = NoCloud.fetch(&over_http(tmp.path(), &srv, Duration::from_millis(600))).unwrap_err();
        assert!(format!("{e:#}").contains("announces a body of 17000000 bytes"), "{e:#}");
    }
}
