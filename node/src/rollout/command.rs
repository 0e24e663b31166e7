//! The operator's side of a rollout, on a master (`planet-image enter MASTER -- planet-node
//! rollout …`): `start` takes a bundle into the cluster and writes the record every machine's
//! agent acts on; `rollback` takes the cluster back to the release it ran before; `stop`;
//! `status`.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::agent::{event, need_record, patch_record, read_locks, read_machines, read_record};
use super::{
    check_etcd_rollback, Action, Machine, Rollout, State, BUNDLE_DIR, BUNDLE_PORT, DEFAULT_APP_GRACE_SECONDS,
    DEFAULT_LOCK_SECONDS, DEFAULT_REBOOT_SECONDS, NAMESPACE, RECORD,
};
use crate::api::ApiClient;
use crate::cluster::kubeconfig;
use crate::kubectl::{now_secs, run_with_input};

pub const USAGE: &str = "usage: planet-node rollout COMMAND

  start BUNDLE [OPTIONS]   roll the signed bundle (a file in this container, or
                           http://IP[:PORT]/PATH) through every machine: masters first,
                           one machine at a time, each cordoned and drained, installed,
                           rebooted, blessed once Kubernetes and the apps are healthy,
                           uncordoned; the rollout stops at the first machine whose new
                           release fails (that machine rolls back by itself)
      --max-unavailable N       machines updating at once (default 1)
      --lock-seconds S          how long a lock outlives a holder that stopped renewing
                                it (default 120)
      --reboot-seconds S        how long a machine may take from its reboot until it
                                renews its lock again (default 1800)
      --app-grace-seconds S     how long the apps may fail on a machine back on the new
                                release, its Kubernetes healthy, before it gives up its
                                trial (default 600)
  rollback [OPTIONS]       take every machine back to the release the last rollout
                           started from (the other slot still holds it), the same way;
                           refused when that release's etcd is older than the running one
  stop                     stop the running rollout (machines already updated stay)
  status                   the rollout, each machine's release, slot and trial, the locks
  agent                    the per-machine agent (planet-rollout.service)
";

/// The options of `start` and `rollback`.
#[derive(Debug)]
struct Options {
    max_unavailable: u32,
    lock_seconds: u64,
    reboot_seconds: u64,
    app_grace_seconds: u64,
}

impl Options {
    /// A running rollout of `action` from release `from` to `release` with these options.
    fn rollout(
        &self,
        id: String,
        action: Action,
        (from, release): (String, String),
        etcd: (String, String),
    ) -> Rollout {
        Rollout {
            id,
            action,
            release,
            from,
            state: State::Running,
            reason: String::new(),
            max_unavailable: self.max_unavailable,
            lock_seconds: self.lock_seconds,
            reboot_seconds: self.reboot_seconds,
            app_grace_seconds: self.app_grace_seconds,
            etcd_from: etcd.0,
            etcd_to: etcd.1,
        }
    }
}

fn parse_options(args: &[String]) -> Result<(Vec<String>, Options)> {
    let mut o = Options {
        max_unavailable: 1,
        lock_seconds: DEFAULT_LOCK_SECONDS,
        reboot_seconds: DEFAULT_REBOOT_SECONDS,
        app_grace_seconds: DEFAULT_APP_GRACE_SECONDS,
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value\n{USAGE}"))?;
            let n: u64 = v.parse().with_context(|| format!("{name} {v:?}: expected a whole number"))?;
            if n == 0 || n > 86_400 {
                bail!("{name} {n}: expected 1 to 86400");
            }
            Ok(n)
        };
        match a.as_str() {
            "--max-unavailable" => o.max_unavailable = value(a)?.min(64) as u32,
            "--lock-seconds" => o.lock_seconds = value(a)?,
            "--reboot-seconds" => o.reboot_seconds = value(a)?,
            "--app-grace-seconds" => o.app_grace_seconds = value(a)?,
            s if s.starts_with("--") => bail!("unknown option {s}\n{USAGE}"),
            _ => rest.push(a.clone()),
        }
    }
    Ok((rest, o))
}

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("agent") => super::agent::run(),
        Some("start") => start(&args[1..]),
        Some("rollback") => rollback(&args[1..]),
        Some("stop") => stop(),
        Some("status") => {
            for l in status_lines()? {
                println!("{l}");
            }
            Ok(())
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// The admin kubeconfig: the operator's commands run on a master.
fn admin() -> Result<String> {
    let kc = kubeconfig("admin");
    if !Path::new(&kc).exists() {
        bail!("{kc} does not exist: run the rollout commands on a master");
    }
    Ok(kc)
}

/// The release every machine runs, or why there is none.
fn common_release(machines: &[Machine]) -> Result<String> {
    let mut releases: Vec<String> = Vec::new();
    for m in machines {
        let Some(r) = &m.release else {
            bail!("{} has not reported its release yet (is planet-rollout.service running there?)", m.name)
        };
        if m.trial {
            bail!("{} runs release {r} on trial: wait until it is blessed", m.name);
        }
        if !releases.contains(r) {
            releases.push(r.clone());
        }
    }
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the cluster has no Nodes yet"),
        _ => {
            let each: Vec<String> =
                machines.iter().map(|m| format!("{} {}", m.name, m.release.as_deref().unwrap_or("?"))).collect();
            bail!(
                "the machines run different releases ({}): finish or roll back the last rollout first",
                each.join(", ")
            )
        }
    }
}

