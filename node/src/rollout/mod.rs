//! Cluster rollouts: one signed bundle (or a step back to the previous release) taken through
//! every machine of the cluster, one machine at a time, each drained before it reboots and
//! uncordoned once it is healthy again, stopped at the first machine whose new release fails.
//!
//! There is no central coordinator. Every machine runs `planet-node rollout agent`
//! (planet-rollout.service), and everything the agents share lives in the cluster, in the
//! namespace [`NAMESPACE`]:
//!
//! * the **record**, the ConfigMap [`RECORD`]: what is being rolled out (target release, the
//!   bundle's URL, or a rollback) and whether the rollout runs, stopped (and why) or is done;
//! * the **locks**, ConfigMaps `planet-rollout-lock-N` (N below `max_unavailable`): a machine
//!   takes one before it cordons itself and gives it back once its new release is blessed. A
//!   holder renews its lock while it lives; a machine that dies holding one blocks the rollout
//!   for at most the lock's duration (`lock_seconds`, or `reboot_seconds` from the moment it
//!   asks for its reboot). ConfigMaps, not Leases: the NodeRestriction admission plugin lets a
//!   kubelet's credentials write only the Leases of kube-node-lease, each named after itself;
//! * each machine's **state**, annotations on its own Node ([`annotation`]): release, slot,
//!   trial, role, etcd version, the releases that failed here.
//!
//! Masters go first: Kubernetes supports kubelets older than the API server, never newer, so
//! the control plane moves before any kubelet does; and while the only master reboots no node
//! is half-way through its own update waiting for the API server. [`decide`] is the whole
//! state machine, a pure function of what the agent reads; [`agent`] does the reading and the
//! acting, [`command`] is the operator's side, and [`serve`] hands the cluster's one copy of the
//! bundle to every machine's planet-init.

pub mod agent;
pub mod command;
pub mod serve;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// Where the rollout's objects live: a namespace of their own, so the machines' credentials
/// reach these objects and nothing else of the cluster's (kube-system holds the control
/// plane's own leader-election Leases).
pub const NAMESPACE: &str = "planet-system";
/// The ConfigMap holding the rollout.
pub const RECORD: &str = "planet-rollout";
/// The ConfigMaps that are the rollout's locks: `planet-rollout-lock-0`, `-1`, ….
pub const LOCK_PREFIX: &str = "planet-rollout-lock-";
/// The port a master serves the rollout's bundle on (beside the API server's 6443 and the join
/// document's 6441).
pub const BUNDLE_PORT: u16 = 6442;
/// Where a master keeps the bundle it serves (on planet-state, through the container's overlay).
pub const BUNDLE_DIR: &str = "/var/lib/planet/rollout";

/// The annotation `update.planet/KEY` on a machine's Node.
pub fn annotation(key: &str) -> String {
    format!("update.planet/{key}")
}

/// What a rollout does on each machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Install the bundle at this URL (served by a master of the cluster).
    Install { url: String },
    /// Boot the release the other slot still holds (planet-init's `rollback-to`).
    Rollback,
}

/// The rollout's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
    Done,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopped => "stopped",
            State::Done => "done",
        }
    }
}

/// The record, as the ConfigMap's data holds it (all strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// Changes with every new rollout: Events and a machine's memory of its steps name it.
    pub id: String,
    pub action: Action,
    /// The release every machine ends on.
    pub release: String,
    /// The release the cluster ran when the rollout started (where a rollback goes).
    pub from: String,
    pub state: State,
    pub reason: String,
    /// Machines updating at once.
    pub max_unavailable: u32,
    /// How long a living lock holder's lock lasts between renewals.
    pub lock_seconds: u64,
    /// How long the lock lasts once its holder asked for its reboot: the time a machine may
    /// take to come back and renew it.
    pub reboot_seconds: u64,
    /// How long the apps may fail on a machine back on the new release, its Kubernetes healthy,
    /// before the machine gives up its trial.
    pub app_grace_seconds: u64,
    /// The etcd versions (`MAJOR.MINOR`) of `from` and of `release`, once known: a rollback
    /// to an older etcd minor version is refused.
    pub etcd_from: String,
    pub etcd_to: String,
}

