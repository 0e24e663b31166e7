//! `planet-node apps` (masters): what a master puts into the cluster once the API server is
//! ready — its own Node's role label (`node-role.kubernetes.io/master`, which kubelets may not
//! set on themselves; apps pin pods to masters with it), then the apps the slot carries,
//! applied in the slot's order and watched for health.
//!
//! Applying is idempotent across reboots, slot updates and masters: what was applied is
//! recorded in the cluster itself (the ConfigMap `kube-system/planet-apps`, one key per app:
//! its version and the package's digest), so an app is applied again only when the slot brings
//! another package of it. The Secrets an app declares are made once, with random values, before
//! its first apply; nothing prints them. Each app's state — applied, healthy, failing with the
//! reason — is one console line when it changes and one line of `planet-node status`
//! (`/run/planet/apps.status`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use planet_config::app::{self as contract, HealthCheck, PackageIndex, SecretSpec, SlotApp};
use serde_json::{json, Value};

use crate::api::ApiClient;
use crate::cluster::kubeconfig;
use crate::kubectl::{first_words, run as kubectl, run_with_input};

/// The record of applied apps, in the cluster.
pub const RECORD: (&str, &str) = ("kube-system", "planet-apps");
/// This machine's view of its apps, for `planet-node status`.
pub const STATUS_FILE: &str = "/run/planet/apps.status";
/// How often health is checked and failed applies are tried again.
const PERIOD: Duration = Duration::from_secs(20);

/// The apps of the running slot, in order (none when the slot carries none).
pub fn slot_apps(root: &Path) -> Result<Vec<(SlotApp, PackageIndex)>> {
    let list_path = root.join(contract::SLOT_APPS_INDEX);
    let text = match std::fs::read_to_string(&list_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", list_path.display())),
    };
    let list: Vec<SlotApp> =
        serde_json::from_str(&text).with_context(|| format!("{} is not a list of apps", list_path.display()))?;
    let mut out = Vec::new();
    for app in list {
        let p = app_dir(root, &app.name).join(contract::PACKAGE_INDEX);
        let index: PackageIndex =
            serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{} is not a package index", p.display()))?;
        out.push((app, index));
    }
    Ok(out)
}

pub fn app_dir(root: &Path, name: &str) -> PathBuf {
    root.join(contract::SLOT_APPS_DIR).join(name)
}

/// What the record holds for an app: `VERSION SHA256`.
pub fn record_value(app: &SlotApp) -> String {
    format!("{} {}", app.version, app.sha256)
}

/// One app's state as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppState {
    pub name: String,
    pub version: String,
    /// `waiting`, `applied`, `healthy` or `failing`.
    pub state: String,
    pub detail: String,
}

impl AppState {
    pub fn line(&self) -> String {
        if self.detail.is_empty() {
            format!("app {} {}: {}", self.name, self.version, self.state)
        } else {
            format!("app {} {}: {}: {}", self.name, self.version, self.state, self.detail)
        }
    }
}

/// The Secret an app declares, with fresh random values, as `kubectl create -f -` reads it.
pub fn secret_object(app: &str, s: &SecretSpec, random: &mut dyn FnMut() -> String) -> Value {
    let data: BTreeMap<&str, String> = s.keys.iter().map(|k| (k.as_str(), random())).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": s.name, "namespace": s.namespace, "labels": {"app.planet/name": app}},
        "type": "Opaque",
        "stringData": data,
    })
}

/// 32 characters from the system's random number generator (24 bytes, URL-safe base64).
fn random_value() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system's random number generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Makes the app's Secrets that do not exist yet (and their namespaces).
fn ensure_secrets(kc: &str, app: &str, secrets: &[SecretSpec]) -> Result<(), String> {
    for s in secrets {
        if kubectl(kc, &["get", "namespace", &s.namespace, "-o", "name"]).is_err() {
            kubectl(kc, &["create", "namespace", &s.namespace])
                .map_err(|e| format!("namespace {}: {e}", s.namespace))?;
        }
        if kubectl(kc, &["get", "secret", &s.name, "-n", &s.namespace, "-o", "name"]).is_ok() {
            continue;
        }
        let obj = secret_object(app, s, &mut random_value).to_string();
        run_with_input(kc, &["create", "-f", "-", "-o", "name"], Some(&obj))
            .map_err(|e| format!("secret {}/{}: {e}", s.namespace, s.name))?;
        println!("planet-node: app {app}: made the secret {}/{} ({} keys)", s.namespace, s.name, s.keys.len());
    }
    Ok(())
}