fn masters_etcd(machines: &[Machine]) -> String {
    machines.iter().filter(|m| m.master).map(|m| m.etcd.clone()).filter(|e| !e.is_empty()).min().unwrap_or_default()
}

fn refuse_if_running(api: &ApiClient) -> Result<()> {
    if let Some(r) = read_record(api).map_err(anyhow::Error::msg)? {
        if r.state == State::Running {
            bail!("the rollout {} to release {} is running: stop it first (planet-node rollout stop)", r.id, r.release);
        }
    }
    Ok(())
}

fn write_record(kc: &str, r: &Rollout) -> Result<()> {
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": RECORD, "namespace": NAMESPACE}, "data": r.to_data()});
    run_with_input(kc, &["apply", "-f", "-", "-o", "name"], Some(&obj.to_string()))
        .map_err(|e| anyhow::anyhow!("writing {NAMESPACE}/{RECORD}: {e}"))?;
    Ok(())
}

fn start(args: &[String]) -> Result<()> {
    let (rest, o) = parse_options(args)?;
    let [source] = rest.as_slice() else { bail!("start needs one bundle\n{USAGE}") };
    let kc = admin()?;
    let env = crate::env::load()?;
    let api = ApiClient::for_machine(&env).map_err(anyhow::Error::msg)?;
    refuse_if_running(&api)?;
    let machines = read_machines(&api).map_err(anyhow::Error::msg)?;
    let from = common_release(&machines)?;
    let (release, file) = take_in(source)?;
    if release == from {
        bail!("every machine already runs release {release}");
    }
    let url =
        format!("http://{}:{BUNDLE_PORT}/{}", env.public_ip, file.file_name().unwrap_or_default().to_string_lossy());
    let r = o.rollout(
        format!("{release}-{}", now_secs()),
        Action::Install { url },
        (from.clone(), release.clone()),
        (masters_etcd(&machines), String::new()),
    );
    write_record(&kc, &r)?;
    let msg = format!("rollout {}: release {from} → {release} on {} machines, masters first", r.id, machines.len());
    event(&kc, &env.node_name, "Started", &msg);
    println!("{msg}; follow it with `planet-node rollout status` or `kubectl get events -n {NAMESPACE}`");
    Ok(())
}