/// Defaults an operator may override on `rollout start`.
pub const DEFAULT_LOCK_SECONDS: u64 = 120;
pub const DEFAULT_REBOOT_SECONDS: u64 = 1800;
pub const DEFAULT_APP_GRACE_SECONDS: u64 = 600;

impl Rollout {
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            d.insert(k.to_string(), v);
        };
        put("id", self.id.clone());
        match &self.action {
            Action::Install { url } => {
                put("action", "install".into());
                put("url", url.clone());
            }
            Action::Rollback => put("action", "rollback".into()),
        }
        put("release", self.release.clone());
        put("from", self.from.clone());
        put("state", self.state.as_str().into());
        put("reason", self.reason.clone());
        put("max_unavailable", self.max_unavailable.to_string());
        put("lock_seconds", self.lock_seconds.to_string());
        put("reboot_seconds", self.reboot_seconds.to_string());
        put("app_grace_seconds", self.app_grace_seconds.to_string());
        put("etcd_from", self.etcd_from.clone());
        put("etcd_to", self.etcd_to.clone());
        d
    }

    pub fn from_data(d: &BTreeMap<String, String>) -> Result<Rollout> {
        let get = |k: &str| d.get(k).cloned().unwrap_or_default();
        let num = |k: &str, default: u64| -> Result<u64> {
            match d.get(k) {
                None => Ok(default),
                Some(v) => v.parse().with_context(|| format!("{RECORD}: {k}={v:?} is not a number")),
            }
        };
        let action = match get("action").as_str() {
            "install" => Action::Install { url: get("url") },
            "rollback" => Action::Rollback,
            other => bail!("{RECORD}: unknown action {other:?}"),
        };
        let state = match get("state").as_str() {
            "running" => State::Running,
            "stopped" => State::Stopped,
            "done" => State::Done,
            other => bail!("{RECORD}: unknown state {other:?}"),
        };
        let r = Rollout {
            id: get("id"),
            action,
            release: get("release"),
            from: get("from"),
            state,
            reason: get("reason"),
            max_unavailable: num("max_unavailable", 1)?.clamp(1, 64) as u32,
            lock_seconds: num("lock_seconds", DEFAULT_LOCK_SECONDS)?,
            reboot_seconds: num("reboot_seconds", DEFAULT_REBOOT_SECONDS)?,
            app_grace_seconds: num("app_grace_seconds", DEFAULT_APP_GRACE_SECONDS)?,
            etcd_from: get("etcd_from"),
            etcd_to: get("etcd_to"),
        };
        if r.release.is_empty() {
            bail!("{RECORD}: no release");
        }
        Ok(r)
    }
}

/// One machine as its Node's annotations describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub master: bool,
    /// `None`: its agent has not reported (not up yet, or a release without the agent).
    pub release: Option<String>,
    pub trial: bool,
    /// Cordoned (`spec.unschedulable`).
    pub cordoned: bool,
    pub slot: String,
    pub etcd: String,
    pub failed: Vec<String>,
}

