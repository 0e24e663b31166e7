//! `planet-node rollout agent` (planet-rollout.service, every machine): reports this machine's
//! state on its Node, and takes it through the rollout [`decide`] says is its turn — lock,
//! cordon, drain, hand planet-init the bundle (or the rollback), reboot, trial, uncordon,
//! unlock — with a Kubernetes Event and a console line for every step.
//!
//! Masters act with the admin kubeconfig; nodes with their kubelet's credentials, which the
//! RBAC objects of [`cluster_objects`] let reach the rollout's namespace and evict pods (the
//! eviction API honours PodDisruptionBudgets); the NodeRestriction admission plugin keeps a
//! kubelet to patching its own Node — and to the Leases of kube-node-lease, which is why the
//! locks are ConfigMaps.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{annotation, decide, Action, Machine, Rollout, State, Step, LOCK_PREFIX, NAMESPACE, RECORD};
use crate::api::ApiClient;
use crate::cluster::kubeconfig;
use crate::env::NodeEnv;
use crate::kubectl::{first_words, micro_time, now_secs, run as kubectl, run_with_input, Complaint};

/// planet-init's update socket and status file, as the container sees them.
pub const UPDATE_SOCKET: &str = "/var/lib/planet-update/update.sock";
pub const UPDATE_STATUS: &str = "/var/lib/planet-update/status.json";
/// How often the agent looks during a rollout, and without one.
const TICK: Duration = Duration::from_secs(15);
const IDLE_TICK: Duration = Duration::from_secs(30);
/// How long a drain may take before it is tried again (the lock is kept meanwhile).
const DRAIN_TIMEOUT: &str = "900s";
/// Installs (or rollbacks) one holder asks planet-init for under one lock before it stops the
/// rollout: a machine that reboots and comes back on the old release, its trial never started
/// (a firmware that does not boot the new entry), would otherwise install again forever.
pub const MAX_ATTEMPTS: u32 = 2;

/// The RBAC and namespace the rollout needs, applied by masters: the machines' kubelet
/// credentials (group `system:nodes`) may use the rollout's objects and evict pods.
pub fn cluster_objects() -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n\
---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: planet-rollout\n  namespace: {NAMESPACE}\n\
rules:\n\
- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get, list, watch, create, update, patch]\n\
- apiGroups: [\"\"]\n  resources: [events]\n  verbs: [create]\n\
---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: planet-rollout\n  namespace: {NAMESPACE}\n\
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: planet-rollout\n\
subjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: system:nodes\n\
---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: planet-rollout-drain\n\
rules:\n\
- apiGroups: [\"\"]\n  resources: [nodes]\n  verbs: [get, list, watch, patch]\n\
- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get, list]\n\
- apiGroups: [\"\"]\n  resources: [pods/eviction]\n  verbs: [create]\n\
- apiGroups: [apps]\n  resources: [daemonsets, replicasets, statefulsets]\n  verbs: [get]\n\
---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: planet-rollout-drain\n\
roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: planet-rollout-drain\n\
subjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: system:nodes\n"
    )
}

/// What planet-init says about this machine (`status.json`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct UpdateStatus {
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub slot: String,
    #[serde(default)]
    pub trial: bool,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub failed: Vec<String>,
}

pub fn read_update_status() -> Option<UpdateStatus> {
    serde_json::from_slice(&std::fs::read(UPDATE_STATUS).ok()?).ok()
}