/// The record's data, or an empty map when there is none yet.
fn read_record(api: &ApiClient) -> Result<BTreeMap<String, String>, String> {
    let (ns, name) = RECORD;
    Ok(api.configmap_data(ns, name)?.unwrap_or_default())
}

fn write_record(kc: &str, app: &SlotApp) -> Result<(), String> {
    let (ns, name) = RECORD;
    let exists = kubectl(kc, &["get", "configmap", name, "-n", ns, "-o", "name", "--ignore-not-found"])?;
    if exists.is_empty() {
        let obj =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {}});
        run_with_input(kc, &["create", "-f", "-", "-o", "name"], Some(&obj.to_string()))?;
    }
    let patch = json!({"data": {app.name.clone(): record_value(app)}}).to_string();
    kubectl(kc, &["patch", "configmap", name, "-n", ns, "--type=merge", "-p", &patch]).map(|_| ())
}

/// Applies one app unless the record says this very package was applied; `Ok(true)` when it
/// applied now.
fn apply(kc: &str, api: &ApiClient, root: &Path, app: &SlotApp, index: &PackageIndex) -> Result<bool, String> {
    if read_record(api)?.get(&app.name) == Some(&record_value(app)) {
        return Ok(false);
    }
    ensure_secrets(kc, &app.name, &index.spec.secrets)?;
    let dir = app_dir(root, &app.name);
    for m in &index.spec.manifests {
        let path = dir.join(m);
        kubectl(kc, &["apply", "--request-timeout=60s", "-f", &path.display().to_string()])
            .map_err(|e| format!("{m}: {e}"))?;
    }
    write_record(kc, app)?;
    Ok(true)
}

/// `Ok(detail)` when every health check passes, else the first failure.
fn health(api: &ApiClient, checks: &[HealthCheck]) -> Result<String, String> {
    for c in checks {
        if let Some(r) = &c.ready {
            ready(api, r, &c.namespace)?;
        } else if let Some(h) = &c.http {
            let service = api
                .get_object(&format!("/api/v1/namespaces/{}/services/{}", c.namespace, h.service))
                .map_err(|e| format!("service {}: {e}", h.service))?;
            let ip = service["spec"]["clusterIP"].as_str().unwrap_or("");
            let wait = Duration::from_secs(h.timeout_seconds.into());
            let status = http_status(&format!("{ip}:{}", h.port), &h.path, wait)
                .map_err(|e| format!("http {}:{}{}: {e}", h.service, h.port, h.path))?;
            if !(200..400).contains(&status) {
                return Err(format!("http {}:{}{} answered {status}", h.service, h.port, h.path));
            }
        }
    }
    Ok(format!("{} checks pass", checks.len()))
}

/// Where the API serves `KIND/NAME` (one of the spec's ready kinds) in namespace `ns`.
fn workload_path(what: &str, ns: &str) -> Result<String, String> {
    let (kind, name) = what.split_once('/').ok_or_else(|| format!("{what}: not KIND/NAME"))?;
    if !contract::READY_KINDS.contains(&kind) {
        return Err(format!("{what}: KIND is one of {}", contract::READY_KINDS.join(", ")));
    }
    Ok(format!("/apis/apps/v1/namespaces/{ns}/{kind}s/{name}"))
}

/// A deployment's, statefulset's or daemonset's pods all ready (and at least one).
fn ready(api: &ApiClient, what: &str, ns: &str) -> Result<(), String> {
    let v = api.get_object(&workload_path(what, ns)?).map_err(|e| format!("{what}: {e}"))?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (ready, want) = if what.starts_with("daemonset/") {
        (n("/status/numberReady"), n("/status/desiredNumberScheduled"))
    } else {
        (n("/status/readyReplicas"), v.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1))
    };
    if want == 0 || ready < want {
        return Err(format!("{what}: {ready} of {want} ready"));
    }
    Ok(())
}

/// The status code of a GET, bounded in size and by `wait` for the answer (and 5 s to connect).
pub fn http_status(addr: &str, path: &str, wait: Duration) -> Result<u16, String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| match e.kind() {
        // A read timeout shows as EAGAIN ("Resource temporarily unavailable").
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {} s", wait.as_secs())
        }
        _ => e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| "no HTTP answer".to_string())
}

/// Where the masters publish the apps' health for the nodes, whose own health (and so their
/// updates' blessing) includes it: `NAME: STATE VERSION UNIX_SECONDS DETAIL`.
pub const HEALTH_RECORD: (&str, &str) = (crate::rollout::NAMESPACE, "planet-app-health");
/// Older than this, a published health says nothing (its master stopped publishing).
const HEALTH_FRESH_SECS: u64 = 180;
/// A master publishes at least this often.
const PUBLISH_EVERY: Duration = Duration::from_secs(60);

