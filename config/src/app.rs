//! The app contract, shared by the builder (`planet-image app build`, `build --app`) and the
//! release's `planet-node` (which loads the images and applies the manifests at boot).
//!
//! An app's source is a directory with `app.yaml` ([`AppSpec`]), its Kubernetes manifests and
//! its container images as docker archives. `app build` checks it and packs it into one `.app`
//! file: a tar whose first member is `package.json` ([`PackageIndex`]: the spec, every file's
//! digest and every image's tags), then the files it lists. `build --app` unpacks each package
//! into the slot under [`SLOT_APPS_DIR`]`/NAME/` and lists the apps, in order, in
//! [`SLOT_APPS_INDEX`] ([`SlotApp`]).

use serde::{Deserialize, Serialize};

/// Where the apps live in the slot's root (relative; `/usr/share/planet/apps` in the container).
pub const SLOT_APPS_DIR: &str = "usr/share/planet/apps";
/// The apps of a slot in the order the master applies them: a JSON array of [`SlotApp`].
pub const SLOT_APPS_INDEX: &str = "usr/share/planet/apps/apps.json";
/// The first member of a `.app` file, and kept beside the app's files in the slot.
pub const PACKAGE_INDEX: &str = "package.json";
/// The spec's file name in an app's directory.
pub const SPEC_FILE: &str = "app.yaml";
/// The `.app` format this code writes and reads.
pub const PACKAGE_FORMAT: u32 = 1;
/// Where pods keep data that outlives them (hostPath PersistentVolumes), on planet-state.
pub const VOLUMES_DIR: &str = "/var/lib/planet/volumes";

/// `app.yaml`: what an app is and how the master runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// 1-40 characters of a-z, 0-9 and `-`, starting with a letter (a Kubernetes label value
    /// and a directory name).
    pub name: String,
    /// Applied again whenever it (or the package's content) changes.
    pub version: String,
    /// Files under the app's directory, applied in this order with `kubectl apply`.
    pub manifests: Vec<String>,
    /// Docker archives (`docker save`) under the app's directory; every image a manifest names
    /// must be in one of them.
    #[serde(default)]
    pub images: Vec<String>,
    /// Secrets the master makes once, with random values, before the first apply.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// What "healthy" means for the app.
    #[serde(default)]
    pub health: Vec<HealthCheck>,
}

/// A Secret made on the master: each key a random 32-character value, never printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub keys: Vec<String>,
}

/// One health check: exactly one of `ready` (`KIND/NAME` of a deployment, statefulset or
/// daemonset whose replicas are all ready) and `http` (a GET through a Service's cluster IP
/// answered with 2xx or 3xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub service: String,
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
    /// How long the answer may take: a page that runs the app and its database can take tens
    /// of seconds on a small or emulated machine, and the checks ask one at a time, so a slow
    /// answer is waited for rather than asked again.
    #[serde(default = "default_http_timeout")]
    pub timeout_seconds: u32,
}

/// [`HttpCheck::timeout_seconds`] when app.yaml does not say, and the most it may say.
pub const DEFAULT_HTTP_TIMEOUT: u32 = 30;
pub const MAX_HTTP_TIMEOUT: u32 = 600;

fn default_http_timeout() -> u32 {
    DEFAULT_HTTP_TIMEOUT
}

/// The kinds a `ready` check understands.
pub const READY_KINDS: &[&str] = &["deployment", "statefulset", "daemonset"];

fn default_namespace() -> String {
    "default".to_string()
}

fn root_path() -> String {
    "/".to_string()
}

/// `package.json`: the spec and the digest of every file of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageIndex {
    pub format: u32,
    pub spec: AppSpec,
    /// Every member after `package.json`, in the tar's order.
    pub files: Vec<PackageFile>,
    /// The images of `spec.images`, as their archives describe them.
    pub images: Vec<PackageImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageImage {
    /// The archive, relative to the app's directory.
    pub file: String,
    /// The image ID docker gives it: `sha256:` and the digest of its config.
    pub id: String,
    /// Its tags as the archive names them (`planet/mariadb:10.11.6`).
    pub tags: Vec<String>,
}

/// One line of [`SLOT_APPS_INDEX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotApp {
    pub name: String,
    pub version: String,
    /// SHA-256 of the `.app` file: what the master records once applied.
    pub sha256: String,
}

impl AppSpec {
    /// Parses `app.yaml`; errors name the key to fix.
    pub fn parse(text: &str) -> Result<AppSpec, String> {
        let spec: AppSpec = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        check_version(&self.version)?;
        if self.manifests.is_empty() {
            return Err("manifests: list at least one manifest file".into());
        }
        for (key, list) in [("manifests", &self.manifests), ("images", &self.images)] {
            let mut seen = std::collections::BTreeSet::new();
            for p in list {
                check_member_path(p).map_err(|e| format!("{key}: {p:?} {e}"))?;
                if !seen.insert(p) {
                    return Err(format!("{key}: {p:?} is listed twice"));
                }
            }
        }
        for s in &self.secrets {
            check_name("secrets: name", &s.name)?;
            check_name("secrets: namespace", &s.namespace)?;
            if s.keys.is_empty() {
                return Err(format!("secrets: {:?} has no keys", s.name));
            }
            for k in &s.keys {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(format!("secrets: {:?} key {k:?} is not a valid Secret key", s.name));
                }
            }
        }
        for h in &self.health {
            check_name("health: namespace", &h.namespace)?;
            match (&h.ready, &h.http) {
                (Some(r), None) => {
                    let (kind, name) =
                        r.split_once('/').ok_or_else(|| format!("health: ready {r:?} is not KIND/NAME"))?;
                    if !READY_KINDS.contains(&kind) {
                        return Err(format!("health: ready {r:?}: KIND is one of {}", READY_KINDS.join(", ")));
                    }
                    check_name("health: ready NAME", name)?;
                }
                (None, Some(http)) => {
                    check_name("health: http service", &http.service)?;
                    if !http.path.starts_with('/') || http.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(format!("health: http path {:?} must start with / and hold no spaces", http.path));
                    }
                    if !(1..=MAX_HTTP_TIMEOUT).contains(&http.timeout_seconds) {
                        return Err(format!(
                            "health: http timeout_seconds {} is not between 1 and {MAX_HTTP_TIMEOUT}",
                            http.timeout_seconds
                        ));
                    }
                }
                _ => return Err("health: each check has exactly one of ready and http".into()),
            }
        }
        Ok(())
    }
}