/// One request to planet-init's update socket; its answer line.
pub fn update_request(line: &str) -> Result<String> {
    let mut s = UnixStream::connect(UPDATE_SOCKET).with_context(|| format!("connecting to {UPDATE_SOCKET}"))?;
    // An install downloads and writes a whole slot before it answers.
    s.set_read_timeout(Some(Duration::from_secs(3600)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer.trim().to_string())
}

/// The etcd version (`MAJOR.MINOR`) the running release ships, from its release manifest.
pub fn release_etcd() -> String {
    let v: Value = std::fs::read("/etc/planet/release.json")
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    v["debian"]["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "etcd-server"))
        .and_then(|p| p["version"].as_str())
        .map(super::major_minor)
        .unwrap_or_default()
}

/// The rollout record, `None` when there is none.
pub fn read_record(api: &ApiClient) -> Result<Option<Rollout>, String> {
    let Some(data) = api.configmap_data(NAMESPACE, RECORD)? else { return Ok(None) };
    Rollout::from_data(&data).map(Some).map_err(|e| format!("{e:#}"))
}

/// Merges `fields` into the record.
pub fn patch_record(kc: &str, fields: &[(&str, &str)]) -> Result<(), String> {
    let data: BTreeMap<&str, &str> = fields.iter().copied().collect();
    let patch = json!({ "data": data }).to_string();
    kubectl(kc, &["patch", "configmap", RECORD, "-n", NAMESPACE, "--type=merge", "-p", &patch]).map(|_| ())
}

/// Every Node with what its agent reported.
pub fn read_machines(api: &ApiClient) -> Result<Vec<Machine>, String> {
    let v = api.get_json("/api/v1/nodes")?.unwrap_or_default();
    Ok(v["items"].as_array().map(|a| a.iter().map(Machine::from_node).collect()).unwrap_or_default())
}

/// Tries at recording an Event: the API server may be busy for a while (a drain, a machine
/// rebooting), and a lost Event is a hole in the rollout's history.
const EVENT_TRIES: u32 = 3;
const EVENT_PAUSE: Duration = Duration::from_secs(5);

/// A Kubernetes Event about the rollout (on its record), and the same line on the console. It is
/// tried [`EVENT_TRIES`] times under one name: a try that timed out after the API server took it
/// makes the next one fail with AlreadyExists, not record it twice.
pub fn event(kc: &str, me: &str, reason: &str, message: &str) {
    println!("planet-node: rollout: {reason}: {message}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let obj = event_object(me, reason, message, now);
    for attempt in 1..=EVENT_TRIES {
        match run_with_input(kc, &["create", "-f", "-", "-o", "name"], Some(&obj.to_string())) {
            Ok(_) => return,
            Err(e) if e.contains("(AlreadyExists)") => return,
            Err(e) if attempt == EVENT_TRIES => {
                println!("planet-node: rollout: the event could not be recorded ({EVENT_TRIES} tries): {e}");
            }
            Err(_) => std::thread::sleep(EVENT_PAUSE * attempt),
        }
    }
}

/// The Event [`event`] creates at `now` (since the epoch): named after the machine and the
/// time, so every try of one Event has the same name.
pub fn event_object(me: &str, reason: &str, message: &str, now: Duration) -> Value {
    let t = micro_time(now.as_secs());
    let t = &t[..19];
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("planet-rollout.{me}.{:x}", now.as_nanos()), "namespace": NAMESPACE},
        "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": NAMESPACE, "name": RECORD},
        "reason": reason,
        "message": message,
        "type": if matches!(reason, "Stopped" | "TrialFailed" | "DrainFailed" | "InstallFailed" | "CheckFailed") { "Warning" } else { "Normal" },
        "source": {"component": "planet-rollout", "host": me},
        "firstTimestamp": format!("{t}Z"),
        "lastTimestamp": format!("{t}Z"),
        "count": 1,
    })
}

/// One lock as read from its ConfigMap.
#[derive(Clone, Debug, Default)]
pub struct Lock {
    pub name: String,
    pub holder: String,
    /// Unix seconds it runs out (renewed + duration).
    pub until: u64,
    pub resource_version: String,
    pub exists: bool,
    /// How many times the holder asked planet-init to install (or roll back) under this lock
    /// (it survives the holder's reboots).
    pub attempts: u32,
}

impl Lock {
    pub fn free(&self, now: u64) -> bool {
        self.holder.is_empty() || now >= self.until
    }
}