/// The health line published for one app.
pub fn health_value(s: &AppState, now: u64) -> String {
    format!("{} {} {now} {}", s.state, s.version, s.detail)
}

/// Publishes `states` in [`HEALTH_RECORD`] (made on first use).
fn publish_health(api: &ApiClient, states: &[AppState]) -> Result<(), String> {
    let (ns, name) = HEALTH_RECORD;
    let now = crate::kubectl::now_secs();
    let data: BTreeMap<&str, String> = states.iter().map(|s| (s.name.as_str(), health_value(s, now))).collect();
    api.merge_configmap(ns, name, &json!(data))
}

/// Every app of the slot healthy, as this master's planet-apps.service last found.
pub fn local_health(root: &Path, apps: &[(SlotApp, PackageIndex)]) -> Result<String, String> {
    let states: Vec<AppState> = std::fs::read(root.join(STATUS_FILE.trim_start_matches('/')))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (a, _) in apps {
        match states.iter().find(|s| s.name == a.name) {
            Some(s) if s.state == "healthy" && s.version == a.version => {}
            Some(s) => return Err(s.line()),
            None => return Err(format!("app {}: planet-apps.service has not reported", a.name)),
        }
    }
    Ok(format!("{} healthy", apps.len()))
}

/// Every app of the slot healthy in the same version, as a master published within
/// [`HEALTH_FRESH_SECS`] of `now`.
pub fn cluster_health(
    api: &crate::api::ApiClient,
    apps: &[(SlotApp, PackageIndex)],
    now: u64,
) -> Result<String, String> {
    let (ns, name) = HEALTH_RECORD;
    let (status, text) = api.get(&format!("/api/v1/namespaces/{ns}/configmaps/{name}"))?;
    if status != 200 {
        return Err(first_words(&format!("{ns}/{name}: {status} {}", text.trim())));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{ns}/{name}: {e}"))?;
    judge_published(&v["data"], apps, now)
}

/// [`cluster_health`]'s verdict on the published data.
pub fn judge_published(data: &Value, apps: &[(SlotApp, PackageIndex)], now: u64) -> Result<String, String> {
    for (a, _) in apps {
        let line = data[a.name.as_str()].as_str().ok_or_else(|| format!("app {}: no health published", a.name))?;
        let mut w = line.splitn(4, ' ');
        let (state, version, at, detail) =
            (w.next().unwrap_or(""), w.next().unwrap_or(""), w.next().unwrap_or(""), w.next().unwrap_or(""));
        let at: u64 = at.parse().unwrap_or(0);
        if now.saturating_sub(at) > HEALTH_FRESH_SECS {
            return Err(format!("app {}: its health was last published {} s ago", a.name, now.saturating_sub(at)));
        }
        if version != a.version {
            return Err(format!("app {}: the cluster runs version {version}, this slot {}", a.name, a.version));
        }
        if state != "healthy" {
            return Err(format!("app {} {version}: {state}: {detail}", a.name));
        }
    }
    Ok(format!("{} healthy", apps.len()))
}

/// Writes the status file and prints the lines that changed.
fn publish(states: &[AppState], last: &mut BTreeMap<String, AppState>) {
    for s in states {
        if last.get(&s.name) != Some(s) {
            println!("planet-node: {}", s.line());
            last.insert(s.name.clone(), s.clone());
        }
    }
    if let Ok(text) = serde_json::to_vec_pretty(states) {
        let _ = crate::files::write_if_changed(STATUS_FILE, &text, 0o644);
    }
}

/// The label that marks a master's Node.
pub const MASTER_LABEL: &str = "node-role.kubernetes.io/master";

pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    let apps = slot_apps(Path::new("/"))?;
    let kc = kubeconfig("admin");
    let node = format!("node/{}", env.node_name);
    let mut labelled = false;
    if apps.is_empty() {
        println!("planet-node: the slot carries no apps");
    }
    let mut states: Vec<AppState> = apps
        .iter()
        .map(|(a, _)| AppState {
            name: a.name.clone(),
            version: a.version.clone(),
            state: "waiting".into(),
            detail: "for the API server".into(),
        })
        .collect();
    let mut last = BTreeMap::new();
    publish(&states, &mut last);
    let mut applied = vec![false; apps.len()];
    // On a master (not a dev machine) loaded here, not before the kubelet: see crate::images.
    let mut images_loaded = apps.is_empty() || env.role != crate::env::Role::Master;
    let mut complaint = crate::kubectl::Complaint::default();
    let mut published: Option<(std::time::Instant, String)> = None;
    loop {
        // Asked directly, not through kubectl (crate::api says why); a client only once the
        // API server is ready.
        let api = ApiClient::for_machine(&env).ok().filter(|c| c.readyz().is_ok());
        let api_ready = api.is_some();
        if api_ready && !labelled {
            // The Node appears once the kubelet has registered it.
            labelled = kubectl(&kc, &["label", "--overwrite", &node, &format!("{MASTER_LABEL}=")]).is_ok();
        }
        if apps.is_empty() && labelled {
            return Ok(());
        }
        if api_ready && !images_loaded {
            for st in states.iter_mut() {
                *st = AppState { state: "waiting".into(), detail: "loading the images".into(), ..st.clone() };
            }
            publish(&states, &mut last);
            match crate::images::load_app_images(Path::new("/")) {
                Ok(()) => images_loaded = true,
                Err(e) => {
                    let why = first_words(&format!("{e:#}"));
                    for st in states.iter_mut() {
                        *st = AppState { state: "failing".into(), detail: why.clone(), ..st.clone() };
                    }
                }
            }
        }
        for (i, (app, index)) in apps.iter().enumerate() {
            let (Some(api), true) = (&api, images_loaded) else { break };
            let st = &mut states[i];
            if !applied[i] {
                match apply(&kc, api, Path::new("/"), app, index) {
                    Ok(now) => {
                        applied[i] = true;
                        st.state = "applied".into();
                        st.detail =
                            if now { "now".into() } else { "before (recorded in kube-system/planet-apps)".into() };
                        continue;
                    }
                    Err(e) => {
                        *st = AppState { state: "failing".into(), detail: first_words(&e), ..st.clone() };
                        continue;
                    }
                }
            }
            let st = &mut states[i];
            match health(api, &index.spec.health) {
                Ok(d) => {
                    st.state = "healthy".into();
                    st.detail = d;
                }
                Err(e) => {
                    st.state = "failing".into();
                    st.detail = first_words(&e);
                }
            }
        }
        publish(&states, &mut last);
        // Published when a state changes and at least every minute (nodes take an older one
        // as no news): a kubectl run costs seconds of CPU on an emulated machine.
        let summary: Vec<(&str, &str)> = states.iter().map(|s| (s.state.as_str(), s.detail.as_str())).collect();
        let due = !published.as_ref().is_some_and(|(at, last): &(std::time::Instant, String)| {
            at.elapsed() < PUBLISH_EVERY && *last == format!("{summary:?}")
        });
        if let (Some(api), false, true) = (&api, apps.is_empty(), due) {
            match publish_health(api, &states) {
                Ok(()) => {
                    complaint.clear();
                    published = Some((std::time::Instant::now(), format!("{summary:?}")));
                }
                Err(e) => {
                    complaint.say("apps: publishing their health", e);
                }
            }
        }
        std::thread::sleep(PERIOD);
    }
}