fn rollback(args: &[String]) -> Result<()> {
    let (rest, o) = parse_options(args)?;
    if !rest.is_empty() {
        bail!("rollback takes no bundle: the other slot of every machine holds the previous release\n{USAGE}");
    }
    let kc = admin()?;
    let env = crate::env::load()?;
    let api = ApiClient::for_machine(&env).map_err(anyhow::Error::msg)?;
    refuse_if_running(&api)?;
    let last = need_record(&api)?;
    let machines = read_machines(&api).map_err(anyhow::Error::msg)?;
    let running_etcd = masters_etcd(&machines);
    let target_etcd = last.etcd_from.clone();
    check_etcd_rollback(&target_etcd, &running_etcd)?;
    let r = o.rollout(
        format!("{}-rollback-{}", last.from, now_secs()),
        Action::Rollback,
        (last.release.clone(), last.from.clone()),
        (running_etcd, target_etcd),
    );
    write_record(&kc, &r)?;
    let msg = format!("rollout {}: back to release {} (from {}), masters first", r.id, r.release, r.from);
    event(&kc, &env.node_name, "Started", &msg);
    println!("{msg}");
    Ok(())
}

fn stop() -> Result<()> {
    let kc = admin()?;
    let env = crate::env::load()?;
    let r = need_record(&ApiClient::for_machine(&env).map_err(anyhow::Error::msg)?)?;
    if r.state != State::Running {
        bail!("the rollout {} is not running (it is {})", r.id, r.state.as_str());
    }
    patch_record(&kc, &[("state", State::Stopped.as_str()), ("reason", "stopped by the operator")])
        .map_err(anyhow::Error::msg)?;
    event(&kc, &env.node_name, "Stopped", &format!("rollout {} stopped by the operator", r.id));
    println!("rollout {} stopped; machines already on release {} stay there", r.id, r.release);
    Ok(())
}

/// The rollout and every machine, one line each (also part of `planet-node status`).
pub fn status_lines() -> Result<Vec<String>> {
    let env = crate::env::load()?;
    // A master's admin, a node's kubelet identity.
    let api = ApiClient::for_machine(&env).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    match read_record(&api).map_err(anyhow::Error::msg)? {
        None => out.push("rollout: none".to_string()),
        Some(r) => {
            let what = match &r.action {
                Action::Install { url } => format!("install {url}"),
                Action::Rollback => "rollback".to_string(),
            };
            out.push(format!("rollout {}: {} release {} → {} ({what})", r.id, r.state.as_str(), r.from, r.release));
            if !r.reason.is_empty() {
                out.push(format!("  reason: {}", r.reason));
            }
            let now = now_secs();
            for l in read_locks(&api, r.max_unavailable).map_err(anyhow::Error::msg)? {
                if l.free(now) {
                    out.push(format!("  lock {}: free", l.name));
                } else {
                    let tries =
                        if l.attempts > 0 { format!(", install attempt {}", l.attempts) } else { String::new() };
                    out.push(format!("  lock {}: held by {} for {} s more{tries}", l.name, l.holder, l.until - now));
                }
            }
        }
    }
    for m in read_machines(&api).map_err(anyhow::Error::msg)? {
        out.push(format!(
            "machine {} ({}): release {} slot {}{}{}",
            m.name,
            if m.master { "master" } else { "node" },
            m.release.as_deref().unwrap_or("?"),
            if m.slot.is_empty() { "?" } else { &m.slot },
            if m.trial { ", on trial" } else { "" },
            if m.cordoned { ", cordoned" } else { "" },
        ));
    }
    Ok(out)
}