/// The locks `planet-rollout-lock-0..max`.
pub fn read_locks(api: &ApiClient, max: u32) -> Result<Vec<Lock>, String> {
    let v = api.get_json(&format!("/api/v1/namespaces/{NAMESPACE}/configmaps"))?.unwrap_or_default();
    Ok(locks_from(&v, max))
}

/// The locks `planet-rollout-lock-0..max` in a ConfigMap list (absent ones free, not existing).
pub fn locks_from(list: &Value, max: u32) -> Vec<Lock> {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    (0..max)
        .map(|i| {
            let name = format!("{LOCK_PREFIX}{i}");
            match items.iter().find(|l| l["metadata"]["name"] == name.as_str()) {
                None => Lock { name, ..Default::default() },
                Some(l) => Lock {
                    holder: l["data"]["holder"].as_str().unwrap_or_default().to_string(),
                    until: data_number(&l["data"], "until"),
                    resource_version: l["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string(),
                    exists: true,
                    attempts: data_number(&l["data"], "attempts"),
                    name,
                },
            }
        })
        .collect()
}

/// A number kept as a ConfigMap's string value; 0 when missing or not one.
fn data_number<T: std::str::FromStr + Default>(data: &Value, key: &str) -> T {
    data[key].as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// `lock` as held by `holder` (empty: given back) for `seconds` from `now`: the ConfigMap to
/// write, conditional on the resourceVersion read, and the lock it makes. The attempts count
/// goes on while the holder stays the same and starts again at 0 with a new holder.
pub fn lock_object(lock: &Lock, holder: &str, seconds: u64, now: u64) -> (Value, Lock) {
    let until = if holder.is_empty() { 0 } else { now + seconds };
    let attempts = if !holder.is_empty() && lock.holder == holder { lock.attempts } else { 0 };
    let mut meta = json!({"name": lock.name, "namespace": NAMESPACE});
    if lock.exists {
        meta["resourceVersion"] = json!(lock.resource_version);
    }
    let data = json!({"holder": holder, "until": until.to_string(), "attempts": attempts.to_string(),
                      "renewed": micro_time(now)});
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data});
    let made = Lock { holder: holder.to_string(), until, attempts, exists: true, ..lock.clone() };
    (obj, made)
}

/// Writes `lock` held by `holder` (empty: given back) for `seconds`, on the condition that it
/// is unchanged since it was read (the API server's resourceVersion check; a create fails if
/// another machine made it first): two machines that race for one lock cannot both get it.
pub fn write_lock(kc: &str, lock: &Lock, holder: &str, seconds: u64) -> Result<Lock, String> {
    let (obj, made) = lock_object(lock, holder, seconds, now_secs());
    let verb = if lock.exists { "replace" } else { "create" };
    let out =
        run_with_input(kc, &[verb, "-f", "-", "-o", "jsonpath={.metadata.resourceVersion}"], Some(&obj.to_string()))?;
    Ok(Lock { resource_version: out, ..made })
}

/// The lock this agent holds and how long each renewal lasts; a thread renews it.
#[derive(Default)]
struct Held {
    lock: Option<Lock>,
    seconds: u64,
}

/// Renews the held lock. A renewal refused because the lock changed (Conflict: another machine
/// took it after it ran out; NotFound, AlreadyExists: it was deleted or made anew) loses it, and
/// so does any failure once it has run out; any other failure (a timeout, the API server busy or
/// restarting) keeps it, to be renewed on the next round: the write is conditional on the
/// resourceVersion read, so trying again can never take it from someone else.
fn renew(kc: &str, me: &str, held: &Mutex<Held>) {
    let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
    let seconds = h.seconds;
    if let Some(lock) = h.lock.clone() {
        match write_lock(kc, &lock, me, seconds) {
            Ok(l) => h.lock = Some(l),
            Err(e) => {
                let kept = renewal_keeps(&e, &lock, now_secs());
                println!(
                    "planet-node: rollout: renewing {}: {e} ({})",
                    lock.name,
                    if kept { "kept: trying again" } else { "lost: reading the locks again" }
                );
                if !kept {
                    h.lock = None;
                }
            }
        }
    }
}