impl Machine {
    /// Reads a Node object (`kubectl get nodes -o json` item).
    pub fn from_node(node: &serde_json::Value) -> Machine {
        let ann = |k: &str| node["metadata"]["annotations"][annotation(k)].as_str().map(str::to_string);
        Machine {
            name: node["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            master: ann("role").is_some_and(|r| r == "master" || r == "dev"),
            release: ann("release"),
            trial: ann("trial").is_some_and(|t| t == "true"),
            cordoned: node["spec"]["unschedulable"].as_bool().unwrap_or(false),
            slot: ann("slot").unwrap_or_default(),
            etcd: ann("etcd").unwrap_or_default(),
            failed: ann("failed")
                .map(|f| f.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }

    /// On the release and blessed.
    pub fn settled_on(&self, release: &str) -> bool {
        self.release.as_deref() == Some(release) && !self.trial
    }
}

/// What a machine's agent does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: no rollout, or nothing for this machine.
    Idle,
    /// Holding a lock with nothing left to do (the rollout stopped or was replaced): uncordon,
    /// give the lock back.
    Release,
    /// The target failed its trial here and this machine rolled back: stop the rollout with
    /// the reason, uncordon, give the lock back.
    Stop(String),
    /// Not this machine's turn yet.
    Wait(String),
    /// Take a lock (or go on with the one held): cordon, drain, install or roll back, reboot.
    Go,
    /// On the target release, on trial: uncordon once Kubernetes is healthy, watch the apps,
    /// give the trial up if they keep failing.
    Trial,
    /// On the target, blessed, holding a lock: uncordon, give the lock back.
    Finished,
    /// Every machine is on the target and blessed: mark the rollout done.
    Done,
}

/// The rollout's state machine, for machine `me` (also among `all`), given whether it holds a
/// lock. Pure: the agent reads, calls this, acts.
pub fn decide(record: Option<&Rollout>, me: &Machine, all: &[Machine], holding: bool) -> Step {
    let Some(r) = record.filter(|r| r.state == State::Running) else {
        return if holding { Step::Release } else { Step::Idle };
    };
    let Some(mine) = me.release.as_deref() else { return Step::Wait("this machine's release is not known yet".into()) };
    if mine == r.release {
        if me.trial {
            return Step::Trial;
        }
        if holding {
            return Step::Finished;
        }
        if all.iter().all(|m| m.settled_on(&r.release)) {
            return Step::Done;
        }
        return Step::Idle;
    }
    if me.failed.iter().any(|f| f == &r.release) {
        return Step::Stop(format!(
            "{}: release {} failed its trial on this machine, which rolled back to release {mine} by itself",
            me.name, r.release
        ));
    }
    if !me.master && !holding {
        let waiting: Vec<&str> =
            all.iter().filter(|m| m.master && !m.settled_on(&r.release)).map(|m| m.name.as_str()).collect();
        if !waiting.is_empty() {
            return Step::Wait(format!("masters go first: waiting for {}", waiting.join(", ")));
        }
    }
    Step::Go
}

/// `MAJOR.MINOR` of a Debian package version (`3.4.23-4+b4` → `3.4`).
pub fn major_minor(version: &str) -> String {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.split(['.', '-', '+', '~']).take(2).collect::<Vec<_>>().join(".")
}

/// Whether going from etcd `running` back to etcd `target` is safe: etcd reads its data back
/// only within a minor version or forward.
pub fn check_etcd_rollback(target: &str, running: &str) -> Result<()> {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    match (parse(target), parse(running)) {
        (Some(t), Some(r)) if t < r => bail!(
            "the cluster runs etcd {running} and the previous release etcd {target}: etcd cannot read data written \
             by a newer minor version, so this rollback would break the cluster; restore an etcd snapshot into a \
             fresh cluster instead (docs/updates.md)"
        ),
        (Some(_), Some(_)) => Ok(()),
        _ => bail!(
            "the etcd versions of the releases are not known (from {target:?}, to {running:?}): a rollback is \
             refused rather than risk etcd's data"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(release: &str) -> Rollout {
        Rollout {
            id: "r1".into(),
            action: Action::Install { url: "http://10.0.0.1:6442/planet-2.planet".into() },
            release: release.into(),
            from: "1".into(),
            state: State::Running,
            reason: String::new(),
            max_unavailable: 1,
            lock_seconds: 60,
            reboot_seconds: 900,
            app_grace_seconds: 300,
            etcd_from: "3.4".into(),
            etcd_to: String::new(),
        }
    }

    fn machine(name: &str, master: bool, release: &str, trial: bool) -> Machine {
        Machine { name: name.into(), master, release: Some(release.into()), trial, ..Default::default() }
    }

    #[test]
    fn the_record_round_trips_through_the_configmap_data() {
        let r = record("2");
        assert_eq!(Rollout::from_data(&r.to_data()).unwrap(), r);
        let mut back = r.clone();
        back.action = Action::Rollback;
        back.state = State::Stopped;
        assert_eq!(Rollout::from_data(&back.to_data()).unwrap(), back);
        let mut bad = r.to_data();
        bad.insert("state".into(), "paused".into());
        assert!(Rollout::from_data(&bad).unwrap_err().to_string().contains("unknown state"));
        bad.insert("state".into(), "running".into());
        bad.insert("lock_seconds".into(), "soon".into());
        assert!(Rollout::from_data(&bad).unwrap_err().to_string().contains("lock_seconds"));
    }

    #[test]
    fn masters_go_first_then_nodes() {
        let r = record("2");
        let all =
            vec![machine("m", true, "1", false), machine("n1", false, "1", false), machine("n2", false, "1", false)];
        assert_eq!(decide(Some(&r), &all[0], &all, false), Step::Go);
        assert!(matches!(decide(Some(&r), &all[1], &all, false), Step::Wait(w) if w.contains("masters go first")));
        // The master on trial: the nodes still wait; the master watches its trial.
        let all =
            vec![machine("m", true, "2", true), machine("n1", false, "1", false), machine("n2", false, "1", false)];
        assert_eq!(decide(Some(&r), &all[0], &all, true), Step::Trial);
        assert!(matches!(decide(Some(&r), &all[2], &all, false), Step::Wait(_)));
        // Blessed: it gives its lock back; the nodes go (the locks decide which).
        let all =
            vec![machine("m", true, "2", false), machine("n1", false, "1", false), machine("n2", false, "1", false)];
        assert_eq!(decide(Some(&r), &all[0], &all, true), Step::Finished);
        assert_eq!(decide(Some(&r), &all[0], &all, false), Step::Idle);
        assert_eq!(decide(Some(&r), &all[1], &all, false), Step::Go);
        // Everyone there and blessed: done.
        let all =
            vec![machine("m", true, "2", false), machine("n1", false, "2", false), machine("n2", false, "2", false)];
        assert_eq!(decide(Some(&r), &all[1], &all, false), Step::Done);
    }

    #[test]
    fn a_machine_whose_target_failed_stops_the_rollout() {
        let r = record("3");
        let mut m = machine("m", true, "2", false);
        m.failed = vec!["3".into()];
        let all = vec![m.clone(), machine("n1", false, "2", false)];
        assert!(matches!(decide(Some(&r), &m, &all, true), Step::Stop(why) if why.contains("release 3 failed")));
        // Once stopped, a holder only gives its lock back; the others do nothing.
        let mut stopped = r.clone();
        stopped.state = State::Stopped;
        assert_eq!(decide(Some(&stopped), &m, &all, true), Step::Release);
        assert_eq!(decide(Some(&stopped), &all[1], &all, false), Step::Idle);
        assert_eq!(decide(None, &all[1], &all, false), Step::Idle);
    }

    #[test]
    fn a_machine_that_has_not_reported_holds_back_only_itself_and_the_done_state() {
        let r = record("2");
        let mut silent = machine("n2", false, "1", false);
        silent.release = None;
        let all = vec![machine("m", true, "2", false), machine("n1", false, "2", false), silent.clone()];
        assert!(matches!(decide(Some(&r), &silent, &all, false), Step::Wait(_)));
        assert_eq!(decide(Some(&r), &all[1], &all, false), Step::Idle);
    }

    #[test]
    fn node_annotations_are_read() {
        let node = serde_json::json!({
            "metadata": {"name": "n1", "annotations": {
                "update.planet/release": "2", "update.planet/trial": "true", "update.planet/role": "node",
                "update.planet/failed": "3,4", "update.planet/etcd": "3.4", "update.planet/slot": "b"}},
            "spec": {"unschedulable": true}
        });
        let m = Machine::from_node(&node);
        assert_eq!(m.release.as_deref(), Some("2"));
        assert!(m.trial && m.cordoned && !m.master);
        assert_eq!(m.failed, ["3", "4"]);
        assert!(!m.settled_on("2"));
    }

    #[test]
    fn etcd_rollbacks_go_only_to_the_same_or_a_newer_minor() {
        assert_eq!(major_minor("3.4.23-4+b4"), "3.4");
        assert_eq!(major_minor("1:3.5.1"), "3.5");
        assert!(check_etcd_rollback("3.4", "3.4").is_ok());
        assert!(check_etcd_rollback("3.5", "3.4").is_ok());
        let e = check_etcd_rollback("3.4", "3.5").unwrap_err().to_string();
        assert!(e.contains("etcd 3.5") && e.contains("snapshot"), "{e}");
        assert!(check_etcd_rollback("", "3.5").is_err());
    }
}
