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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::testserver::{ctx, Reply, Request, Server};
    use super::*;

    const TOKEN: &str = "AQAEAtoken==";
    const USER_DATA: &str = "#cloud-config\nplanet:\n  role: node\n  master_ip: 10.0.1.10\n";

    /// IMDSv2 as EC2 answers it: a token only for a PUT with a TTL, and every GET refused
    /// without that token.
    fn imds(r: &Request) -> Reply {
        if r.path == "/latest/api/token" {
            if r.method != "PUT" || r.header("X-aws-ec2-metadata-token-ttl-seconds") != Some("21600") {
                return Reply::status(400);
            }
            return Reply::ok(TOKEN);
        }
        if r.method != "GET" || r.header("X-aws-ec2-metadata-token") != Some(TOKEN) {
            return Reply::status(401);
        }
        match r.path.as_str() {
            "/latest/meta-data/instance-id" => Reply::ok("i-0123456789abcdef0\n"),
            "/latest/meta-data/local-ipv4" => Reply::ok("10.0.1.5"),
            "/latest/meta-data/local-hostname" => Reply::ok("IP-10-0-1-5.eu-west-1.compute.internal"),
            "/latest/meta-data/placement/availability-zone" => Reply::ok("eu-west-1a"),
            "/latest/user-data" => Reply::ok(USER_DATA),
            _ => Reply::status(404),
        }
    }

    #[test]
    fn imdsv2_gives_user_data_and_instance_data() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(imds);
        let f = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(f.config.role.as_deref(), Some("node"));
        assert_eq!(f.config.master_ip.as_deref(), Some("10.0.1.10"));
        assert_eq!(f.config.public_ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(f.config.hostname.as_deref(), Some("IP-10-0-1-5"));
        assert_eq!(f.config.node_name.as_deref(), Some("ip-10-0-1-5.eu-west-1.compute.internal"));
        assert_eq!(f.config.cloud_provider.as_deref(), Some("aws"));
        assert_eq!(f.config.labels, [("topology.kubernetes.io/zone".to_string(), "eu-west-1a".to_string())]);
        let reqs = srv.requests();
        assert_eq!((reqs[0].method.as_str(), reqs[0].path.as_str()), ("PUT", "/latest/api/token"));
        assert_eq!(reqs[0].header("Content-Length"), Some("0"));
        assert_eq!(srv.count("/latest/api/token"), 1, "one token for the whole fetch");
        assert_eq!(reqs.len(), 6);
    }

    #[test]
    fn a_refused_token_falls_back_to_imdsv1() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("PUT", _) => Reply::status(405),
            _ if r.header("X-aws-ec2-metadata-token").is_some() => Reply::status(400),
            (_, "/latest/meta-data/instance-id") => Reply::ok("i-v1"),
            (_, "/latest/user-data") => Reply::ok(USER_DATA),
            _ => Reply::status(404),
        });
        let f = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap();
        assert_eq!(f.instance_id.as_deref(), Some("i-v1"));
        assert_eq!(f.config.role.as_deref(), Some("node"));
        // What the server does not have is left unset rather than made up.
        assert_eq!((f.config.public_ip, f.config.hostname, f.config.node_name), (None, None, None));
        assert!(f.config.labels.is_empty());
    }

    #[test]
    fn a_token_the_server_refuses_is_fatal_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|r| if r.method == "PUT" { Reply::ok(TOKEN) } else { Reply::status(401) });
        let started = Instant::now();
        let e = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10))).unwrap_err();
        assert!(format!("{e:#}").contains("HTTP 401 (the IMDSv2 token was refused)"), "{e:#}");
        assert_eq!(srv.count("/latest/meta-data/instance-id"), 1, "a 401 is not retried");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn server_errors_are_retried_until_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::status(500));
        let started = Instant::now();
        let e = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(1500))).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("PUT /latest/api/token: HTTP 500"), "{e}");
        assert!(e.contains("no answer within the deadline"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
        assert!((2..=4).contains(&srv.count("/latest/api/token")), "{:?}", srv.requests());
    }

    #[test]
    fn a_silent_server_times_out_and_is_not_taken_for_imdsv1() {
        let tmp = tempfile::tempdir().unwrap();
        let srv = Server::start(|_| Reply::Silent);
        let started = Instant::now();
        let e = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(800))).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("no complete response to PUT /latest/api/token"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(srv.count("/latest/meta-data/instance-id"), 0, "no GET without a token after a timeout");
    }

    #[test]
    fn lying_answers_are_errors() {
        let cases: [(&[u8], &str); 3] = [
            (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "the body ended after 3 of 10 bytes"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4294967296\r\n\r\n", "larger than the 16777216-byte limit"),
        ];
        for (raw, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let srv = Server::start(move |_| Reply::Raw(raw.to_vec()));
            let e = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_millis(600))).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
    }

    #[test]
    fn malformed_user_data_is_an_error_and_foreign_user_data_a_notice() {
        let tmp = tempfile::tempdir().unwrap();
        for (ud, bad) in [("#cloud-config\nplanet: [\n", true), ("#!/bin/sh\necho hi\n", false)] {
            let srv = Server::start(move |r| match (r.method.as_str(), r.path.as_str()) {
                ("PUT", _) => Reply::ok(TOKEN),
                (_, "/latest/user-data") => Reply::ok(ud),
                _ => Reply::status(404),
            });
            let got = Ec2.fetch(&ctx(tmp.path(), &srv.url, Duration::from_secs(10)));
            if bad {
                let e = got.unwrap_err();
                assert!(format!("{e:#}").contains("reading the user-data"), "{e:#}");
            } else {
                let f = got.unwrap();
                assert_eq!(f.config.role, None);
                assert!(f.notices.iter().any(|n| n.contains("not #cloud-config")), "{:?}", f.notices);
            }
        }
    }
}