/// Whether a lock whose renewal failed with `error` at `now` is still this machine's.
pub fn renewal_keeps(error: &str, lock: &Lock, now: u64) -> bool {
    let changed = ["(Conflict)", "(NotFound)", "(AlreadyExists)"].iter().any(|c| error.contains(c));
    !changed && now < lock.until
}

/// The agent's memory between ticks.
struct Agent {
    env: NodeEnv,
    kc: String,
    held: Arc<Mutex<Held>>,
    reported: BTreeMap<String, String>,
    /// When this trial's apps started failing with Kubernetes healthy.
    apps_failing_since: Option<Instant>,
    complaint: Complaint,
    last_wait: String,
    /// planet-init accepted the install and is about to stop the container: nothing more to
    /// do in this boot (a second request could start the install again under the reboot).
    rebooting: bool,
    /// The last look found no rollout running: the next one can wait longer.
    idle: bool,
}

pub fn run() -> Result<()> {
    let env = crate::env::load()?;
    let kc = if env.role.is_master() { kubeconfig("admin") } else { kubeconfig("kubelet") };
    let held = Arc::new(Mutex::new(Held::default()));
    {
        let (kc, me, held) = (kc.clone(), env.node_name.clone(), held.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(20));
            renew(&kc, &me, &held);
        });
    }
    if env.role.is_master() {
        let ip = env.public_ip;
        std::thread::spawn(move || super::serve::run(ip));
    }
    let mut agent = Agent {
        env,
        kc,
        held,
        reported: BTreeMap::new(),
        apps_failing_since: None,
        complaint: Complaint::default(),
        last_wait: String::new(),
        rebooting: false,
        idle: false,
    };
    let mut objects_applied = false;
    crate::api::wait_until_ready(&agent.env, "rollout");
    loop {
        if agent.env.role.is_master() && !objects_applied {
            objects_applied = run_with_input(&agent.kc, &["apply", "-f", "-"], Some(&cluster_objects())).is_ok();
        }
        match agent.tick() {
            Ok(()) => agent.complaint.clear(),
            Err(e) => {
                agent.complaint.say("rollout", e);
            }
        }
        std::thread::sleep(if agent.idle { IDLE_TICK } else { TICK });
    }
}

impl Agent {
    fn me(&self) -> &str {
        &self.env.node_name
    }

    /// Reports this machine's state on its Node (only what changed).
    fn report(&mut self, st: &UpdateStatus) -> Result<(), String> {
        let mut want = BTreeMap::new();
        want.insert(annotation("release"), st.release.clone());
        want.insert(annotation("slot"), st.slot.clone());
        want.insert(annotation("trial"), st.trial.to_string());
        want.insert(annotation("role"), self.env.role.as_str().to_string());
        want.insert(annotation("etcd"), release_etcd());
        want.insert(annotation("failed"), st.failed.join(","));
        if want == self.reported {
            return Ok(());
        }
        let mut args = vec!["annotate".to_string(), "--overwrite".into(), format!("node/{}", self.me())];
        args.extend(want.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&self.kc, &args)?;
        self.reported = want;
        Ok(())
    }