/// Takes the bundle into [`BUNDLE_DIR`] (copied or downloaded under a temporary name, renamed
/// when whole); its release, from its prelude, and its path. The signature is planet-init's to
/// check, on every machine, before it writes a byte of its boot path.
fn take_in(source: &str) -> Result<(String, PathBuf)> {
    let dir = Path::new(BUNDLE_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {BUNDLE_DIR}"))?;
    let tmp = dir.join(".incoming.planet");
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> Result<(String, PathBuf)> {
        if source.starts_with("http://") {
            download(source, &tmp)?;
        } else {
            std::fs::copy(source, &tmp).with_context(|| format!("copying {source}"))?;
        }
        let mut first = vec![0u8; planet_bundle::PRELUDE_LEN as usize];
        let n = std::fs::File::open(&tmp)?.read(&mut first)?;
        first.truncate(n);
        let p = planet_bundle::read_prelude_unverified(&first).with_context(|| source.to_string())?;
        planet_bundle::check_release(&p.release)?;
        let len = std::fs::metadata(&tmp)?.len();
        if len != p.total_bytes {
            bail!("{source}: {len} bytes, but its prelude says {}: truncated or padded", p.total_bytes);
        }
        let file = dir.join(format!("planet-{}.planet", p.release));
        std::fs::rename(&tmp, &file)?;
        // One bundle at a time on the state partition.
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.path() != file && e.file_name().to_string_lossy().ends_with(".planet") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok((p.release, file))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A plain HTTP GET of `http://IP[:PORT]/PATH` into `dest`, its Content-Length checked.
fn download(url: &str, dest: &Path) -> Result<()> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr: std::net::SocketAddr =
        if hostport.contains(':') { hostport.parse() } else { format!("{hostport}:80").parse() }
            .with_context(|| format!("{url}: the host must be an IP address"))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).with_context(|| url.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut r = BufReader::new(s);
    let head = crate::http_head::read_head(&mut r, url)?;
    if head.start.split_whitespace().nth(1) != Some("200") {
        bail!("{url} answered {}", head.start);
    }
    let length = head.field("content-length").and_then(|v| v.parse::<u64>().ok());
    let mut f = std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    // Exactly the body: a server that keeps the connection open must not stall the copy.
    let n = match length {
        Some(want) => std::io::copy(&mut r.by_ref().take(want), &mut f),
        None => std::io::copy(&mut r, &mut f),
    }
    .with_context(|| format!("downloading {url}"))?;
    if let Some(want) = length {
        if n != want {
            bail!("{url}: {n} of {want} bytes arrived");
        }
    }
    f.sync_all()?;
    println!("planet-node: rollout: {url}: {n} bytes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, release: Option<&str>, trial: bool) -> Machine {
        Machine { name: name.into(), release: release.map(str::to_string), trial, ..Default::default() }
    }

    #[test]
    fn a_rollout_starts_only_from_one_settled_release() {
        assert_eq!(common_release(&[m("a", Some("1"), false), m("b", Some("1"), false)]).unwrap(), "1");
        let e = common_release(&[m("a", Some("1"), false), m("b", Some("2"), false)]).unwrap_err().to_string();
        assert!(e.contains("a 1, b 2"), "{e}");
        assert!(common_release(&[m("a", Some("2"), true)]).unwrap_err().to_string().contains("on trial"));
        assert!(common_release(&[m("a", None, false)]).unwrap_err().to_string().contains("not reported"));
    }

    #[test]
    fn a_download_stops_at_the_content_length_of_a_server_that_keeps_the_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // The whole request is read (the client writes it in pieces, and a socket closed with
            // unread bytes is reset: the client's next piece then failed with EPIPE, once in a
            // full run), and only this test's request is answered.
            let mut buf = [0u8; 1024];
            let mut c = loop {
                let (mut c, _) = l.accept().unwrap();
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                if request.starts_with(b"GET /planet-2.planet ") {
                    break c;
                }
            };
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
            // Keep the connection open, as an HTTP/1.1 server may, until the client is done.
            let _ = c.read(&mut buf);
        });
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("b");
        download(&format!("http://127.0.0.1:{port}/planet-2.planet"), &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        server.join().unwrap();
        let e = download("http://example.com/x", &dest).unwrap_err().to_string();
        assert!(e.contains("IP address"), "{e}");
    }

    #[test]
    fn options_are_checked() {
        let args: Vec<String> = ["x.planet", "--lock-seconds", "30"].iter().map(|s| s.to_string()).collect();
        let (rest, o) = parse_options(&args).unwrap();
        assert_eq!((rest, o.lock_seconds, o.max_unavailable), (vec!["x.planet".to_string()], 30, 1));
        let bad: Vec<String> = ["--lock-seconds", "0"].iter().map(|s| s.to_string()).collect();
        assert!(parse_options(&bad).is_err());
        let bad: Vec<String> = ["--frobnicate"].iter().map(|s| s.to_string()).collect();
        assert!(parse_options(&bad).unwrap_err().to_string().contains("unknown option"));
    }
}