/// A DNS label as Kubernetes names objects (RFC 1123): what an app, Secret or Service is called.
fn check_name(key: &str, name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key} {name:?} must be 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The release version rule ([`crate::is_version_text`]).
fn check_version(v: &str) -> Result<(), String> {
    if crate::is_version_text(v) {
        Ok(())
    } else {
        Err(format!("version {v:?} must be 1-64 characters of A-Z a-z 0-9 . - _ + ~"))
    }
}

/// A path inside the app's directory: relative, no `..`, `.`, empty or hidden components.
pub fn check_member_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 255 || p.starts_with('/') {
        return Err("must be a relative path of at most 255 bytes".into());
    }
    for part in p.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.starts_with('.') {
            return Err("must not hold empty, '.', '..' or hidden components".into());
        }
        if part.chars().any(|c| c.is_control() || c == '\\') {
            return Err("must not hold control characters or backslashes".into());
        }
    }
    if p == PACKAGE_INDEX {
        return Err(format!("is the name of the package's own index ({PACKAGE_INDEX})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "name: wordpress\nversion: 1.0.1\nmanifests: [manifests/mysql.yaml, manifests/wordpress.yaml]\n\
        images: [images/mariadb.tar]\nsecrets:\n  - name: mysql-pass\n    keys: [password]\n\
        health:\n  - ready: deployment/mysql\n  - http: {service: wordpress, port: 80, path: /wp-admin/install.php}\n    namespace: web\n";

    #[test]
    fn the_spec_parses_with_defaults() {
        let s = AppSpec::parse(SPEC).unwrap();
        assert_eq!(s.name, "wordpress");
        assert_eq!(s.manifests.len(), 2);
        assert_eq!(s.secrets[0].namespace, "default");
        assert_eq!(s.health[0].ready.as_deref(), Some("deployment/mysql"));
        assert_eq!(s.health[0].namespace, "default");
        let http = s.health[1].http.as_ref().unwrap();
        assert_eq!((http.service.as_str(), http.port, s.health[1].namespace.as_str()), ("wordpress", 80, "web"));
        assert_eq!(http.timeout_seconds, DEFAULT_HTTP_TIMEOUT);
        let slow = SPEC.replace("path: /wp-admin/install.php}", "path: /wp-admin/install.php, timeout_seconds: 120}");
        assert_eq!(AppSpec::parse(&slow).unwrap().health[1].http.as_ref().unwrap().timeout_seconds, 120);
        // A package index written before the field existed still reads.
        let old = r#"{"service":"wordpress","port":80,"path":"/"}"#;
        assert_eq!(serde_json::from_str::<HttpCheck>(old).unwrap().timeout_seconds, DEFAULT_HTTP_TIMEOUT);
        // What the package index carries round-trips through JSON.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AppSpec>(&json).unwrap(), s);
    }

    #[test]
    fn bad_specs_name_the_key() {
        let cases = [
            (SPEC.replace("name: wordpress", "name: Word_Press"), "name \"Word_Press\""),
            (SPEC.replace("version: 1.0.1", "version: \"1 0\""), "version"),
            (SPEC.replace("manifests/mysql.yaml,", "../mysql.yaml,"), "manifests: \"../mysql.yaml\""),
            (SPEC.replace("images/mariadb.tar", "/abs.tar"), "images: \"/abs.tar\""),
            (SPEC.replace("keys: [password]", "keys: []"), "has no keys"),
            (SPEC.replace("ready: deployment/mysql", "ready: pod/mysql"), "KIND is one of"),
            (SPEC.replace("ready: deployment/mysql", "ready: mysql"), "not KIND/NAME"),
            (SPEC.replace("path: /wp-admin/install.php", "path: wp"), "must start with /"),
            (
                SPEC.replace("install.php}", "install.php, timeout_seconds: 0}"),
                "timeout_seconds 0 is not between 1 and 600",
            ),
            (SPEC.replace("install.php}", "install.php, timeout_seconds: 601}"), "timeout_seconds 601"),
            (SPEC.replace("version: 1.0.1", "version: 1.0.1\ncolour: red"), "colour"),
            (SPEC.replace("manifests/wordpress.yaml]", "manifests/mysql.yaml]"), "listed twice"),
            (SPEC.replace("images/mariadb.tar", "package.json"), "own index"),
        ];
        for (text, want) in cases {
            let err = AppSpec::parse(&text).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let both =
            SPEC.replace("- ready: deployment/mysql", "- ready: deployment/mysql\n    http: {service: a, port: 1}");
        assert!(AppSpec::parse(&both).unwrap_err().contains("exactly one"));
    }
}