    fn holding(&self) -> Option<Lock> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).lock.clone()
    }

    fn hold(&self, lock: Option<Lock>, seconds: u64) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        h.lock = lock;
        h.seconds = seconds;
    }

    /// Counts one more install attempt on the held lock and makes it last `seconds`, under the
    /// mutex the renewing thread takes, so the two never write the lock at once.
    fn count_attempt(&self, seconds: u64) -> Result<(), String> {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut lock = h.lock.clone().ok_or("the lock was lost before the install")?;
        lock.attempts += 1;
        let written = write_lock(&self.kc, &lock, self.me(), seconds);
        h.seconds = seconds;
        h.lock = written.as_ref().ok().cloned();
        written.map(|_| ())
    }

    fn tick(&mut self) -> Result<(), String> {
        if self.rebooting {
            return Ok(());
        }
        let Some(st) = read_update_status() else { return Err(format!("{UPDATE_STATUS} not readable yet")) };
        self.report(&st)?;
        // A client per tick: a node's kubelet rotates the certificate it asks with.
        let api = ApiClient::for_machine(&self.env)?;
        let record = read_record(&api)?;
        // A lock this machine held before its reboot is still its own.
        if self.holding().is_none() {
            if let Some(r) = &record {
                let now = now_secs();
                let mine =
                    read_locks(&api, r.max_unavailable)?.into_iter().find(|l| l.holder == self.me() && !l.free(now));
                if let Some(l) = mine {
                    self.hold(Some(l), r.reboot_seconds);
                }
            }
        }
        // No rollout running and no lock of ours: nothing to decide (and each kubectl costs
        // seconds of CPU on an emulated machine).
        if self.holding().is_none() && !record.as_ref().is_some_and(|r| r.state == State::Running) {
            self.idle = true;
            return Ok(());
        }
        self.idle = false;
        let machines = read_machines(&api)?;
        let me = machines.iter().find(|m| m.name == self.me()).cloned().unwrap_or_else(|| Machine {
            name: self.me().to_string(),
            master: self.env.role.is_master(),
            release: Some(st.release.clone()),
            trial: st.trial,
            failed: st.failed.clone(),
            ..Default::default()
        });
        let step = decide(record.as_ref(), &me, &machines, self.holding().is_some());
        if !matches!(step, Step::Trial) {
            self.apps_failing_since = None;
        }
        match step {
            Step::Idle => Ok(()),
            Step::Wait(why) => {
                if why != self.last_wait {
                    println!("planet-node: rollout: {why}");
                    self.last_wait = why;
                }
                Ok(())
            }
            Step::Release => self.give_back(&me, "as the rollout is no longer running"),
            Step::Stop(why) => {
                let r = record.as_ref().map(|r| r.release.clone()).unwrap_or_default();
                patch_record(&self.kc, &[("state", State::Stopped.as_str()), ("reason", &why)])?;
                event(&self.kc, self.me(), "Stopped", &format!("rollout to release {r} stopped: {why}"));
                self.give_back(&me, "as the rollout stopped")
            }
            Step::Go => self.go(&api, record.as_ref().expect("Go needs a record"), &me),
            Step::Trial => self.trial(record.as_ref().expect("Trial needs a record"), &me),
            Step::Finished => {
                let r = record.as_ref().expect("Finished needs a record");
                event(&self.kc, self.me(), "Updated", &format!("{} is on release {}, blessed", self.me(), r.release));
                self.give_back(&me, "once blessed")
            }
            Step::Done => {
                let r = record.as_ref().expect("Done needs a record");
                let etcd: Vec<String> =
                    machines.iter().filter(|m| m.master).map(|m| m.etcd.clone()).filter(|e| !e.is_empty()).collect();
                let etcd_to = etcd.iter().min().cloned().unwrap_or_default();
                let reason = format!("every machine is on release {}", r.release);
                patch_record(&self.kc, &[("state", State::Done.as_str()), ("reason", &reason), ("etcd_to", &etcd_to)])?;
                event(&self.kc, self.me(), "Done", &format!("rollout {}: {reason}", r.id));
                Ok(())
            }
        }
    }

    /// Uncordons this machine if it is cordoned and gives its lock back.
    fn give_back(&mut self, me: &Machine, why: &str) -> Result<(), String> {
        if me.cordoned {
            kubectl(&self.kc, &["uncordon", self.me()])?;
            event(&self.kc, self.me(), "Uncordoned", &format!("{} uncordoned {why}", self.me()));
        }
        if let Some(lock) = self.holding() {
            self.hold(None, 0);
            write_lock(&self.kc, &lock, "", 0)?;
            event(&self.kc, self.me(), "Unlocked", &format!("{} gave {} back", self.me(), lock.name));
        }
        Ok(())
    }

    /// This machine's turn: a lock, cordon, drain, then planet-init installs (or rolls back)
    /// and reboots.
    fn go(&mut self, api: &ApiClient, r: &Rollout, me: &Machine) -> Result<(), String> {
        if self.holding().is_none() {
            let now = now_secs();
            let locks = read_locks(api, r.max_unavailable)?;
            let Some(free) = locks.iter().find(|l| l.free(now)) else {
                let holders: Vec<String> = locks.iter().map(|l| format!("{} holds {}", l.holder, l.name)).collect();
                let why = format!("waiting for a lock: {}", holders.join(", "));
                if why != self.last_wait {
                    println!("planet-node: rollout: {why}");
                    self.last_wait = why;
                }
                return Ok(());
            };
            let lock = write_lock(&self.kc, free, self.me(), r.lock_seconds)?;
            self.hold(Some(lock.clone()), r.lock_seconds);
            event(
                &self.kc,
                self.me(),
                "Locked",
                &format!(
                    "{} took {} for release {} (it lasts {} s unless renewed)",
                    self.me(),
                    lock.name,
                    r.release,
                    r.lock_seconds
                ),
            );
        }
        if !me.cordoned {
            // planet-init judges the bundle on its signed first 4 KiB (trusted key, release
            // wanted here, room on the state partition) before anything is drained for it.
            if let Action::Install { url } = &r.action {
                let answer = update_request(&format!("check-url {url}")).map_err(|e| format!("{e:#}"))?;
                if !answer.starts_with("ok ") {
                    let why = format!("{}: planet-init refuses the bundle: {}", self.me(), first_words(&answer));
                    patch_record(&self.kc, &[("state", State::Stopped.as_str()), ("reason", &why)])?;
                    event(&self.kc, self.me(), "CheckFailed", &why);
                    return self.give_back(me, "as its bundle was refused");
                }
            }
            kubectl(&self.kc, &["cordon", self.me()])?;
            event(&self.kc, self.me(), "Cordoned", &format!("{} cordoned for release {}", self.me(), r.release));
        }
        let drain = kubectl_long(
            &self.kc,
            &[
                "drain",
                self.me(),
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                &format!("--timeout={DRAIN_TIMEOUT}"),
            ],
        );
        if let Err(e) = drain {
            event(&self.kc, self.me(), "DrainFailed", &format!("{}: {e} (trying again; the lock is kept)", self.me()));
            return Ok(());
        }
        event(&self.kc, self.me(), "Drained", &format!("{} drained", self.me()));
        let request = match &r.action {
            Action::Install { url } => format!("install-url {url}"),
            Action::Rollback => format!("rollback-to {}", r.release),
        };
        let Some(lock) = self.holding() else {
            // The renewal found the lock taken by another machine meanwhile: start over.
            return Ok(());
        };
        if lock.attempts >= MAX_ATTEMPTS {
            let why = format!(
                "{}: asked planet-init {} times for release {} ({request}) and came back on release {} each time",
                self.me(),
                lock.attempts,
                r.release,
                me.release.as_deref().unwrap_or("?")
            );
            patch_record(&self.kc, &[("state", State::Stopped.as_str()), ("reason", &why)])?;
            event(&self.kc, self.me(), "InstallFailed", &why);
            return self.give_back(me, "after the installs that did not take");
        }
        // From here the machine may be gone for a reboot: the lock lasts that long, and it
        // counts this attempt before planet-init is asked.
        self.count_attempt(r.reboot_seconds)?;
        event(&self.kc, self.me(), "Installing", &format!("{}: {request}", self.me()));
        let answer = update_request(&request).map_err(|e| format!("{e:#}"))?;
        if answer.starts_with("ok ") && answer.contains("rebooting") {
            self.rebooting = true;
            event(
                &self.kc,
                self.me(),
                "Rebooting",
                &format!("{}: {answer} (the lock lasts {} s)", self.me(), r.reboot_seconds),
            );
            return Ok(());
        }
        let why = format!("{}: planet-init answered: {}", self.me(), first_words(&answer));
        patch_record(&self.kc, &[("state", State::Stopped.as_str()), ("reason", &why)])?;
        event(&self.kc, self.me(), "InstallFailed", &why);
        self.give_back(me, "after the failed install")
    }

    /// Back on the target, on trial: uncordon once Kubernetes is healthy here; the apps must
    /// follow within the grace time, or this machine gives its trial up (and the rollout stops).
    fn trial(&mut self, r: &Rollout, me: &Machine) -> Result<(), String> {
        let kube: Vec<_> = crate::health::kube_checks(&self.env);
        if let Some((name, Err(e))) = kube.iter().find(|(_, r)| r.is_err()) {
            let why = format!("on trial, waiting for {name}: {e}");
            if why != self.last_wait {
                println!("planet-node: rollout: {why}");
                self.last_wait = why;
            }
            return Ok(());
        }
        if me.cordoned {
            kubectl(&self.kc, &["uncordon", self.me()])?;
            event(
                &self.kc,
                self.me(),
                "Uncordoned",
                &format!("{} is healthy on release {} (on trial)", self.me(), r.release),
            );
        }
        // Back and renewing: a holder that dies from here blocks the others for `lock_seconds`
        // only, not for a whole reboot's allowance.
        if let Some(lock) = self.holding() {
            self.hold(Some(lock), r.lock_seconds);
        }
        match crate::health::app_check(&self.env) {
            Some((_, Err(e))) => {
                let since = *self.apps_failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(r.app_grace_seconds) {
                    let why = format!(
                        "{}: release {}: the apps failed for {} s with Kubernetes healthy: {e}",
                        self.me(),
                        r.release,
                        since.elapsed().as_secs()
                    );
                    patch_record(&self.kc, &[("state", State::Stopped.as_str()), ("reason", &why)])?;
                    event(&self.kc, self.me(), "TrialFailed", &format!("{why}; rolling back"));
                    let answer =
                        update_request(&format!("fail-trial {}", first_words(&why))).map_err(|e| format!("{e:#}"))?;
                    println!("planet-node: rollout: planet-init: {answer}");
                    self.rebooting = answer.starts_with("ok ");
                }
            }
            _ => self.apps_failing_since = None,
        }
        Ok(())
    }
}

