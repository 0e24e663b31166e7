//! Google Compute Engine metadata: `Metadata-Flavor: Google` on every request,
//! `instance/attributes/user-data`, hostname, the first interface's IP. Detected by DMI
//! vendor or product "Google".

use anyhow::{bail, Result};
use planet_config::Source;

use super::{dmi, retry, Attempt, Context, Datasource, Fetched};
use crate::http;

pub struct Gce;

/// The metadata server: `planet.metadata_url=` when given, else the real one, addressed by IP
/// with the `Host` it expects.
fn endpoint(ctx: &Context) -> Result<http::Endpoint> {
    match &ctx.metadata_url {
        Some(u) => http::Endpoint::parse(u, None),
        None => http::Endpoint::parse(DEFAULT_URL, Some(HOST)),
    }
}

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
        let ep = endpoint(ctx)?;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testserver::{ctx, Reply, Request, Server};
    use super::*;

    const USER_DATA: &str = "#cloud-config\nhostname: web-1\nplanet:\n  role: master\n  master_ip: 10.128.0.2\n";

    /// The metadata server as GCE runs it: every request without `Metadata-Flavor: Google` is
    /// refused (403), whatever its path.
    fn metadata(r: &Request) -> Reply {
        if r.method != "GET" || r.header("Metadata-Flavor") != Some("Google") {
            return Reply::status(403);
        }
        match r.path.strip_prefix("/computeMetadata/v1/instance/").unwrap_or("") {
            "id" => Reply::ok("4567890123456789012\n"),
            "hostname" => Reply::ok("gke-node-7.c.my-project.internal"),
            "network-interfaces/0/ip" => Reply::ok("10.128.0.7"),
            "attributes/user-data" => Reply::ok(USER_DATA),
            _ => Reply::status(404),
        }
    }

    #[test]
    fn the_metadata_server_gives_user_data_and_instance_data() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(metadata);
        let f = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("4567890123456789012"));
        assert_eq!(f.config.role.as_deref(), Some("master"));
        assert_eq!(f.config.master_ip.as_deref(), Some("10.128.0.2"));
        assert_eq!(f.config.public_ip.as_deref(), Some("10.128.0.7"));
        // user-data's hostname wins over the metadata server's.
        assert_eq!(f.config.hostname.as_deref(), Some("web-1"));
        assert_eq!(f.config.cloud_provider.as_deref(), Some("gce"));
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 4);
        assert!(reqs.iter().all(|r| r.header("Metadata-Flavor") == Some("Google")), "{reqs:?}");
    }

    #[test]
    fn without_user_data_the_hostname_is_the_first_label() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|r| match r.path.as_str() {
            "/computeMetadata/v1/instance/attributes/user-data" => Reply::status(404),
            "/computeMetadata/v1/instance/network-interfaces/0/ip" => Reply::ok("  \n"),
            _ => metadata(r),
        });
        let f = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap();
        assert_eq!(f.config.hostname.as_deref(), Some("gke-node-7"));
        assert_eq!(f.config.role, None);
        assert_eq!(f.config.public_ip, None, "a blank address is no address");
    }

    #[test]
    fn the_real_endpoint_is_named_by_ip_with_the_google_host() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = ctx(tmp.path(), "http://127.0.0.1:1", Duration::from_secs(1));
        c.metadata_url = None;
        // Only built, never connected to.
        let ep = endpoint(&c).unwrap();
        assert_eq!(ep.addr, "169.254.169.254:80".parse().unwrap());
        assert_eq!(ep.host_header, "metadata.google.internal");
    }

    #[test]
    fn server_errors_are_retried_until_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|r| if r.path.ends_with("/id") { Reply::status(503) } else { metadata(r) });
        let started = Instant::now();
        let e = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(1500))).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("GET /computeMetadata/v1/instance/id: HTTP 503"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        assert!((2..=4).contains(&srv.count("/computeMetadata/v1/instance/id")), "{:?}", srv.requests());
    }

    #[test]
    fn a_silent_server_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::Silent);
        let started = Instant::now();
        let e = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(800))).unwrap_err();
        assert!(format!("{e:#}").contains("no complete response to GET /computeMetadata/v1/instance/id"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn lying_or_malformed_answers_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n".to_vec()));
        let e = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(600))).unwrap_err();
        assert!(format!("{e:#}").contains("announces a body of 99999999999 bytes"), "{e:#}");
        let srv = Server::start(|r| {
            if r.path.ends_with("/user-data") {
                Reply::ok("#cloud-config\nplanet:\n  role: [node\n")
            } else {
                metadata(r)
            }
        });
        let e = Gce.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap_err();
        assert!(format!("{e:#}").contains("reading the user-data"), "{e:#}");
    }
}