/// The lines of `planet-node status` about apps.
pub fn status_lines(root: &Path, is_master: bool) -> Vec<String> {
    let apps = match slot_apps(root) {
        Ok(a) => a,
        Err(e) => return vec![format!("apps: {e:#}")],
    };
    if apps.is_empty() {
        return vec!["apps: none in this slot".into()];
    }
    if !is_master {
        return apps
            .iter()
            .map(|(a, i)| format!("app {} {}: images {} (the master applies it)", a.name, a.version, i.images.len()))
            .collect();
    }
    let states: Vec<AppState> = std::fs::read(root.join(STATUS_FILE.trim_start_matches('/')))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    apps.iter()
        .map(|(a, _)| match states.iter().find(|s| s.name == a.name) {
            Some(s) => s.line(),
            None => format!("app {} {}: waiting (planet-apps.service has not reported)", a.name, a.version),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with_app(root: &Path) {
        let dir = app_dir(root, "web");
        std::fs::create_dir_all(&dir).unwrap();
        let index = json!({
            "format": 1,
            "spec": {"name": "web", "version": "2.0", "manifests": ["m.yaml"], "images": ["i.tar"],
                     "secrets": [{"name": "db", "namespace": "default", "keys": ["password", "root"]}], "health": []},
            "files": [], "images": [{"file": "i.tar", "id": "sha256:ab", "tags": ["planet/web:2"]}],
        });
        std::fs::write(dir.join("package.json"), index.to_string()).unwrap();
        std::fs::write(root.join(contract::SLOT_APPS_INDEX), r#"[{"name":"web","version":"2.0","sha256":"ff"}]"#)
            .unwrap();
    }

    #[test]
    fn a_ready_check_names_its_workload_in_the_apps_api() {
        assert_eq!(
            workload_path("deployment/wordpress", "web"),
            Ok("/apis/apps/v1/namespaces/web/deployments/wordpress".into())
        );
        assert_eq!(workload_path("statefulset/db", "web"), Ok("/apis/apps/v1/namespaces/web/statefulsets/db".into()));
        assert_eq!(
            workload_path("daemonset/x", "kube-system"),
            Ok("/apis/apps/v1/namespaces/kube-system/daemonsets/x".into())
        );
        assert!(workload_path("pod/x", "web").unwrap_err().contains("KIND is one of"));
        assert!(workload_path("x", "web").is_err());
    }

    #[test]
    fn the_slot_lists_its_apps_and_status_shows_one_line_each() {
        let d = tempfile::tempdir().unwrap();
        assert!(slot_apps(d.path()).unwrap().is_empty());
        assert_eq!(status_lines(d.path(), true), ["apps: none in this slot"]);
        slot_with_app(d.path());
        let apps = slot_apps(d.path()).unwrap();
        assert_eq!(apps[0].0.name, "web");
        assert_eq!(record_value(&apps[0].0), "2.0 ff");
        assert_eq!(status_lines(d.path(), false), ["app web 2.0: images 1 (the master applies it)"]);
        assert!(status_lines(d.path(), true)[0].contains("waiting"));
        let state = AppState {
            name: "web".into(),
            version: "2.0".into(),
            state: "failing".into(),
            detail: "m.yaml: denied".into(),
        };
        let status = d.path().join(STATUS_FILE.trim_start_matches('/'));
        std::fs::create_dir_all(status.parent().unwrap()).unwrap();
        std::fs::write(&status, serde_json::to_vec(&[&state]).unwrap()).unwrap();
        assert_eq!(status_lines(d.path(), true), ["app web 2.0: failing: m.yaml: denied"]);
    }

    #[test]
    fn nodes_judge_the_published_health_by_state_version_and_age() {
        let d = tempfile::tempdir().unwrap();
        slot_with_app(d.path());
        let apps = slot_apps(d.path()).unwrap();
        let state = |s: &str, v: &str| AppState {
            name: "web".into(),
            version: v.into(),
            state: s.into(),
            detail: "x y".into(),
        };
        let data = |s: &AppState, at: u64| json!({ "web": health_value(s, at) });
        assert!(judge_published(&data(&state("healthy", "2.0"), 1000), &apps, 1100).is_ok());
        let e = judge_published(&data(&state("failing", "2.0"), 1000), &apps, 1100).unwrap_err();
        assert_eq!(e, "app web 2.0: failing: x y");
        let e = judge_published(&data(&state("healthy", "1.0"), 1000), &apps, 1100).unwrap_err();
        assert!(e.contains("the cluster runs version 1.0"), "{e}");
        let e = judge_published(&data(&state("healthy", "2.0"), 1000), &apps, 2000).unwrap_err();
        assert!(e.contains("1000 s ago"), "{e}");
        assert!(judge_published(&json!({}), &apps, 0).unwrap_err().contains("no health published"));
    }

    #[test]
    fn secrets_get_fresh_random_values_for_every_key() {
        let spec =
            SecretSpec { name: "db".into(), namespace: "default".into(), keys: vec!["password".into(), "root".into()] };
        let obj = secret_object("web", &spec, &mut random_value);
        let a = obj["stringData"]["password"].as_str().unwrap();
        let b = obj["stringData"]["root"].as_str().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_eq!(obj["metadata"]["labels"]["app.planet/name"], "web");
    }

    #[test]
    fn http_status_reads_the_code() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n").unwrap();
        });
        assert_eq!(http_status(&addr, "/", Duration::from_secs(10)).unwrap(), 302);
        t.join().unwrap();
    }

    #[test]
    fn a_slow_answer_is_waited_for_only_as_long_as_the_check_says() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            // Holds the connection open, answering nothing, until the client gave up.
            let _ = finished.recv_timeout(Duration::from_secs(30));
            drop(c);
        });
        let e = http_status(&addr, "/", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e, "no answer within 1 s");
        done.send(()).unwrap();
        t.join().unwrap();
    }
}