/// kubectl for a step that may take minutes (a drain): no client-side request timeout.
fn kubectl_long(kc: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={kc}"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("kubectl failed");
        return Err(first_words(last));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether the answer of a request needing a running rollout's record allows it.
pub fn need_record(api: &ApiClient) -> Result<Rollout> {
    match read_record(api) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => bail!("there is no rollout ({NAMESPACE}/{RECORD} does not exist)"),
        Err(e) => bail!("reading the rollout: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_free_when_unheld_or_run_out() {
        let l = Lock { holder: "n1".into(), until: 100, ..Default::default() };
        assert!(!l.free(99));
        assert!(l.free(100));
        assert!(Lock::default().free(0));
    }

    #[test]
    fn the_rbac_objects_name_the_nodes_group_and_the_namespace() {
        let text = cluster_objects();
        assert!(text.contains("name: system:nodes") && text.contains("pods/eviction"));
        assert_eq!(text.matches("namespace: planet-system").count(), 2);
        // Nodes make and take the lock ConfigMaps; NodeRestriction would refuse them any Lease
        // outside kube-node-lease, so none is asked for.
        assert!(text.contains("resources: [configmaps]\n  verbs: [get, list, watch, create, update, patch]"), "{text}");
        assert!(!text.contains("leases"), "{text}");
    }

    #[test]
    fn a_failed_renewal_keeps_the_lock_only_while_it_is_unchanged_and_not_run_out() {
        let l = Lock { holder: "node-1".into(), until: 1000, ..Default::default() };
        let timeout = "Unable to connect to the server: net/http: request canceled (Client.Timeout exceeded)";
        assert!(renewal_keeps(timeout, &l, 999));
        assert!(!renewal_keeps(timeout, &l, 1000));
        let conflict = "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on configmaps \"planet-rollout-lock-0\": the object has been modified";
        assert!(!renewal_keeps(conflict, &l, 10));
        assert!(!renewal_keeps("Error from server (NotFound): configmaps \"planet-rollout-lock-0\" not found", &l, 10));
        assert!(!renewal_keeps(
            "Error from server (AlreadyExists): configmaps \"planet-rollout-lock-0\" already exists",
            &l,
            10
        ));
    }

    #[test]
    fn an_event_has_one_name_for_all_its_tries() {
        let at = Duration::new(1_800_000_000, 123_456_789);
        let a = event_object("node-1", "Cordoned", "node-1 cordoned for release 2", at);
        let b = event_object("node-1", "Cordoned", "node-1 cordoned for release 2", at);
        assert_eq!(a, b);
        let name = a["metadata"]["name"].as_str().unwrap();
        assert_eq!(name, format!("planet-rollout.node-1.{:x}", at.as_nanos()));
        // A DNS subdomain, as the API server wants an object's name.
        assert!(
            name.len() <= 253
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        );
        assert_eq!(a["metadata"]["namespace"], NAMESPACE);
        assert_eq!(a["type"], "Normal");
        assert_eq!(a["firstTimestamp"], "2027-01-15T08:00:00Z");
        assert_eq!(event_object("node-1", "TrialFailed", "x", at)["type"], "Warning");
        assert_ne!(event_object("node-1", "Cordoned", "x", at + Duration::from_nanos(1))["metadata"]["name"], name);
    }

    #[test]
    fn locks_are_configmaps_taken_on_their_resource_version() {
        let list = json!({"items": [
            {"metadata": {"name": RECORD, "resourceVersion": "5"}, "data": {"state": "running"}},
            {"metadata": {"name": "planet-rollout-lock-1", "resourceVersion": "42"},
             "data": {"holder": "node-1", "until": "1000", "attempts": "2"}},
        ]});
        let locks = locks_from(&list, 2);
        assert_eq!(locks.len(), 2);
        assert_eq!((locks[0].name.as_str(), locks[0].exists), ("planet-rollout-lock-0", false));
        let l = &locks[1];
        assert_eq!((l.holder.as_str(), l.until, l.attempts, l.resource_version.as_str()), ("node-1", 1000, 2, "42"));

        // The same holder renewing: the attempts go on, the write is conditional on "42".
        let (obj, made) = lock_object(l, "node-1", 60, 2000);
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["metadata"]["namespace"], NAMESPACE);
        assert_eq!(obj["metadata"]["resourceVersion"], "42");
        assert_eq!(obj["data"]["until"], "2060");
        assert_eq!(obj["data"]["attempts"], "2");
        assert_eq!((made.until, made.attempts), (2060, 2));
        // Read back, it is the lock written.
        let back = locks_from(&json!({"items": [obj]}), 2);
        assert_eq!((back[1].holder.as_str(), back[1].until, back[1].attempts), ("node-1", 2060, 2));

        // A new holder starts at 0 attempts; a new lock has no resourceVersion (a create, which
        // fails if another machine made it first); given back, it is free.
        assert_eq!(lock_object(l, "node-2", 60, 2000).1.attempts, 0);
        let (fresh, _) = lock_object(&locks[0], "master-1", 60, 2000);
        assert!(fresh["metadata"].get("resourceVersion").is_none());
        let (back, freed) = lock_object(l, "", 0, 2000);
        assert_eq!(back["data"]["holder"], "");
        assert!(freed.free(2000));
    }
}
