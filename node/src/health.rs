//! `planet-node health`: whether this machine's part of the cluster works — for a master the
//! API server's `/readyz` (through the admin credentials: anonymous requests are refused), for
//! a node the kubelet's `/healthz` and its Node object `Ready`. planet-init runs it in the
//! container to decide whether a new release is healthy; operators run it to see why not.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::api::ApiClient;
use crate::cluster;
use crate::env::NodeEnv;

/// One check's outcome: its name and `Ok(detail)` or `Err(why)`.
pub type Check = (&'static str, std::result::Result<String, String>);

use crate::kubectl::first_words;

/// A plain HTTP GET on a loopback port (the kubelet's healthz), bounded in time and size.
pub fn http_get(addr: &str, path: &str) -> std::result::Result<String, String> {
    let sa = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let (status, body) =
        crate::http_head::read_answer(&mut std::io::BufReader::new(s), addr, 64 * 1024).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(first_words(&format!("{addr}{path} answered {status}: {}", body.trim())));
    }
    Ok(body.trim().to_string())
}

/// Every check of the machine: its Kubernetes components, then its apps'.
pub fn checks(env: &NodeEnv) -> Vec<Check> {
    let mut c = kube_checks(env);
    c.extend(app_check(env));
    c
}

/// The apps' health, part of "healthy" (a new release is blessed only with its apps healthy):
/// on a master what its planet-apps.service found, on a node what the masters published in
/// the cluster ([`crate::apps::HEALTH_RECORD`]), recently. `None` when the slot carries no apps.
pub fn app_check(env: &NodeEnv) -> Option<Check> {
    let root = std::path::Path::new("/");
    let apps = crate::apps::slot_apps(root).ok()?;
    if apps.is_empty() {
        return None;
    }
    let r = if env.role.is_master() {
        crate::apps::local_health(root, &apps)
    } else {
        ApiClient::for_machine(env).and_then(|a| crate::apps::cluster_health(&a, &apps, crate::kubectl::now_secs()))
    };
    Some(("apps", r))
}

/// The role's Kubernetes components.
pub fn kube_checks(env: &NodeEnv) -> Vec<Check> {
    let mut c = Vec::new();
    // Asked directly, not through kubectl (crate::api says why).
    let client = ApiClient::for_machine(env);
    if env.role.is_master() {
        c.push(("apiserver-readyz", client.as_ref().map_err(String::clone).and_then(ApiClient::readyz)));
    }
    // Every role runs a kubelet.
    let r = http_get(cluster::KUBELET_HEALTHZ, "/healthz");
    c.push(("kubelet-healthz", r));
    let r = match c.first() {
        // An API server not ready yet cannot say either.
        Some(("apiserver-readyz", Err(_))) => Err("the API server is not ready".to_string()),
        _ => client.as_ref().map_err(String::clone).and_then(|a| a.node_ready(&env.node_name)),
    };
    c.push(("node-ready", r));
    c
}

pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    let results = checks(&env);
    let mut bad = Vec::new();
    for (name, r) in &results {
        match r {
            Ok(d) => println!("{name}: ok ({d})"),
            Err(e) => {
                println!("{name}: FAIL ({e})");
                bad.push(*name);
            }
        }
    }
    if !bad.is_empty() {
        bail!("not healthy: {}", bad.join(", "));
    }
    Ok(())
}

/// `planet-node status`: the machine's role and release, its health checks, and one line per
/// app of the slot (on masters: applied, healthy, or failing with the reason).
pub fn status() -> Result<()> {
    let env = crate::env::load()?;
    let release = std::fs::read("/etc/planet/release.json")
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["release"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("machine {}: role {}, release {release}", env.node_name, env.role.as_str());
    for (name, r) in checks(&env) {
        match r {
            Ok(d) => println!("{name}: ok ({d})"),
            Err(e) => println!("{name}: FAIL ({e})"),
        }
    }
    for line in crate::apps::status_lines(std::path::Path::new("/"), env.role.is_master()) {
        println!("{line}");
    }
    match crate::rollout::command::status_lines() {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => println!("rollout: unknown ({e:#})"),
    }
    Ok(())
}

/// Waits until [`kube_checks`] all pass, up to `limit`; prints progress every change. The apps
/// are not waited for: an app that fails is the apps' status to show (`status`), not a reason
/// to say Kubernetes is not up.
pub fn wait(limit: Duration) -> Result<()> {
    let env = crate::env::load()?;
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let results = kube_checks(&env);
        let summary: Vec<String> =
            results.iter().map(|(n, r)| format!("{n}={}", if r.is_ok() { "ok" } else { "waiting" })).collect();
        let summary = summary.join(" ");
        if summary != last {
            println!("planet-node: health {summary} after={}s", start.elapsed().as_secs());
            last = summary;
        }
        if results.iter().all(|(_, r)| r.is_ok()) {
            return Ok(());
        }
        if start.elapsed() > limit {
            let why: Vec<String> =
                results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
            bail!("not healthy after {}s: {}", limit.as_secs(), why.join("; "));
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Parses `--timeout SECONDS`.
pub fn parse_timeout(args: &[String]) -> Result<Duration> {
    match args {
        [] => Ok(Duration::from_secs(600)),
        [flag, v] if flag == "--timeout" => {
            Ok(Duration::from_secs(v.parse().with_context(|| format!("--timeout {v:?}: expected seconds"))?))
        }
        _ => bail!("usage: planet-node wait [--timeout SECONDS]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn http_get_reads_status_and_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            for reply in ["HTTP/1.1 200 OK\r\n\r\nok", "HTTP/1.1 500 Internal\r\n\r\n[-]ping failed"] {
                let (mut s, _) = l.accept().unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 256];
                while !got.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                assert!(got.starts_with(b"GET /healthz HTTP/1.0\r\n"));
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        assert_eq!(http_get(&addr, "/healthz").unwrap(), "ok");
        let e = http_get(&addr, "/healthz").unwrap_err();
        assert!(e.contains("answered 500") && e.contains("ping failed"), "{e}");
        t.join().unwrap();
    }
}
